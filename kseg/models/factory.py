"""The one table from a model name to its constructor and presets, for every family.

    MODEL_NAMES             unet, attention_unet, residual_unet, dense_unet, mobile_unet,
                            segformer_b0 .. segformer_b5, mask_rcnn, panoptic_fpn, maskformer
    model_arguments(name)   the arguments the name fixes
    model_presets(name)     {preset name: constructor arguments}; e.g. mask_rcnn: small,
                            mobilenet, resnet50
    build_model(name, preset=None, **kwargs)
                            the name's own arguments, then the preset's, then `kwargs` on top

A name fixes some arguments (attention_unet: attention=True; segformer_b2: variant="b2"); a
preset is a set of sizes a user picks by name (a detector's "small" for CPU training,
"resnet50" for the paper's). This is the one place where names become objects.
"""

from kseg.models.base import detector_config_objects
from kseg.models.mask_rcnn import SMALL_CONFIG, MaskRCNN
from kseg.models.maskformer import SMALL_CONFIG as MASKFORMER_SMALL_CONFIG
from kseg.models.maskformer import MaskFormer
from kseg.models.panoptic_fpn import PanopticFPN
from kseg.models.segformer import SegFormer
from kseg.models.unet import MobileUNet, UNet

# Mask R-CNN and Panoptic FPN: backbone + sizes of the heads.
DETECTOR_PRESETS = {
    "small": dict(SMALL_CONFIG),  # tests, demos and CPU training on 128-256 px images
    "mobilenet": {**SMALL_CONFIG, "backbone": "mobilenet_v3_large", "fpn_channels": 128, "box_fc_dim": 512,
                  "mask_channels": 128, "max_detections": 50},
    "resnet50": {"backbone": "resnet50"},  # the paper's sizes (the constructors' defaults)
}
# Panoptic FPN: the same, with a semantic branch as wide as the small FPN (the paper's 128 is half
# of its 256-channel FPN). At 512 x 512 the 128-channel branch took 24 of 73 ms in LiteRT; on the
# panoptic shapes (20 epochs, same seed) 64 channels gave stuff PQ 97.96 against 97.97 and PQ
# 88.12 against 87.62 (benchmarks/semantic_head_width.py).
PANOPTIC_FPN_PRESETS = {name: dict(preset) for name, preset in DETECTOR_PRESETS.items()}
PANOPTIC_FPN_PRESETS["small"]["semantic_channels"] = 64
MASKFORMER_PRESETS = {
    # 20 queries: enough for 8 things + the stuff of the panoptic shapes.
    "small": {**MASKFORMER_SMALL_CONFIG, "num_queries": 20},
    "resnet50": {"backbone": "resnet50"},  # the paper's sizes (MaskFormer's defaults)
}

# name: (constructor, the name's own arguments, {preset name: arguments})
_TABLE = {
    "unet": (UNet, {}, {}),
    "attention_unet": (UNet, {"attention": True, "batch_norm": True}, {}),
    "residual_unet": (UNet, {"block": "residual", "batch_norm": True}, {}),
    "dense_unet": (UNet, {"block": "dense", "batch_norm": True}, {}),
    "mobile_unet": (MobileUNet, {}, {}),
    **{f"segformer_b{i}": (SegFormer, {"variant": f"b{i}"}, {}) for i in range(6)},
    "mask_rcnn": (MaskRCNN, {}, DETECTOR_PRESETS),
    "panoptic_fpn": (PanopticFPN, {}, PANOPTIC_FPN_PRESETS),
    "maskformer": (MaskFormer, {}, MASKFORMER_PRESETS),
}

MODEL_NAMES = tuple(_TABLE)


def _entry(name):
    if name not in _TABLE:
        raise ValueError(f"`name`: unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}.")
    return _TABLE[name]


def model_class(name):
    """The constructor (a keras.Model class) behind the model called `name` (one of `MODEL_NAMES`)."""
    return _entry(name)[0]


def model_arguments(name):
    """The arguments the name `name` fixes (attention_unet: attention=True; segformer_b2:
    variant="b2"; {} for the others), a copy; `name` is one of `MODEL_NAMES`."""
    return dict(_entry(name)[1])


def model_presets(name):
    """The presets of the model called `name`: {preset name: constructor arguments} (a copy).

    Args:
        name: one of `MODEL_NAMES`.

    Returns:
        A dict, empty for the models without presets (the U-Nets and SegFormers, whose name
        fixes their arguments).

    Raises:
        ValueError: unknown name.
    """
    return {preset: dict(arguments) for preset, arguments in _entry(name)[2].items()}


def build_model(name, preset=None, **kwargs):
    """Builds the model called `name`: its own arguments, then `preset`'s, then `kwargs` on top.

    Args:
        name: one of `MODEL_NAMES`.
        preset: None (the constructor's defaults) or a name of `model_presets(name)`.
        **kwargs: constructor arguments (e.g. num_classes, input_shape; detectors: num_classes
            counts the object classes, input_shape is (H, W, 3), `backbone` a name of
            `kseg.backbones.BACKBONES` (default "resnet50") with `backbone_weights`, or a
            keras.Model; Panoptic FPN: the plain values of `panoptic_fpn_parts`).

    Returns:
        A `keras.Model`.

    Raises:
        ValueError: unknown name or preset, or an argument the constructor does not take.

    Example:
        >>> model = build_model("mask_rcnn", "small", num_classes=2, input_shape=(64, 64, 3))
        >>> type(model).__name__
        'MaskRCNN'
    """
    cls, fixed, presets = _entry(name)
    if preset is not None and preset not in presets:
        expected = ", ".join(presets) if presets else "none (this model has no presets)"
        raise ValueError(f"`preset`: model {name!r} has no preset {preset!r}; expected one of {expected}.")
    arguments = {**fixed, **(presets[preset] if preset is not None else {}), **kwargs}
    if "image_size" in kwargs and cls in (MaskRCNN, MaskFormer, PanopticFPN):
        raise ValueError(f"`image_size`: model {name!r} takes input_shape=(H, W, 3); got image_size="
                         f"{kwargs['image_size']!r}.")
    try:
        if cls in (MaskRCNN, MaskFormer):
            # A backbone name (default "resnet50") becomes its keras.Model here, at the model's input shape.
            return cls(**detector_config_objects({"backbone": "resnet50", **arguments}))
        if cls is PanopticFPN:
            return PanopticFPN.from_config({"backbone": "resnet50", **arguments})
        return cls(**arguments)
    except TypeError as e:
        raise ValueError(f"model {name!r} ({cls.__name__}) rejected its arguments {sorted(kwargs)}: {e}") from e
