"""kseg export: TFLite conversion and its report (need TensorFlow); the edge runtime, metadata
reader and benchmark (`runtime`, `metadata`, `bench`: numpy, Pillow and ai-edge-litert only).

`export_run` exports a run folder of any task (`export.run`): `from export import export_run`.
Submodules load on first use so that the edge-side modules import without TensorFlow.
"""

import importlib

__all__ = ["bench", "export_run", "metadata", "report", "run", "runtime", "tflite"]


def __getattr__(name):
    if name == "export_run":
        return importlib.import_module("export.run").export_run
    if name in __all__:
        return importlib.import_module(f"export.{name}")
    raise AttributeError(f"module 'export' has no attribute {name!r}")
