"""Tests of kseg.metrics."""
