"""Tests of kseg.tasks."""
