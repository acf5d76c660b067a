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


def read_run_file(run_dir):
    """Reads `run_dir`/run.json as a dict; returns (its path, the dict).

    Raises:
        FileNotFoundError: no run.json.
        ValueError: naming the file: unreadable, not JSON (or nested deeper than Python's
            stack), or not a JSON object.
    """
    path = os.path.join(run_dir, "run.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: expected a folder written by `kseg train` (it holds run.json).")
    try:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
    except (OSError, ValueError, RecursionError) as err:  # ValueError: not JSON, not UTF-8
        raise ValueError(f"{path} is not valid JSON ({type(err).__name__}: {err}); expected the run.json kseg train "
                         "writes") from None
    if not isinstance(run, dict):
        raise ValueError(f"{path} holds a JSON {type(run).__name__}; expected the run.json kseg train writes (an "
                         "object)")
    return path, run


def run_task(run_dir, tasks):
    """The task a run folder was trained for: run.json's "task", "semantic" when absent.

    Args:
        run_dir: the run folder.
        tasks: the task names kseg knows.

    Returns:
        one of `tasks`; "semantic" also when run.json is missing or unreadable (the semantic
        loader then names the file and the problem).
    """
    try:
        task = read_run_file(run_dir)[1].get("task", "semantic")
    except (OSError, ValueError):
        return "semantic"
    if not isinstance(task, str) or task not in tasks:
        raise ValueError(f"{os.path.join(run_dir, 'run.json')}: task {str(task)[:80]!r}, expected one of {tasks}")
    return task


def _is_int(value, low=None):
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def _size(value):
    return value is None or (isinstance(value, list) and len(value) == 2 and all(_is_int(v, 1) for v in value))


def _remap(value):
    return value is None or (isinstance(value, dict) and all(
        isinstance(k, str) and k.isdecimal() and k.isascii() and _is_int(v, 0) for k, v in value.items()))


_FIELD_CHECKS = {  # run.json's "data" of a semantic run: (check, what is expected)
    "images": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "masks": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "num_classes": (lambda v: _is_int(v, 1), "an int >= 1"),
    "image_size": (_size, "[H, W] ints >= 1 or null"),
    "channels": (lambda v: _is_int(v) and v in (1, 3), "1 or 3"),
    "ignore_class": (lambda v: v is None or _is_int(v, 0), "an int >= 0 or null"),
    "remap": (_remap, 'an object {"source id": class id} of ints >= 0, or null'),
    "val_images": (lambda v: v is None or isinstance(v, str), "a folder path or null"),
    "val_masks": (lambda v: v is None or isinstance(v, str), "a folder path or null"),
    "val_fraction": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
                     "a number in (0, 1)"),
    "split_seed": (_is_int, "an int"),
    "class_names": (lambda v: v is None or (isinstance(v, list) and all(isinstance(n, str) for n in v)),
                    "a list of names or null"),
    "crop_size": (_size, "[h, w] ints >= 1 or null"),
}


_PATH_FIELDS = ("json", "images", "label_maps", "pngs", "yolo_data")  # data spec fields that name files


def load_run(run_dir):
    """Reads `run_dir`/run.json of a semantic run: {"data": DataSpec, "model": {...}, "train": {...}}.

    Raises:
        FileNotFoundError: no run.json.
        ValueError: naming the file, the field, the value seen and the value expected.
    """
    path, run = read_run_file(run_dir)
    data = run.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"{path} has no \"data\" object; expected the run.json kseg train writes")
    unknown = sorted(set(data) - set(_FIELD_CHECKS))
    missing = [k for k in ("images", "masks", "num_classes") if k not in data]
    if unknown or missing:
        raise ValueError(f"{path}: its \"data\" has unknown field(s) {unknown} and lacks {missing}; expected the "
                         f"fields of kseg.training.DataSpec ({', '.join(_FIELD_CHECKS)})")
    for key, value in data.items():
        check, expected = _FIELD_CHECKS[key]
        if not check(value):
            raise ValueError(f"{path}: \"data\" field {key} is {str(value)[:80]!r}, expected {expected}")
    try:
        run["data"] = DataSpec.from_json(data)
    except ValueError as err:  # class_names of another length than num_classes
        raise ValueError(f"{path}: {err}") from None
    return run


def load_detection_run(run_dir, task, spec_class, what):
    """Reads `run_dir`/run.json of an instance or panoptic run: its dict with "data" as a `spec_class`.

    Args:
        run_dir: the run folder.
        task: the "task" run.json must name ("instance", "panoptic").
        spec_class: the task's data spec class (its constructor checks the fields).
        what: the run, in words, for the messages ("a Mask R-CNN run").

    Raises:
        FileNotFoundError: no run.json.
        ValueError: naming the file, the field, the value seen and the value expected.
    """
    path, run = read_run_file(run_dir)
    if run.get("task") != task:
        raise ValueError(f"{path}: task {str(run.get('task', 'semantic'))[:80]!r}, expected {task!r} ({what})")
    data, categories = run.get("data"), run.get("categories")
    if not isinstance(data, dict):
        raise ValueError(f"{path} has no \"data\" object; expected the run.json kseg train writes")
    if not (isinstance(categories, list) and categories and all(
            isinstance(c, dict) and _is_int(c.get("id"), 1) and isinstance(c.get("name"), str) for c in categories)):
        raise ValueError(f"{path}: \"categories\" is {str(categories)[:80]!r}, expected a non-empty list of "
                         "{\"id\": int >= 1, \"name\": str, ...} (the run's classes)")
    for key, value in data.items():
        if key == "image_size" and not _size(value) or value is not None and key.endswith(_PATH_FIELDS) and not (
                isinstance(value, str) and value):
            expected = "[H, W] ints" if key == "image_size" else "a path"
            raise ValueError(f"{path}: \"data\" field {key} is {str(value)[:80]!r}, expected {expected}")
    try:
        run["data"] = spec_class(**data)
    except (TypeError, ValueError) as err:  # TypeError: a field the spec does not have
        raise ValueError(f"{path}: its \"data\" does not describe {what}'s data ({err}); expected the fields of "
                         f"{spec_class.__name__}") from None
    return run
