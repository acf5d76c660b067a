"""The detectors of instance and panoptic runs, built by preset for a run's categories through
the one model table (`kseg.models.build_model`, presets in `kseg.models.model_presets`).

A preset gives a backbone and head sizes; `overrides` (the run's `model_kwargs`) go on top.
"""

from kseg.models import build_model, model_presets

# Panoptic FPN drops stuff regions under 4096 pixels at 800 x 1333; kseg scales that to the input.
_PAPER_MIN_STUFF_FRACTION = 4096 / (800 * 1333)


def build_mask_rcnn(preset, categories, image_size, **overrides):
    """MaskRCNN of a preset ("small", "mobilenet", "resnet50") for [K] `categories` at (H, W)
    `image_size`, `overrides` (constructor arguments) on top."""
    return _build("mask_rcnn", preset, overrides, num_classes=len(categories), input_shape=(*image_size, 3))


def build_panoptic_fpn(preset, categories, image_size, **overrides):
    """PanopticFPN of a preset ("small", "mobilenet", "resnet50") for kseg panoptic `categories`,
    `overrides` on top.

    The minimum stuff area defaults to the paper's 4096 pixels at 800 x 1333, scaled to
    `image_size` (64 pixels at 256 x 256).
    """
    things, stuff = split_categories(categories, "Panoptic FPN")
    area = max(1, round(_PAPER_MIN_STUFF_FRACTION * image_size[0] * image_size[1]))
    return _build("panoptic_fpn", preset, overrides, num_classes=len(things), num_stuff_classes=len(stuff),
                  input_shape=(*image_size, 3), min_stuff_area=area)


def build_maskformer(preset, categories, image_size, **overrides):
    """MaskFormer of a preset ("small", "resnet50") for kseg panoptic `categories`, `overrides` on top."""
    things, stuff = split_categories(categories, "MaskFormer")
    return _build("maskformer", preset, overrides, num_classes=len(things), num_stuff_classes=len(stuff),
                  input_shape=(*image_size, 3))


def split_categories(categories, model_name):
    """(things, stuff) of kseg panoptic categories, checked."""
    things = [c for c in categories if c["isthing"]]
    stuff = [c for c in categories if not c["isthing"]]
    if not things or not stuff:
        raise ValueError(f"{len(things)} thing and {len(stuff)} stuff categories, expected at least one of each "
                         f"for {model_name}")
    if [c["id"] for c in categories] != list(range(1, len(categories) + 1)) or any(c["isthing"] for c in stuff):
        raise ValueError("categories must be kseg's panoptic ids: things 1..K then stuff K+1..K+S "
                         "(kseg.data.panoptic_training.training_categories)")
    return things, stuff


def _build(name, preset, overrides, **arguments):
    presets = model_presets(name)
    if preset not in presets:
        raise ValueError(f"`preset` {preset!r} for {name}, expected one of {', '.join(presets)}")
    try:
        return build_model(name, preset, **{**arguments, **overrides})
    except ValueError as err:
        if not isinstance(err.__cause__, TypeError):
            raise
        raise ValueError(f"{name} rejected the `model_kwargs` {sorted(overrides)}: {err.__cause__}") from None
