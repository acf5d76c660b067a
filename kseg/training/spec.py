"""What a training run reads and how: saved as run.json so evaluate/predict read it back."""

import dataclasses
import json
import os


@dataclasses.dataclass
class DataSpec:
    """Where the images and masks are and how to turn them into tensors.

    Args:
        images, masks: training image and mask folders (paired by file stem).
        val_images, val_masks: validation folders; when absent, `val_fraction` of the
            training pairs is held out by a deterministic split.
        num_classes: K; mask ids (after `remap`) must lie in [0, K) or equal `ignore_class`.
        ignore_class: mask id that counts in no loss or metric (CamVid void = 11), or None.
        remap: {source id: class id}, e.g. {0: 0, 255: 1} for ISBI's 0/255 labels.
        channels: image channels the model takes (1 grey, 3 RGB).
        image_size: (H, W) every image and mask is resized to, or None to keep file sizes.
        crop_size: (h, w) random training windows cut after resizing (validation uses
            whole images), or None. With crops the model is built for any input size.
        class_names: K names for reports, or None.
        val_fraction: share of training pairs held out when no validation folders are given.
        split_seed: seed of that split.
    """

    images: str
    masks: str
    num_classes: int
    image_size: tuple = None
    channels: int = 3
    ignore_class: int = None
    remap: dict = None
    val_images: str = None
    val_masks: str = None
    val_fraction: float = 0.2
    split_seed: int = 0
    class_names: list = None
    crop_size: tuple = None

    def __post_init__(self):
        if self.image_size is not None:
            self.image_size = tuple(int(s) for s in self.image_size)
        if self.crop_size is not None:
            self.crop_size = tuple(int(s) for s in self.crop_size)
        if self.remap is not None:
            self.remap = {int(k): int(v) for k, v in self.remap.items()}
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"`class_names` has {len(self.class_names)} names; expected num_classes = {self.num_classes}."
            )

    def to_json(self):
        d = dataclasses.asdict(self)
        for key in ("image_size", "crop_size"):
            d[key] = None if d[key] is None else list(d[key])
        if self.remap is not None:
            d["remap"] = {str(k): v for k, v in self.remap.items()}
        for key in ("images", "masks", "val_images", "val_masks"):
            if d[key] is not None:
                d[key] = os.path.abspath(d[key])
        return d

    @property
    def model_input_shape(self):
        """(H, W, C) the model is built for: static unless training crops differ from validation."""
        if self.image_size is None or self.crop_size is not None:
            return (None, None, self.channels)
        return (*self.image_size, self.channels)

    @classmethod
    def from_json(cls, d):
        return cls(**d)


def load_run(run_dir):
    """Reads `run_dir`/run.json: {"data": DataSpec, "model": {...}, "train": {...}}."""
    path = os.path.join(run_dir, "run.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: expected a folder written by `kseg train` (it holds run.json).")
    try:
        with open(path) as f:
            run = json.load(f)
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected the run.json kseg train writes") from None
    if not isinstance(run, dict) or not isinstance(run.get("data"), dict):
        raise ValueError(f"{path} has no \"data\" object; expected the run.json kseg train writes")
    try:
        run["data"] = DataSpec.from_json(run["data"])
    except TypeError as err:
        raise ValueError(f"{path}: its \"data\" does not describe a data set ({err}); expected the fields of "
                         "kseg.training.DataSpec") from None
    return run
