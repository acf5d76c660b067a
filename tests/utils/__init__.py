"""Tests of kseg.utils."""
