"""kseg export: TFLite conversion and its report (need TensorFlow); the edge runtime, metadata
reader and benchmark (`runtime`, `metadata`, `bench`: numpy, Pillow and ai-edge-litert only).

Submodules load on first use so that the edge-side modules import without TensorFlow.
"""

import importlib

__all__ = ["bench", "metadata", "report", "runtime", "tflite"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"export.{name}")
    raise AttributeError(f"module 'export' has no attribute {name!r}")
