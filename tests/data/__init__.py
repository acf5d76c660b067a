"""Tests of kseg.data."""
