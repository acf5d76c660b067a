"""Tests of kseg.models."""
