"""Tests of kseg.losses."""
