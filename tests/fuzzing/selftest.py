"""Targets that crash on purpose: tests/test_fuzz.py checks that the engine counts a dead or
hanging child as a crash and keeps going."""

import ctypes
import time

from tests.fuzzing.engine import Target


def _segfault(case):
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def _hang(case):
    time.sleep(3600)


TARGETS = {name: Target(name, "", None, None, parse)
           for name, parse in (("segfault", _segfault), ("hang", _hang), ("fine", lambda case: None))}
