"""The models the ARM benchmark, its regression guard and tests/export/test_arm64.py run.

Seeded: the same call exports the same graphs with the same weights on every machine, so
instruction counts can be compared with a stored baseline.

    unet_{fp32,fp16,dynamic,int8}.tflite   the `kseg demo` ISBI U-Net (16 base filters,
        batch norm, one grey channel, 2 classes) at size x size, uint8 input (a camera frame
        as it is), logits out; int8 calibrated on the embedded ISBI images
    mask_rcnn_fp32.tflite   a small Mask R-CNN (the "small" preset, the synthetic shapes' classes)
        through export.tflite.detector_tflite (builtin ops, NMS in the graph)

Weights are initial (seeded) weights, not trained ones: instruction counts depend on the graph
and shapes, and only weakly on weight values (int8 calibration ranges).
"""

import contextlib
import io
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UNET_VARIANTS = ("fp32", "fp16", "dynamic", "int8")


def isbi_calibration(size):
    """The embedded ISBI sample images, resized to size x size: uint8 [N, 1, size, size, 1]."""
    from PIL import Image

    folder = ROOT / "kseg" / "data" / "samples" / "isbi2012" / "image"
    files = sorted(folder.glob("*.png"))
    images = [np.asarray(Image.open(p).convert("L").resize((size, size), Image.BILINEAR)) for p in files]
    return np.stack(images)[:, None, :, :, None].astype(np.uint8)


def export_unet(folder, size=64, seed=0, variants=UNET_VARIANTS):
    """Writes folder/unet_<variant>.tflite for each variant; returns {file name: path}."""
    import keras

    from export.tflite import convert_variant, device_model
    from kseg.models import build_model

    keras.utils.set_random_seed(seed)
    model = build_model("unet", num_classes=2, input_shape=(size, size, 1), filters=16, batch_norm=True)
    fixed = device_model(model, (size, size), input_type="uint8")
    calibration = isbi_calibration(size)
    paths = {}
    for variant in variants:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            content = convert_variant(fixed, variant, representative=list(calibration))
        path = Path(folder) / f"unet_{variant}.tflite"
        path.write_bytes(content)
        paths[path.name] = path
    return paths


def export_mask_rcnn(folder, size=64, seed=0):
    """Writes folder/mask_rcnn_fp32.tflite; returns {file name: path}."""
    import keras

    from export.tflite import detector_tflite
    from kseg.data.shapes import SHAPE_CATEGORIES
    from kseg.models import build_model

    keras.utils.set_random_seed(seed)
    model = build_model("mask_rcnn", "small", num_classes=len(SHAPE_CATEGORIES), input_shape=(size, size, 3))
    model(np.zeros((1, size, size, 3), np.float32))
    path = Path(folder) / "mask_rcnn_fp32.tflite"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        path.write_bytes(detector_tflite(model))
    return {path.name: path}


def export_models(folder, size=64, detector_size=64, seed=0, detector=True):
    """The U-Net's four variants and (with `detector`) the Mask R-CNN; returns {file name: path}."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    paths = export_unet(folder, size, seed)
    if detector:
        paths.update(export_mask_rcnn(folder, detector_size, seed))
    return paths
