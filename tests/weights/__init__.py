"""Tests of kseg.weights."""
