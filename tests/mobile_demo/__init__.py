"""Tests of mobile_demo/."""
