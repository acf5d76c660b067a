"""kseg: image segmentation in Keras 3, from `model.fit` to a quantized TFLite model.

Tensor contracts used everywhere in kseg:

    images   float32 [B, H, W, C]  raw pixel values in [0, 255], channels-last;
                                   every model normalizes inside its own graph, so the
                                   exported model takes camera pixels as they are.
    masks    int32   [B, H, W]     class ids; `ignore_class` pixels (CamVid void = 11,
                                   255 elsewhere) count in no loss and no metric.
    logits   float32 [B, H, W, K]  a model's output, before softmax.

Submodules load on first use (`kseg.models`, `kseg.losses`, ...), so that the parts
which need no TensorFlow (`kseg.viz`, `kseg.utils`) import without it.
"""

import importlib

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "backbones",
    "data",
    "layers",
    "losses",
    "metrics",
    "models",
    "ops",
    "tasks",
    "training",
    "utils",
    "viz",
    "weights",
]

_SUBMODULES = frozenset(__all__) - {"__version__"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"kseg.{name}")
    raise AttributeError(f"module 'kseg' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
