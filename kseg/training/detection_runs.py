"""Reading instance and panoptic run folders back: run.json with its data spec, and the model file."""

import os

import keras

from kseg.models.mask_rcnn import MaskRCNN, TorchvisionMaskRCNN
from kseg.models.maskformer import MaskFormer
from kseg.models.panoptic_fpn import PanopticFPN
from kseg.training.detection_spec import InstanceDataSpec, PanopticDataSpec
from kseg.training.spec import load_detection_run


def load_instance_run(run_dir):
    """Reads `run_dir`/run.json of an instance run: its dict with "data" as an `InstanceDataSpec`."""
    return load_detection_run(run_dir, "instance", InstanceDataSpec, "a Mask R-CNN run")


def load_panoptic_run(run_dir):
    """Reads `run_dir`/run.json of a panoptic run: its dict with "data" as a `PanopticDataSpec`."""
    return load_detection_run(run_dir, "panoptic", PanopticDataSpec, "a Panoptic FPN run")


def default_model_path(run_dir):
    """best.keras, or final.keras when no epoch had a finite validation score (no best.keras)."""
    best = os.path.join(run_dir, "best.keras")
    return best if os.path.exists(best) else os.path.join(run_dir, "final.keras")


def load_model_file(run_dir, path, cls, expected):
    """The model of `path` (default `run_dir`'s best.keras, else final.keras), checked to be a `cls`."""
    path = path or default_model_path(run_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path} not found: expected a .keras file written by kseg train.")
    try:
        model = keras.models.load_model(path, safe_mode=True)
    except Exception as err:
        raise ValueError(f"cannot load model {path}: {err}; expected a .keras file written by kseg.") from err
    if not isinstance(model, cls):
        raise ValueError(f"model {path} is a {type(model).__name__}, expected {expected}")
    return model


def load_instance_model(run_dir=None, path=None):
    """The MaskRCNN (or TorchvisionMaskRCNN, fine-tuned with `init`) of `path`, default `run_dir`'s
    best.keras (final.keras when there is none)."""
    return load_model_file(run_dir, path, (MaskRCNN, TorchvisionMaskRCNN),
                           "a MaskRCNN or TorchvisionMaskRCNN (an instance run's model)")


def load_panoptic_model(run_dir=None, path=None):
    """The PanopticFPN or MaskFormer of `path`, default `run_dir`'s best.keras (final.keras when
    there is none)."""
    return load_model_file(run_dir, path, (PanopticFPN, MaskFormer),
                           "a panoptic run's model (PanopticFPN or MaskFormer)")
