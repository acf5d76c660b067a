"""Tests of kseg.training."""
