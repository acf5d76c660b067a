"""Instance segmentation behind `kseg train --task instance`, `kseg evaluate` and `kseg predict`.

Trains Mask R-CNN (`kseg.models.mask_rcnn`) with plain `fit` on `instance_dataset` batches and
scores COCO mask and box AP (pycocotools, `kseg.metrics.coco`) on held-out images after every
epoch. The run folder holds the same files as a semantic run (`kseg.training.trainer`):

    run.json        task "instance", the data spec, categories, model config, training settings
    best.keras      the model of the epoch with the best validation mask AP (atomic writes)
    final.keras     the model after the last epoch
    history.csv     one row per epoch: the five losses, val_{segm,bbox}_{AP,AP50,AP75}, seconds
    curves.png      loss and AP curves, redrawn every epoch
    logs/           TensorBoard
    backup/         BackupAndRestore state: rerunning the same command resumes a killed run
    metrics.json    COCO AP (segm and bbox, per class) of best.keras on the validation set

Shape shorthand (the `kseg.data.instances` contract; D = the model's max_detections):

    example      image [H, W, 3], boxes float [N, 4] (y1, x1, y2, x2) px, classes int [N] 1..K,
                 masks uint8 [N, H, W], optional iscrowd [N], image_id
    model input  float32 [B, h, w, 3] raw pixels, (h, w) = the run's image_size
    model output boxes [B, D, 4] px, scores [B, D], classes [B, D] (0 pads), masks [B, D, h, w]
                 probabilities, num_detections [B]

Validation is scored at the model's input size: images and ground truth are resized to
`image_size` as in training (image bilinear antialiased, masks nearest, boxes scaled); crowd
regions stay in the ground truth (COCO ignores detections on them).
"""

import collections.abc
import dataclasses
import functools
import math
import os

import keras
import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils

from kseg import data as kdata
from kseg import viz
from kseg.data.instances import instance_dataset, read_coco_instances, read_instance_label_map
from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples
from kseg.data.yolo import read_yolo_data, read_yolo_yaml
from kseg.metrics.coco import STAT_NAMES, InstanceAP
from kseg.models.base import dtype_policy_scope
from kseg.models.mask_rcnn import LOSSES, SMALL_CONFIG, MaskRCNN, TorchvisionMaskRCNN
from kseg.training import callbacks as kcallbacks
from kseg.training.finetune import config_expectation, init_model, task_families
from kseg.training.loop import distribution_record, fit_run, start_run, training_input
from kseg.training.spec import load_detection_run
from kseg.training.trainer import build_schedule
from kseg.utils import progress, write_json

# --model-config: backbone + sizes of the heads (user --set values override them).
MODEL_CONFIGS = {
    "small": dict(SMALL_CONFIG),
    "mobilenet": {**SMALL_CONFIG, "backbone": "mobilenet_v3_large", "fpn_channels": 128, "box_fc_dim": 512,
                  "mask_channels": 128, "max_detections": 50},
    "resnet50": {"backbone": "resnet50"},  # the paper's sizes (MaskRCNN's defaults)
}
SOURCES = ("shapes", "coco", "label_maps", "yolo")
DEFAULT_SHAPES = 200  # synthetic images when no data source is given
MONITOR = "val_segm_AP"
_LOGGED = ("AP", "AP50", "AP75")


@dataclasses.dataclass
class InstanceDataSpec:
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

    source: str
    image_size: tuple = (256, 256)
    max_instances: int = 32
    shapes: int = None
    coco_json: str = None
    images: str = None
    label_maps: str = None
    val_coco_json: str = None
    val_images: str = None
    val_label_maps: str = None
    val_fraction: float = 0.2
    split_seed: int = 0
    class_names: list = None
    yolo_data: str = None

    def __post_init__(self):
        self.image_size = tuple(int(s) for s in self.image_size)
        given_val = self.val_coco_json or self.val_label_maps or self.val_images
        flag = {"coco": "--coco-json", "label_maps": "--label-maps"}.get(self.source)
        names = ",".join(self.class_names or [])
        for ok, message in [
            (self.source in SOURCES, f"instance data source {self.source!r}, expected one of {SOURCES}"),
            *detection_spec_checks(self),
            (given_val or 0 < self.val_fraction < 1,
             f"--val-fraction {self.val_fraction}: expected a number in (0, 1) (no separate validation set given)"),
            (self.source != "shapes" or (isinstance(self.shapes, int) and self.shapes >= 2),
             f"--shapes {self.shapes!r}: expected an int >= 2 (training and held-out images)"),
            (not flag or getattr(self, "coco_json" if self.source == "coco" else "label_maps"),
             f"instance data source {self.source!r} needs {flag}"),
            (not flag or self.images, f"{flag} needs --images (the folder of the images it annotates)"),
            (self.source != "shapes" or not given_val, "--shapes makes its own held-out images (--val-fraction); "
             "--val-images, --val-coco-json and --val-label-maps are for file data"),
            (self.source != "shapes" or not self.class_names,
             f"--class-names {names}: the shapes set has its own classes (circle, square, triangle)"),
            (self.source == "yolo" or not self.yolo_data,
             f"--yolo-data is the data of source 'yolo', not {self.source!r}"),
            (self.source != "yolo" or self.yolo_data, "instance data source 'yolo' needs --yolo-data (a data.yaml)"),
            (self.source != "yolo" or not (self.images or given_val or self.class_names),
             "--yolo-data needs no --images, --val-* or --class-names (its data.yaml names the images, the splits "
             "and the classes)"),
            ((self.source == "coco" or not self.val_coco_json)
             and (self.source == "label_maps" or not self.val_label_maps),
             "--val-coco-json goes with --coco-json, --val-label-maps with --label-maps"),
            (self.source != "coco" or self.val_coco_json or not self.val_images,
             "--val-images with COCO data needs --val-coco-json (the validation annotations)"),
            (self.source != "label_maps" or bool(self.val_label_maps) == bool(self.val_images),
             "a label-map validation set needs both --val-label-maps and --val-images"),
            (self.source != "label_maps" or len(self.class_names or [""]) == 1,
             f"--class-names {names}: label maps have one class, expected one name"),
        ]:
            if not ok:
                raise ValueError(message)

    def to_json(self):
        return spec_json(self, ("coco_json", "images", "label_maps", "val_coco_json", "val_images", "val_label_maps",
                                "yolo_data"))


def detection_spec_checks(spec):
    """(ok, message) pairs for the fields every detection data spec has: image_size, max_instances."""
    size = spec.image_size
    return [
        (len(size) == 2 and min(size) >= 32 and not any(s % 32 for s in size),
         f"--image-size {'x'.join(map(str, size))}: expected H and W divisible by 32 and >= 32 (the coarsest "
         "feature map has stride 32), e.g. 256 or 256x320"),
        (isinstance(spec.max_instances, int) and spec.max_instances >= 1,
         f"--max-instances {spec.max_instances!r}: expected an int >= 1"),
    ]


def spec_json(spec, path_fields):
    """A data spec as run.json stores it: a dict, image_size a list, the `path_fields` absolute."""
    d = dict(dataclasses.asdict(spec), image_size=list(spec.image_size))
    for key in path_fields:
        if d[key] is not None:
            d[key] = os.path.abspath(d[key])
    return d


# ---------------------------------------------------------------------------------- data


class LazyExamples(collections.abc.Sequence):
    """`count` examples, example i computed by `read(i)` when indexed (none held in memory)."""

    def __init__(self, count, read):
        self.count, self.read = count, read

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        if not -self.count <= i < self.count:
            raise IndexError(f"example {i} of {self.count}")
        return self.read(i % self.count)


def subset(examples, indices):
    """The examples `indices` of a sequence, read when indexed."""
    return LazyExamples(len(indices), lambda i: examples[indices[i]])


def resized(examples, image_size):
    """The examples resized to `image_size` when indexed (`resize_example`)."""
    return LazyExamples(len(examples), lambda i: resize_example(examples[i], tuple(image_size)))


def label_map_examples(images, label_maps):
    """(pairs, examples) of an image folder and an instance label-map folder paired by stem (class 1)."""
    pairs = kdata.find_pairs(images, label_maps, (".png", ".jpg", ".jpeg", ".tif", ".tiff"), (".png", ".tif", ".tiff"))
    return pairs, LazyExamples(len(pairs), lambda i: read_instance_label_map(pairs[i][1], pairs[i][0], image_id=i))


def resize_example(example, image_size):
    """An example at (h, w) = `image_size`, read as in training.

    Returns a new dict: image float32 [h, w, 3] (bilinear antialiased, `kdata.resize_image`),
    masks uint8 [N, h, w] (nearest), boxes scaled, "semantic" and "panoptic" maps (when
    present) nearest, "segments" without the ids that vanished, the other keys as they are.
    """
    image = np.asarray(example["image"])
    height, width = image.shape[:2]
    out = dict(example)
    if (height, width) == tuple(image_size):
        out["image"] = image.astype(np.float32)
        return out
    out["image"] = kdata.resize_image(image, image_size).numpy()
    masks = np.asarray(example["masks"], np.uint8)
    if len(masks):
        nearest = tf.image.resize(masks.transpose(1, 2, 0), image_size, method="nearest")
        out["masks"] = np.asarray(nearest).transpose(2, 0, 1).astype(np.uint8)
    else:
        out["masks"] = np.zeros((0, *image_size), np.uint8)
    scale = np.array([image_size[0] / height, image_size[1] / width] * 2, np.float32)
    out["boxes"] = np.asarray(example["boxes"], np.float32).reshape(-1, 4) * scale
    for key in ("semantic", "panoptic"):
        if key in example:
            out[key] = _resize_nearest(example[key], image_size)
    if "segments" in example and "panoptic" in example:  # a segment can vanish at the smaller size
        present = set(np.unique(out["panoptic"]).tolist())
        out["segments"] = {sid: info for sid, info in example["segments"].items() if sid in present}
    return out


def _resize_nearest(label_map, image_size):
    """An int [H, W] map resized nearest to `image_size`, int32 (ids up to 2^24 stay exact)."""
    resized = tf.image.resize(np.asarray(label_map, np.int32)[..., None], image_size, method="nearest")
    return np.asarray(resized)[..., 0].astype(np.int32)


def load_instance_splits(spec):
    """Reads and checks the data of `spec`: (train examples, val examples, categories).

    Examples are sequences of example dicts at their file size (read when indexed);
    categories [K] dicts {"id": 1..K, "name", "coco_id"}. Without a separate validation set,
    `kseg.data.split_pairs` holds out images by a hash of their file names.

    Raises:
        DataError (a ValueError) naming the file, the value seen and the value expected.
    """
    held_out = not (spec.val_coco_json or spec.val_label_maps)
    if spec.source == "yolo":
        return load_yolo_splits(spec)
    if spec.source == "shapes":
        size = spec.image_size
        examples = shapes_dataset_examples(spec.shapes, seed=spec.split_seed, image_size=size,
                                           max_instances=min(6, spec.max_instances), min_size=max(4, min(size) // 8))
        categories = [dict(c) for c in SHAPE_CATEGORIES]
        names, val = [f"shapes_{i:06d}" for i in range(len(examples))], None
    elif spec.source == "coco":
        examples, categories = read_coco_instances(spec.coco_json, spec.images, category_names=spec.class_names,
                                                   include_crowd=True)
        names = examples.paths
        if not len(examples):
            raise kdata.DataError(f"{spec.coco_json} lists no images; expected at least 2 (training and held-out) "
                                  "images with their annotations")
        val = None if held_out else read_coco_instances(
            spec.val_coco_json, spec.val_images or spec.images, category_names=[c["name"] for c in categories],
            include_crowd=True)[0]
    else:
        categories = [{"id": 1, "name": spec.class_names[0] if spec.class_names else "object", "coco_id": None}]
        pairs, examples = label_map_examples(spec.images, spec.label_maps)
        names = [image for image, _ in pairs]
        val = None if held_out else label_map_examples(spec.val_images, spec.val_label_maps)[1]
    if val is not None:
        return examples, val, categories
    return (*held_out_split(examples, names, spec), categories)


def load_yolo_splits(spec):
    """(train, val, categories) of a YOLO data.yaml: its val split, or held-out train images when
    the yaml's val lists the train images (a model is never scored on what it trained on)."""
    config = read_yolo_yaml(spec.yolo_data)
    examples, categories = read_yolo_data(spec.yolo_data, "train")
    if config["val"] != config["train"]:
        return examples, read_yolo_data(spec.yolo_data, "val")[0], categories
    return (*held_out_split(examples, examples.paths, spec), categories)


def held_out_split(examples, names, spec):
    """(train, val) subsets of `examples`, held out by `kdata.split_pairs` over their `names`
    with the spec's val_fraction and split_seed."""
    pairs = [(name, str(i)) for i, name in enumerate(names)]
    index = {pair: i for i, pair in enumerate(pairs)}
    train, val = kdata.split_pairs(pairs, val_fraction=spec.val_fraction, seed=spec.split_seed)
    return subset(examples, [index[p] for p in train]), subset(examples, [index[p] for p in val])


def build_mask_rcnn(config, categories, image_size, **overrides):
    """MaskRCNN of a `MODEL_CONFIGS` name for [K] `categories`, `overrides` (constructor arguments) on top."""
    if config not in MODEL_CONFIGS:
        raise ValueError(f"--model-config {config!r}, expected one of {', '.join(MODEL_CONFIGS)}")
    try:
        return MaskRCNN(num_classes=len(categories), image_size=tuple(image_size),
                        **{**MODEL_CONFIGS[config], **overrides})
    except TypeError as err:
        raise ValueError(f"MaskRCNN rejected the --set arguments {sorted(overrides)}: {err}") from None


# ---------------------------------------------------------------------------------- evaluation


def evaluate_instance_model(model, examples, categories, batch_size=4, forward=None, per_class=False, verbose=0):
    """COCO mask and box AP of a Mask R-CNN on examples at its input size.

    Args:
        model: MaskRCNN; images [B, h, w, 3] -> the output dict (module docstring).
        examples: sequence of example dicts, images at the model's (h, w) (`resized`).
        categories: [K] dicts {"id", "name"}.
        batch_size: images per forward pass.
        forward: images -> outputs; default `model(images, training=False)` in a `tf.function`.
        per_class: add "AP/<name>" entries.

    Returns:
        {"segm": {"AP", "AP50", "AP75", "APs", "APm", "APl"[, "AP/<name>"]}, "bbox": {...},
        "images": n}: floats in [0, 1], None where COCO has no ground truth to score.
    """
    metric = InstanceAP(categories, per_class=per_class)
    forward = forward or tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    starts = range(0, len(examples), batch_size)
    for start in progress(starts, desc="evaluate") if verbose else starts:
        batch = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
        outputs = forward(np.stack([np.asarray(e["image"], np.float32) for e in batch]))
        metric.update_state(batch, {k: np.asarray(v) for k, v in outputs.items()})
    return {**_json_safe(metric.result()), "images": len(examples)}


def _json_safe(value):
    """NaN -> None, recursively (valid JSON; None reads as "not scored")."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def format_ap_table(summary):
    """A fixed-width table: AP, AP50, AP75, APs, APm, APl rows for segm and bbox, per-class AP below."""
    cell = lambda v: "    n/a" if v is None else f"{v:7.4f}"  # noqa: E731
    lines = [f"{'':<8}" + "".join(f"{name:>8}" for name in STAT_NAMES)]
    for iou_type, title in (("segm", "mask"), ("bbox", "box")):
        lines.append(f"{title:<8}" + "".join(f" {cell(summary[iou_type].get(n))}" for n in STAT_NAMES))
    names = [k[3:] for k in summary["segm"] if k.startswith("AP/")]
    scored = [n for n in names if summary["segm"][f"AP/{n}"] is not None]
    if scored:
        width = max(len(n) for n in scored + ["class"])
        lines += ["", f"{'class':<{width}}  {'mask AP':>7}  {'box AP':>7}"]
        lines += [f"{n:<{width}}  {cell(summary['segm'][f'AP/{n}'])}  {cell(summary['bbox'].get(f'AP/{n}'))}"
                  for n in scored]
    if len(scored) < len(names):
        lines.append(f"({len(names) - len(scored)} of {len(names)} classes have no ground truth here: not listed)")
    return "\n".join(lines)


class TaskValidation(keras.callbacks.Callback):
    """A detection task's validation scores after every epoch, added to the logs as val_*.

    The detection counterpart of `kseg.training.callbacks.Validation`: it runs the task's
    evaluation (the code behind `kseg evaluate`) through one `tf.function` kept across
    epochs. Place it before the callbacks that read the val_* logs.

    Args:
        task: a `DetectionTask` (its `evaluate` and `log_entries`).
        examples: sequence of example dicts at the model's input size.
        categories: [K] dicts {"id", "name"}.
        batch_size: images per forward pass.
    """

    def __init__(self, task, examples, categories, batch_size=4):
        super().__init__()
        self.task, self.examples, self.categories, self.batch_size = task, examples, categories, batch_size
        self.last, self._forward = None, None

    def on_epoch_end(self, epoch, logs=None):
        if self._forward is None:
            model = self.model
            self._forward = tf.function(lambda images: model(images, training=False), reduce_retracing=True,
                                        autograph=False)
        self.last = self.task.evaluate(self.model, self.examples, self.categories, self.batch_size,
                                       forward=self._forward)
        if logs is not None:
            logs.update({k: math.nan if v is None else float(v) for k, v in self.task.log_entries(self.last).items()})


def _ap_log_entries(report):
    """val_{segm,bbox}_{AP,AP50,AP75} of an `evaluate_instance_model` report."""
    return {f"val_{iou_type}_{stat}": report[iou_type][stat] for iou_type in ("segm", "bbox") for stat in _LOGGED}


class InstanceCurvePlot(kcallbacks.CurvePlot):
    """`CurvePlot` with the detector's losses in one panel (log scale) and its validation
    scores in another: the val_* columns whose name contains `score_key` ("_AP" for Mask
    R-CNN, "val_PQ" for Panoptic FPN)."""

    def __init__(self, path, csv_path, title="mask_rcnn", losses=LOSSES, score_key="_AP", score_name="AP"):
        super().__init__(path, csv_path, title)
        self.losses, self.score_key, self.score_name = tuple(losses), score_key, score_name

    def on_epoch_end(self, epoch, logs=None):
        history = kcallbacks.read_history_csv(self.csv_path)
        if history:
            save_instance_curves(self.path, history, self.title, self.losses, self.score_key, self.score_name)


def save_instance_curves(path, history, title="mask_rcnn", losses=LOSSES, score_key="_AP", score_name="AP"):
    """Writes loss curves (total and each part) and the validation scores side by side as one PNG."""
    from kseg.viz.chart import line_chart

    loss_curves = {k: v for k, v in history.items() if k in ("loss",) + tuple(losses)}
    scores = {k: v for k, v in history.items() if score_key in k}
    panels = [line_chart(loss_curves, title=f"{title}: losses", xlabel="epoch", ylabel="loss (log)",
                         size=(640, 420), logy=True)]
    if scores:
        panels.append(line_chart(scores, title=f"{title}: validation {score_name}", xlabel="epoch",
                                 ylabel=score_name, size=(640, 420), ylim=(0, 1)))
    viz.save_png(path, viz.side_by_side(panels))


# ---------------------------------------------------------------------------------- training


def train_instances(spec, output_dir, model_config=None, model_kwargs=None, epochs=50, steps_per_epoch=None,
                    batch_size=4, learning_rate=1e-3, schedule="cosine", augment=True, time_budget=None, seed=0,
                    verbose=1, init=None, **distribution):
    """Trains Mask R-CNN and writes a run folder (module docstring).

    Args:
        spec: an `InstanceDataSpec`.
        output_dir: the run folder (created; rerunning the same command resumes a killed run).
        model_config: a `MODEL_CONFIGS` name (None: "small", or with `init` the file's model);
            `model_kwargs` override its MaskRCNN arguments.
        epochs, steps_per_epoch: length of training; steps default to one pass over the data.
        batch_size: images per step: the global batch, split over the strategy's replicas.
        learning_rate, schedule: peak rate of Adam (gradients clipped at norm 10) and its
            decay ("constant", "cosine", "poly"; `kseg.training.build_schedule`).
        augment: random horizontal flips.
        time_budget: stop after the epoch that ends past this many seconds of training.
        seed: seeds Keras/TF/NumPy and the data order.
        init: a .keras MaskRCNN, or TorchvisionMaskRCNN (`kseg convert`), to fine-tune
            (`kseg.training.finetune.init_model`).
        **distribution: strategy, cpu_replicas, mixed_precision, jit_compile and
            lr_reference_batch, as `kseg.training.train`.

    Returns:
        {"history", "paths", "metrics" (metrics.json), "run" (run.json)}.
    """
    return train_detection(INSTANCE_TASK, spec, output_dir, model_config=model_config, model_kwargs=model_kwargs,
                           epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                           learning_rate=learning_rate, schedule=schedule, augment=augment, time_budget=time_budget,
                           seed=seed, verbose=verbose, init=init, **distribution)


@dataclasses.dataclass(frozen=True)
class DetectionTask:
    """What an instance run and a panoptic run do differently; `train_detection` does the rest.

    Attributes:
        name: run.json's "task".
        model_name: run.json's model "name".
        load_splits: spec -> (train examples, val examples, categories).
        build: (model config name, categories, image_size, **kwargs) -> an uncompiled model.
        evaluate: (model, examples, categories, batch_size, forward=None, verbose=0) -> a
            JSON-safe report (metrics.json).
        log_entries: report -> {val_* name: float or None} for the epoch logs.
        load: (run_dir, path=None) -> the run's model.
        load_run: run_dir -> its run.json dict, "data" as the task's data spec.
        monitor: the val_* entry best.keras follows (higher is better).
        score_key, score_name: the val_* columns of the curves' second panel and its label.
        semantic: the batches carry the semantic map.
    """

    name: str
    model_name: str
    load_splits: collections.abc.Callable
    build: collections.abc.Callable
    evaluate: collections.abc.Callable
    log_entries: collections.abc.Callable
    load: collections.abc.Callable
    load_run: collections.abc.Callable
    monitor: str
    score_key: str
    score_name: str
    semantic: bool = False


def train_detection(task, spec, output_dir, model_config=None, model_kwargs=None, epochs=50, steps_per_epoch=None,
                    batch_size=4, learning_rate=1e-3, schedule="cosine", augment=True, time_budget=None, seed=0,
                    verbose=1, strategy="default", cpu_replicas=None, mixed_precision=False, jit_compile=False,
                    lr_reference_batch=None, init=None):
    """Trains the model of a `DetectionTask` into a run folder; the arguments as `train_instances`.

    With `init` (a .keras file) the model is the file's architecture and weights for the run's
    categories and image size (`kseg.training.finetune.init_model`); `model_config`, when
    given, must describe it."""
    dist, rate = start_run(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                           learning_rate=learning_rate, seed=seed, strategy=strategy, cpu_replicas=cpu_replicas,
                           lr_reference_batch=lr_reference_batch, output_dir=output_dir)
    train_examples, val_examples, categories = task.load_splits(spec)
    if not len(train_examples) or not len(val_examples):
        raise kdata.DataError(f"{len(train_examples)} training and {len(val_examples)} validation images, expected "
                              "at least one of each")
    if steps_per_epoch is None:
        steps_per_epoch = max(len(train_examples) // batch_size, 1)
    train_ds = training_input(dist, lambda batch, shard, skip: instance_dataset(
        train_examples, image_size=spec.image_size, max_instances=spec.max_instances, batch_size=batch,
        shuffle=True, flip=augment, seed=seed, semantic=task.semantic, shard=shard, skip=skip),
        batch_size, output_dir, steps_per_epoch)
    model_kwargs = dict(model_kwargs or {})
    with dtype_policy_scope("mixed_float16" if mixed_precision else None), dist.scope():
        if init is None:
            model_config = model_config or "small"
            net = task.build(model_config, categories, spec.image_size, **model_kwargs)
        else:
            expected = config_expectation(model_config, MODEL_CONFIGS, MaskRCNN) if task.name == "instance" else None
            net, init_report = init_model(init, num_classes=len(categories), size=spec.image_size,
                                          families=task_families(task.model_name), expected=expected,
                                          overrides=model_kwargs)
        net.compile(optimizer=keras.optimizers.Adam(build_schedule(schedule, rate, epochs * steps_per_epoch),
                                                    clipnorm=10.0), jit_compile=jit_compile)
    val = resized(val_examples, spec.image_size)
    config = {k: v for k, v in net.get_config().items() if k not in ("name", "trainable", "dtype")}
    run = {
        "task": task.name, "data": spec.to_json(), "categories": categories,
        "model": {"name": task.model_name, "config": model_config, "kwargs": model_kwargs, "constructor": config,
                  "params": int(net.count_params())},
        "init": None if init is None else init_report,
        "train": {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
                  "schedule": schedule, "augment": augment, "seed": seed,
                  **distribution_record(dist, strategy, rate, lr_reference_batch, mixed_precision, jit_compile),
                  "train_images": len(train_examples), "val_images": len(val_examples)},
    }

    def evaluate(model):
        report = task.evaluate(model, val, categories, batch_size, verbose=verbose)
        return {**report, "model": os.path.basename(default_model_path(output_dir))}

    return fit_run(
        net, run, output_dir, train_ds, time_budget=time_budget, verbose=verbose, monitor=task.monitor,
        validation=TaskValidation(task, val, categories, batch_size=batch_size),
        curves=lambda png, csv: InstanceCurvePlot(png, csv, title=f"{task.model_name} ({model_config or '--init'})",
                                                  losses=net.loss_names(), score_key=task.score_key,
                                                  score_name=task.score_name),
        evaluate=evaluate, load=lambda: task.load(output_dir),
    )


def load_instance_run(run_dir):
    """Reads `run_dir`/run.json of an instance run: its dict with "data" as an `InstanceDataSpec`."""
    return load_task_run(run_dir, "instance", InstanceDataSpec, "a Mask R-CNN run")


def load_task_run(run_dir, task, spec_class, what):
    """Reads `run_dir`/run.json, checks its task, and returns it with "data" as a `spec_class`
    (`kseg.training.spec.load_detection_run`: every error names the file)."""
    return load_detection_run(run_dir, task, spec_class, what)


def default_model_path(run_dir):
    """best.keras, or final.keras when no epoch had a finite validation AP (no best.keras)."""
    best = os.path.join(run_dir, "best.keras")
    return best if os.path.exists(best) else os.path.join(run_dir, "final.keras")


def load_instance_model(run_dir=None, path=None):
    """The MaskRCNN (or TorchvisionMaskRCNN, fine-tuned with --init) of `path`, default `run_dir`'s
    best.keras (final.keras when there is none)."""
    return load_model_file(run_dir, path, (MaskRCNN, TorchvisionMaskRCNN),
                           "a MaskRCNN or TorchvisionMaskRCNN (an instance run's model)")


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


def evaluate_instance_run(run_dir, model_path=None, coco_json=None, images=None, label_maps=None, output=None,
                          batch_size=4, verbose=1, yolo_data=None):
    """COCO AP of a run's model on its validation set (or on other COCO / label-map data).

    Args:
        run_dir: an instance run folder.
        model_path: default best.keras.
        coco_json, images: evaluate on this COCO JSON and image folder instead; or
        label_maps, images: on these instance label maps and images.
        yolo_data: on the val split of this YOLO data.yaml (its names must be the run's classes).
        output: the JSON report, default `run_dir`/evaluation.json.
        batch_size: images per forward pass.

    Returns:
        the report (`evaluate_instance_model`, per class) plus "model" and "output".
    """
    run = load_instance_run(run_dir)
    spec, categories = run["data"], run["categories"]
    if yolo_data and (coco_json or label_maps or images):
        raise ValueError("--yolo-data names its own images and labels: expected no --images, --coco-json or --label-maps")
    if bool(coco_json or label_maps) != bool(images) or (coco_json and label_maps):
        raise ValueError("evaluating on other data needs --images with one of --coco-json or --label-maps; got "
                         f"--images {images}, --coco-json {coco_json}, --label-maps {label_maps}")
    if yolo_data:
        examples, found = read_yolo_data(yolo_data, "val")
        if [c["name"] for c in found] != [c["name"] for c in categories]:
            raise ValueError(f"{yolo_data}: names {[c['name'] for c in found][:8]} ({len(found)}), expected the run's "
                             f"{len(categories)} classes in order: {[c['name'] for c in categories][:8]}")
    elif coco_json:
        examples, _ = read_coco_instances(coco_json, images, category_names=[c["name"] for c in categories],
                                          include_crowd=True)
    elif label_maps:
        if len(categories) != 1:
            raise ValueError(f"--label-maps hold one class; the run has {len(categories)} categories")
        examples = label_map_examples(images, label_maps)[1]
    else:
        _, examples, _ = load_instance_splits(spec)
    model = load_instance_model(run_dir, model_path)
    report = evaluate_instance_model(model, resized(examples, model.image_size), categories, batch_size,
                                     per_class=True, verbose=verbose)
    output = output or os.path.join(run_dir, "evaluation.json")
    report["model"] = os.path.abspath(model_path or default_model_path(run_dir))
    write_json(output, report)
    return {**report, "output": output}


# ---------------------------------------------------------------------------------- prediction


def predict_image(model, image, forward=None):
    """Detections of one image of any size, in its own pixels.

    The image is resized to the model's input size as in training; boxes are scaled back,
    and the masks' probabilities are resized bilinearly to the image size before the 0.5
    threshold.

    Args:
        model: a MaskRCNN.
        image: float or uint8 [H, W, 3] raw pixels.
        forward: images -> outputs; default `model(images, training=False)`.

    Returns:
        {"boxes" float32 [D, 4] (y1, x1, y2, x2) px, "scores" [D], "classes" int32 [D] 1..K,
        "masks" bool [D, H, W]} with D = num_detections, best first.
    """
    height, width = np.shape(image)[:2]
    size = tuple(model.image_size)
    out = {k: v[0] for k, v in forward_one_image(model, image, forward).items()}
    n = int(out["num_detections"])
    masks = out["masks"][:n]
    if n and (height, width) != size:
        masks = np.asarray(tf.image.resize(masks.transpose(1, 2, 0), (height, width), method="bilinear"))
        masks = masks.transpose(2, 0, 1)
    scale = np.array([height / size[0], width / size[1]] * 2, np.float32)
    return {"boxes": out["boxes"][:n] * scale, "scores": out["scores"][:n],
            "classes": out["classes"][:n].astype(np.int32), "masks": masks.reshape(n, height, width) >= 0.5}


def forward_one_image(model, image, forward=None):
    """The model's outputs (NumPy, batch 1) for one image of any size, resized to the model's
    input size as in training (bilinear antialiased)."""
    image = np.asarray(image, np.float32)
    size = tuple(model.image_size)
    batch = np.asarray(kdata.resize_image(image, size) if image.shape[:2] != size else image)[None]
    forward = forward or (lambda images: model(images, training=False))
    return {k: np.asarray(v) for k, v in forward(batch).items()}


def predict_instances(run_dir_or_model, images, output_dir, categories=None, score_threshold=0.5, model_path=None,
                      verbose=1):
    """Writes `<stem>_instances.png` (overlay) and `<stem>_instances.json` per image.

    The JSON holds the detections with score >= `score_threshold`, best first: "boxes"
    [[y1, x1, y2, x2]] pixels, "classes" (1..K), "labels" (names), "scores" and "masks" as
    COCO RLE {"size": [H, W], "counts": str} (`pycocotools.mask.decode` reads them back),
    plus "image", "height", "width", "score_threshold".

    Args:
        run_dir_or_model: an instance run folder (model and category names from it) or a MaskRCNN.
        images: image file paths.
        output_dir: created if missing; files are written atomically.
        categories: [K] dicts {"id", "name"}; default the run's, or "class k".
        score_threshold: detections below it are left out of both files.
        model_path: with a run folder, the model file (default best.keras).

    Returns:
        {image path: (png path, json path)}.
    """
    model = run_dir_or_model if isinstance(run_dir_or_model, keras.Model) else None
    if model is None:
        categories = categories or load_instance_run(run_dir_or_model)["categories"]
        model = load_instance_model(run_dir_or_model, model_path)
    categories = categories or [{"id": k, "name": f"class {k}"} for k in range(1, model.num_classes + 1)]
    names = {c["id"]: c["name"] for c in categories}
    forward = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True, autograph=False)
    os.makedirs(output_dir, exist_ok=True)
    written = {}
    for path in progress(images, desc="predict") if verbose else images:
        image = kdata.read_image(path, channels=3)
        found = predict_image(model, image, forward)
        keep = found["scores"] >= score_threshold
        found = {k: v[keep] for k, v in found.items()}
        stem = os.path.splitext(os.path.basename(path))[0]
        png, record = (os.path.join(output_dir, f"{stem}_instances.{ext}") for ext in ("png", "json"))
        viz.save_png(png, viz.instance_overlay(image, found["masks"], found["classes"], found["scores"], found["boxes"],
                                               labels=names, score_threshold=score_threshold))
        rles = mask_utils.encode(np.asfortranarray(found["masks"].transpose(1, 2, 0).astype(np.uint8)))
        write_json(record, {
            "image": os.path.abspath(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
            "score_threshold": score_threshold, "box_format": "y1, x1, y2, x2 pixels",
            "boxes": [[round(float(v), 2) for v in box] for box in found["boxes"]],
            "classes": [int(c) for c in found["classes"]],
            "labels": [names.get(int(c), f"class {c}") for c in found["classes"]],
            "scores": [float(s) for s in found["scores"]],
            "masks": [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles],
        })
        written[path] = (png, record)
    return written


INSTANCE_TASK = DetectionTask(
    name="instance", model_name="mask_rcnn", load_splits=load_instance_splits, build=build_mask_rcnn,
    evaluate=functools.partial(evaluate_instance_model, per_class=True), log_entries=_ap_log_entries,
    load=load_instance_model, load_run=load_instance_run, monitor=MONITOR, score_key="_AP", score_name="AP",
)
