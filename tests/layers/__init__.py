"""Tests of kseg.layers."""
