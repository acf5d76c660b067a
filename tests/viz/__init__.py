"""Tests of kseg.viz."""
