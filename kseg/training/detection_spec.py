"""The data specs of instance and panoptic runs (saved in run.json): where the data comes
from and how it is read. Errors name the constructor arguments (`val_fraction`, ...)."""

import dataclasses
import os

INSTANCE_SOURCES = ("shapes", "coco", "label_maps", "yolo")
PANOPTIC_SOURCES = ("shapes", "coco_panoptic")
DEFAULT_SHAPES = 200  # synthetic images when no data source is given


def check_detection_spec(spec, kind, sources, given_val, checks):
    """Normalises `spec.image_size` and raises on the first failed check: those every detection
    spec has (source, image_size, max_instances, val_fraction, shapes), then `checks`.

    Args:
        spec: an `InstanceDataSpec` or `PanopticDataSpec`.
        kind: "instance" or "panoptic", for the messages.
        sources: the spec's allowed sources.
        given_val: whether a separate validation set is given (then val_fraction is unused).
        checks: the spec's own (ok, message) pairs.

    Raises:
        ValueError: naming the argument, the value seen and the value expected.
    """
    spec.image_size = tuple(int(s) for s in spec.image_size)
    size = spec.image_size
    common = [
        (spec.source in sources, f"`source` {spec.source!r}: {kind} data source, expected one of {sources}"),
        (len(size) == 2 and min(size) >= 32 and not any(s % 32 for s in size),
         f"`image_size` {'x'.join(map(str, size))}: expected H and W divisible by 32 and >= 32 (the coarsest "
         "feature map has stride 32), e.g. 256 or 256x320"),
        (isinstance(spec.max_instances, int) and spec.max_instances >= 1,
         f"`max_instances` {spec.max_instances!r}: expected an int >= 1"),
        (given_val or 0 < spec.val_fraction < 1,
         f"`val_fraction` {spec.val_fraction}: expected a number in (0, 1) (no separate validation set given)"),
        (spec.source != "shapes" or (isinstance(spec.shapes, int) and spec.shapes >= 2),
         f"`shapes` {spec.shapes!r}: expected an int >= 2 (training and held-out images)"),
    ]
    for ok, message in common + checks:
        if not ok:
            raise ValueError(message)


def spec_json(spec, path_fields):
    """A data spec as run.json stores it: a dict, image_size a list, the `path_fields` absolute."""
    d = dict(dataclasses.asdict(spec), image_size=list(spec.image_size))
    for key in path_fields:
        if d[key] is not None:
            d[key] = os.path.abspath(d[key])
    return d


@dataclasses.dataclass
class DetectionDataSpec:
    """The fields every detection data spec has (`InstanceDataSpec`, `PanopticDataSpec`).

    Args:
        source: where the data comes from (the subclass's sources; "shapes": synthetic).
        image_size: (H, W) the model works at, both divisible by 32.
        max_instances: M, ground-truth instances per training image (the largest kept).
        shapes: image count of the synthetic set (>= 2: some are held out).
        images, val_images: the training and validation image folders of file data.
        val_fraction: share of the training images held out when no validation set is given.
        split_seed: seed of that split (and of the synthetic images).
    """

    source: str
    image_size: tuple = (256, 256)
    max_instances: int = 32
    shapes: int = None
    images: str = None
    val_images: str = None
    val_fraction: float = 0.2
    split_seed: int = 0


@dataclasses.dataclass
class InstanceDataSpec(DetectionDataSpec):
    """Where the instance data comes from and how it is read (saved in run.json).

    Args:
        source: "shapes" (synthetic, no download), "coco" (a COCO instances JSON + image
            folder), "label_maps" (instance label-map PNGs paired by stem with images) or
            "yolo" (an Ultralytics YOLO segmentation data.yaml, `kseg.data.yolo`).
        image_size: (H, W) the model works at, both divisible by 32.
        max_instances: M, ground-truth instances per training image (the largest kept).
        shapes: image count of the synthetic set (>= 2: some are held out).
        coco_json, images, label_maps: the training files (`images` is the image folder
            of both "coco" and "label_maps").
        val_coco_json, val_images, val_label_maps: a separate validation set; when absent,
            `val_fraction` of the training images is held out (`kseg.data.split_pairs`).
        yolo_data: "yolo": the data.yaml; its val split validates, unless it lists the
            train images (coco128's does): then `val_fraction` of them is held out.
        split_seed: seed of that split (and of the synthetic images).
        class_names: "coco": the categories to keep (ids 1..K in this order); "label_maps":
            the one class name; "shapes": not used.
    """

    coco_json: str = None
    label_maps: str = None
    val_coco_json: str = None
    val_label_maps: str = None
    class_names: list = None
    yolo_data: str = None

    def __post_init__(self):
        given_val = self.val_coco_json or self.val_label_maps or self.val_images
        needs = {"coco": "`coco_json`", "label_maps": "`label_maps`"}.get(self.source)
        names = ",".join(self.class_names or [])
        check_detection_spec(self, "instance", INSTANCE_SOURCES, given_val, [
            (not needs or getattr(self, "coco_json" if self.source == "coco" else "label_maps"),
             f"instance data source {self.source!r} needs {needs}"),
            (not needs or self.images, f"{needs} needs `images` (the folder of the images it annotates)"),
            (self.source != "shapes" or not given_val, "`shapes` makes its own held-out images (`val_fraction`); "
             "`val_images`, `val_coco_json` and `val_label_maps` are for file data"),
            (self.source != "shapes" or not self.class_names,
             f"`class_names` {names}: the shapes set has its own classes (circle, square, triangle)"),
            (self.source == "yolo" or not self.yolo_data,
             f"`yolo_data` is the data of source 'yolo', not {self.source!r}"),
            (self.source != "yolo" or self.yolo_data, "instance data source 'yolo' needs `yolo_data` (a data.yaml)"),
            (self.source != "yolo" or not (self.images or given_val or self.class_names),
             "`yolo_data` needs no `images`, `val_*` or `class_names` (its data.yaml names the images, the splits "
             "and the classes)"),
            ((self.source == "coco" or not self.val_coco_json)
             and (self.source == "label_maps" or not self.val_label_maps),
             "`val_coco_json` goes with `coco_json`, `val_label_maps` with `label_maps`"),
            (self.source != "coco" or self.val_coco_json or not self.val_images,
             "`val_images` with COCO data needs `val_coco_json` (the validation annotations)"),
            (self.source != "label_maps" or bool(self.val_label_maps) == bool(self.val_images),
             "a label-map validation set needs both `val_label_maps` and `val_images`"),
            (self.source != "label_maps" or len(self.class_names or [""]) == 1,
             f"`class_names` {names}: label maps have one class, expected one name"),
        ])

    def to_json(self):
        return spec_json(self, ("coco_json", "images", "label_maps", "val_coco_json", "val_images", "val_label_maps",
                                "yolo_data"))


@dataclasses.dataclass
class PanopticDataSpec(DetectionDataSpec):
    """Where the panoptic data comes from (saved in run.json).

    Args:
        source: "shapes" (synthetic, no download) or "coco_panoptic" (a COCO panoptic JSON,
            its PNG folder and the image folder).
        image_size: (H, W) the model works at, both divisible by 32.
        max_instances: M, thing instances per training image (the largest kept).
        shapes: image count of the synthetic set (>= 2: some are held out).
        panoptic_json, panoptic_pngs, images: the training files.
        val_panoptic_json, val_panoptic_pngs, val_images: a separate validation set; when
            absent, `val_fraction` of the training images is held out.
        split_seed: seed of that split (and of the synthetic images).
    """

    panoptic_json: str = None
    panoptic_pngs: str = None
    val_panoptic_json: str = None
    val_panoptic_pngs: str = None

    def __post_init__(self):
        files = (self.panoptic_json, self.panoptic_pngs, self.images)
        val_files = (self.val_panoptic_json, self.val_panoptic_pngs, self.val_images)
        check_detection_spec(self, "panoptic", PANOPTIC_SOURCES, any(val_files), [
            (self.source != "shapes" or not any(files + val_files),
             "`shapes` makes its own images; `panoptic_json`, `panoptic_pngs`, `images` and their `val_*` "
             "forms are for file data"),
            (self.source != "coco_panoptic" or all(files),
             f"COCO panoptic data needs `panoptic_json`, `panoptic_pngs` and `images`; got {files}"),
            (not any(val_files) or all(val_files),
             f"a separate validation set needs `val_panoptic_json`, `val_panoptic_pngs` and `val_images`; got "
             f"{val_files}"),
        ])

    def to_json(self):
        return spec_json(self, ("panoptic_json", "panoptic_pngs", "images", "val_panoptic_json", "val_panoptic_pngs",
                                "val_images"))
