"""kseg export: TFLite conversion (needs TensorFlow) and, later, the edge runtime (does not).

Submodules load on first use so that the edge-side modules import without TensorFlow.
"""

import importlib

__all__ = ["tflite"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"export.{name}")
    raise AttributeError(f"module 'export' has no attribute {name!r}")
