"""Tests of kseg.ops."""
