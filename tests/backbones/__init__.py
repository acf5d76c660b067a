"""Tests of kseg.backbones."""
