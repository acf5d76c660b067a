"""Panoptic segmentation behind `kseg train --task panoptic`, `kseg evaluate` and `kseg predict`.

Trains Panoptic FPN (`kseg.models.panoptic_fpn`) with plain `fit` on `instance_dataset`
batches that carry the semantic map, and scores Panoptic Quality (`kseg.metrics`) of the
model's own fused output on held-out images after every epoch. The run folder holds the
files of an instance run (`kseg.training.instance`), with PQ in place of AP:

    run.json        task "panoptic", the data spec, categories, model config, training settings
    best.keras      the model of the epoch with the best validation PQ (atomic writes)
    final.keras     the model after the last epoch
    history.csv     one row per epoch: the six losses, val_PQ/SQ/RQ, val_PQ_things/stuff
    curves.png      loss and PQ curves, redrawn every epoch
    logs/, backup/  TensorBoard; BackupAndRestore (rerunning the same command resumes)
    metrics.json    PQ/SQ/RQ (all, things, stuff, per class) of best.keras on the validation set

Categories use kseg's panoptic ids (`kseg.data.panoptic.training_categories`): things 1..K,
stuff K+1..K+S, each with its file id as "coco_id". Example contract (one image):

    image     [H, W, 3]; boxes, classes, masks, iscrowd: the thing segments
              (`kseg.data.instances`); semantic int32 [H, W] (0 thing, 1..S stuff, 255 void)
    panoptic  int32 [H, W] segment ids (0 void); segments {id: {"category_id", "iscrowd",
              "isthing"}}

Validation is scored at the model's input size: ground truth is resized nearest
(`resize_example`), and a segment that vanishes there is left out of it.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from kseg import data as kdata
from kseg import viz
from kseg.data.panoptic import (
    panoptic_training_example,
    read_coco_panoptic,
    training_categories,
    write_coco_panoptic,
)
from kseg.data.panoptic_shapes import PANOPTIC_SHAPE_CATEGORIES, panoptic_shapes_examples
from kseg.metrics.panoptic import PanopticQuality
from kseg.models import maskformer
from kseg.models.maskformer import MaskFormer
from kseg.models.panoptic_fpn import PanopticFPN
from kseg.training.instance import (
    MODEL_CONFIGS,
    DetectionTask,
    LazyExamples,
    _json_safe,
    default_model_path,
    detection_spec_checks,
    forward_one_image,
    held_out_split,
    load_model_file,
    load_task_run,
    resized,
    spec_json,
    train_detection,
)
from kseg.utils import progress, write_json

SOURCES = ("shapes", "coco_panoptic")
DEFAULT_SHAPES = 200  # synthetic images when no data source is given
MONITOR = "val_PQ"
_GROUPS = (("all", ""), ("things", "_things"), ("stuff", "_stuff"))
# Panoptic FPN drops stuff regions under 4096 pixels at 800 x 1333; kseg scales that to the input.
_PAPER_MIN_STUFF_FRACTION = 4096 / (800 * 1333)
MODELS = ("panoptic_fpn", "maskformer")
# --model-config of MaskFormer: the small one gets 20 queries, enough for 8 things + the stuff.
MASKFORMER_CONFIGS = {"small": {**maskformer.SMALL_CONFIG, "num_queries": 20},
                      "resnet50": {"backbone": "resnet50"}}  # the paper's sizes (MaskFormer's defaults)


@dataclasses.dataclass
class PanopticDataSpec:
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

    source: str
    image_size: tuple = (256, 256)
    max_instances: int = 32
    shapes: int = None
    panoptic_json: str = None
    panoptic_pngs: str = None
    images: str = None
    val_panoptic_json: str = None
    val_panoptic_pngs: str = None
    val_images: str = None
    val_fraction: float = 0.2
    split_seed: int = 0

    def __post_init__(self):
        self.image_size = tuple(int(s) for s in self.image_size)
        files = (self.panoptic_json, self.panoptic_pngs, self.images)
        val_files = (self.val_panoptic_json, self.val_panoptic_pngs, self.val_images)
        for ok, message in [
            (self.source in SOURCES, f"panoptic data source {self.source!r}, expected one of {SOURCES}"),
            *detection_spec_checks(self),
            (any(val_files) or 0 < self.val_fraction < 1,
             f"--val-fraction {self.val_fraction}: expected a number in (0, 1) (no separate validation set given)"),
            (self.source != "shapes" or (isinstance(self.shapes, int) and self.shapes >= 2),
             f"--shapes {self.shapes!r}: expected an int >= 2 (training and held-out images)"),
            (self.source != "shapes" or not any(files + val_files),
             "--shapes makes its own images; --panoptic-json, --panoptic-pngs, --images and their --val-* "
             "forms are for file data"),
            (self.source != "coco_panoptic" or all(files),
             f"COCO panoptic data needs --panoptic-json, --panoptic-pngs and --images; got {files}"),
            (not any(val_files) or all(val_files),
             f"a separate validation set needs --val-panoptic-json, --val-panoptic-pngs and --val-images; got "
             f"{val_files}"),
        ]:
            if not ok:
                raise ValueError(message)

    def to_json(self):
        return spec_json(self, ("panoptic_json", "panoptic_pngs", "images", "val_panoptic_json", "val_panoptic_pngs",
                                "val_images"))


def load_panoptic_splits(spec):
    """Reads the data of `spec`: (train examples, val examples, categories).

    Examples follow the module's contract, read when indexed; categories are kseg's
    (module docstring). Without a separate validation set, `kseg.data.split_pairs` holds
    out images by a hash of their PNG names.
    """
    if spec.source == "shapes":
        size = spec.image_size
        examples = panoptic_shapes_examples(spec.shapes, seed=spec.split_seed, image_size=size,
                                            max_instances=min(6, spec.max_instances),
                                            min_size=max(4, min(size) // 8))
        categories = [dict(c) for c in PANOPTIC_SHAPE_CATEGORIES]
        names, val = [f"shapes_{i:06d}" for i in range(len(examples))], None
    else:
        examples, categories = coco_panoptic_examples(spec.panoptic_json, spec.panoptic_pngs, spec.images)
        names = examples.paths
        val = None
        if spec.val_panoptic_json:
            val, _ = coco_panoptic_examples(spec.val_panoptic_json, spec.val_panoptic_pngs, spec.val_images,
                                            categories)
    if val is not None:
        return examples, val, categories
    return (*held_out_split(examples, names, spec), categories)


def coco_panoptic_examples(json_path, png_dir, image_dir, categories=None):
    """(examples, categories) of a COCO panoptic set in the module's contract, read when indexed.

    Args:
        json_path, png_dir, image_dir: the JSON, its PNG folder and the image folder.
        categories: kseg categories to use (another file's); default those of this JSON.

    Raises:
        DataError: a JSON without "categories" (and no `categories` given), and everything
            `read_coco_panoptic` checks.
    """
    coco, file_categories = read_coco_panoptic(json_path, png_dir, image_dir)
    if categories is None:
        if not file_categories:
            raise kdata.DataError(f"{json_path}: no 'categories' list, expected the categories (id, name, isthing) "
                                  "of the panoptic set")
        categories = training_categories(file_categories)
    examples = LazyExamples(len(coco), lambda i: panoptic_training_example(coco[i], categories))
    examples.paths = coco.paths
    return examples, categories


def build_panoptic_fpn(config, categories, image_size, **overrides):
    """PanopticFPN of a `MODEL_CONFIGS` name for kseg `categories`, `overrides` on top.

    The minimum stuff area defaults to the paper's 4096 pixels at 800 x 1333, scaled to
    `image_size` (64 pixels at 256 x 256).
    """
    things, stuff = _split_categories(categories, "Panoptic FPN")
    area = max(1, round(_PAPER_MIN_STUFF_FRACTION * image_size[0] * image_size[1]))
    return _build(PanopticFPN, MODEL_CONFIGS, config, overrides, num_classes=len(things), num_stuff_classes=len(stuff),
                  image_size=tuple(image_size), min_stuff_area=area)


def build_maskformer(config, categories, image_size, **overrides):
    """MaskFormer of a `MASKFORMER_CONFIGS` name for kseg `categories`, `overrides` on top."""
    things, stuff = _split_categories(categories, "MaskFormer")
    return _build(MaskFormer, MASKFORMER_CONFIGS, config, overrides, num_classes=len(things),
                  num_stuff_classes=len(stuff), image_size=tuple(image_size))


def _split_categories(categories, model_name):
    """(things, stuff) of kseg panoptic categories, checked."""
    things = [c for c in categories if c["isthing"]]
    stuff = [c for c in categories if not c["isthing"]]
    if not things or not stuff:
        raise ValueError(f"{len(things)} thing and {len(stuff)} stuff categories, expected at least one of each "
                         f"for {model_name}")
    if [c["id"] for c in categories] != list(range(1, len(categories) + 1)) or any(c["isthing"] for c in stuff):
        raise ValueError("categories must be kseg's panoptic ids: things 1..K then stuff K+1..K+S "
                         "(kseg.data.panoptic.training_categories)")
    return things, stuff


def _build(cls, configs, config, overrides, **arguments):
    if config not in configs:
        raise ValueError(f"--model-config {config!r} for {cls.__name__}, expected one of {', '.join(configs)}")
    try:
        return cls(**{**configs[config], **arguments, **overrides})
    except TypeError as err:
        raise ValueError(f"{cls.__name__} rejected the --set arguments {sorted(overrides)}: {err}") from None


# ---------------------------------------------------------------------------------- evaluation


def predicted_segments(outputs, index=0):
    """The segments of image `index` of a Panoptic FPN output dict (NumPy arrays):
    {id: {"category_id", "isthing", "score", "area"}} for ids 1..num_segments."""
    n = int(outputs["num_segments"][index])
    return {k + 1: {"category_id": int(outputs["segment_category"][index, k]),
                    "isthing": bool(outputs["segment_is_thing"][index, k]),
                    "score": float(outputs["segment_score"][index, k]),
                    "area": int(outputs["segment_area"][index, k])} for k in range(n)}


def evaluate_panoptic_model(model, examples, categories, batch_size=4, forward=None, verbose=0):
    """PQ, SQ and RQ of a Panoptic FPN's fused output on examples at its input size.

    Args:
        model: a PanopticFPN or MaskFormer (the same panoptic outputs).
        examples: sequence of example dicts (module docstring) at the model's (h, w) (`resized`).
        categories: kseg categories.
        batch_size: images per forward pass.
        forward: images -> outputs; default `model(images, training=False)` in a `tf.function`.

    Returns:
        `PanopticQuality.result()` (NaN -> None) plus "images": n.
    """
    metric = PanopticQuality(categories)
    forward = forward or tf.function(lambda images: model(images, training=False), reduce_retracing=True,
                                     autograph=False)
    starts = range(0, len(examples), batch_size)
    for start in progress(starts, desc="evaluate") if verbose else starts:
        batch = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
        outputs = forward(np.stack([np.asarray(e["image"], np.float32) for e in batch]))
        outputs = {k: np.asarray(v) for k, v in outputs.items()}
        for j, example in enumerate(batch):
            metric.update_state(example["panoptic"], example["segments"], outputs["panoptic"][j],
                                predicted_segments(outputs, j))
    return {**_json_safe(metric.result()), "images": len(examples)}


def format_pq_table(result):
    """A fixed-width table: PQ, SQ, RQ and the category count for all/things/stuff, per class below."""
    cell = lambda v: "    n/a" if v is None else f"{100 * v:7.1f}"  # noqa: E731
    lines = [f"{'':<10}{'PQ':>8}{'SQ':>8}{'RQ':>8}{'n':>5}"]
    for group, _ in _GROUPS:
        row = result[group]
        lines.append(f"{group:<10}" + "".join(f" {cell(row[k])}" for k in ("pq", "sq", "rq")) + f"{row['n']:>5}")
    scored = {name: row for name, row in result["per_class"].items() if row["pq"] is not None}
    if scored:
        width = max(len(n) for n in [*scored, "class"])
        lines += ["", f"{'class':<{width}}  {'PQ':>7}  {'SQ':>7}  {'RQ':>7}  {'TP':>5}  {'FP':>5}  {'FN':>5}"]
        lines += [f"{name:<{width}}  {cell(r['pq'])}  {cell(r['sq'])}  {cell(r['rq'])}  {r['tp']:>5}  {r['fp']:>5}  "
                  f"{r['fn']:>5}" for name, r in scored.items()]
    return "\n".join(lines)


def _pq_log_entries(report):
    """val_PQ, val_SQ, val_RQ, val_PQ_things and val_PQ_stuff of an `evaluate_panoptic_model` report."""
    entries = {f"val_{name.upper()}": report["all"][name] for name in ("pq", "sq", "rq")}
    entries.update({f"val_PQ{suffix}": report[group]["pq"] for group, suffix in _GROUPS[1:]})
    return entries


# ---------------------------------------------------------------------------------- training


def train_panoptic(spec, output_dir, model="panoptic_fpn", model_config="small", model_kwargs=None, epochs=50,
                   steps_per_epoch=None, batch_size=4, learning_rate=1e-3, schedule="cosine", augment=True,
                   time_budget=None, seed=0, verbose=1, **distribution):
    """Trains Panoptic FPN and writes a run folder (module docstring).

    Args:
        spec: a `PanopticDataSpec`.
        output_dir: the run folder (created; rerunning the same command resumes a killed run).
        model: "panoptic_fpn" (Panoptic FPN) or "maskformer" (MaskFormer); both return the
            same panoptic outputs, scored the same way.
        model_config: a `MODEL_CONFIGS` (Panoptic FPN) or `MASKFORMER_CONFIGS` name;
            `model_kwargs` override its constructor arguments.
        epochs, steps_per_epoch, batch_size, learning_rate, schedule, augment, time_budget,
            seed, **distribution: as `kseg.training.instance.train_instances`.

    Returns:
        {"history", "paths", "metrics" (metrics.json), "run" (run.json)}.
    """
    if model not in MODELS:
        raise ValueError(f"--model {model!r} for the panoptic task, expected one of {', '.join(MODELS)}")
    task = PANOPTIC_TASK if model == "panoptic_fpn" else MASKFORMER_TASK
    return train_detection(task, spec, output_dir, model_config=model_config, model_kwargs=model_kwargs,
                           epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                           learning_rate=learning_rate, schedule=schedule, augment=augment, time_budget=time_budget,
                           seed=seed, verbose=verbose, **distribution)


def load_panoptic_run(run_dir):
    """Reads `run_dir`/run.json of a panoptic run: its dict with "data" as a `PanopticDataSpec`."""
    return load_task_run(run_dir, "panoptic", PanopticDataSpec, "a Panoptic FPN run")


def load_panoptic_model(run_dir=None, path=None):
    """The PanopticFPN or MaskFormer of `path`, default `run_dir`'s best.keras (final.keras when
    there is none)."""
    return load_model_file(run_dir, path, (PanopticFPN, MaskFormer), "a panoptic run's model (PanopticFPN or "
                                                                     "MaskFormer)")


def evaluate_panoptic_run(run_dir, model_path=None, panoptic_json=None, panoptic_pngs=None, images=None,
                          output=None, batch_size=4, verbose=1):
    """PQ of a run's model on its validation set, or on another COCO panoptic set.

    Args:
        run_dir: a panoptic run folder.
        model_path: default best.keras.
        panoptic_json, panoptic_pngs, images: evaluate on this COCO panoptic set instead
            (its categories are matched to the run's by their file ids, "coco_id").
        output: the JSON report, default `run_dir`/evaluation.json.
        batch_size: images per forward pass.

    Returns:
        the report (`evaluate_panoptic_model`) plus "model" and "output".
    """
    run = load_panoptic_run(run_dir)
    categories = run["categories"]
    files = (panoptic_json, panoptic_pngs, images)
    if any(files) and not all(files):
        raise ValueError(f"evaluating on other data needs --panoptic-json, --panoptic-pngs and --images; got {files}")
    if panoptic_json:
        examples, _ = coco_panoptic_examples(panoptic_json, panoptic_pngs, images, categories)
    else:
        _, examples, _ = load_panoptic_splits(run["data"])
    model = load_panoptic_model(run_dir, model_path)
    report = evaluate_panoptic_model(model, resized(examples, model.image_size), categories, batch_size,
                                     verbose=verbose)
    output = output or os.path.join(run_dir, "evaluation.json")
    report["model"] = os.path.abspath(model_path or default_model_path(run_dir))
    write_json(output, report)
    return {**report, "output": output}


# ---------------------------------------------------------------------------------- prediction


def predict_panoptic_image(model, image, forward=None):
    """The panoptic segmentation of one image of any size, in its own pixels.

    The image is resized to the model's input size as in training; the id map comes back
    nearest (segment areas are recounted at the image's size, and a segment that vanishes
    there is dropped).

    Returns:
        (panoptic int32 [H, W], segments {id: {"category_id", "isthing", "score", "area"}}).
    """
    height, width = np.shape(image)[:2]
    size = tuple(model.image_size)
    outputs = forward_one_image(model, image, forward)
    panoptic, segments = outputs["panoptic"][0].astype(np.int32), predicted_segments(outputs)
    if (height, width) != size:
        panoptic = np.asarray(tf.image.resize(panoptic[..., None], (height, width), method="nearest"))[..., 0]
    ids, areas = np.unique(panoptic, return_counts=True)
    area = dict(zip(ids.tolist(), areas.tolist()))
    segments = {sid: {**info, "area": area[sid]} for sid, info in segments.items() if sid in area}
    return panoptic.astype(np.int32), segments


def predict_panoptic(run_dir_or_model, images, output_dir, categories=None, model_path=None, verbose=1):
    """Writes a picture and a COCO panoptic prediction of each image.

    Files in `output_dir`: `<stem>_panoptic.png` (`viz.panoptic_overlay`: stuff by category,
    things by instance with white outlines and "name score" labels), and the COCO panoptic
    format: `panoptic/<stem>.png` id maps and `panoptic.json` (segments_info with kseg's
    category ids, "score", and the categories with their "coco_id"), written last, so it
    never names a PNG that is not there (`kseg.metrics.evaluate_panoptic_folders` scores it).

    Args:
        run_dir_or_model: a panoptic run folder (model and categories from it), or a PanopticFPN
            or MaskFormer.
        images: image file paths.
        output_dir: created if missing; files are written atomically.
        categories: kseg categories; default the run's, or "class k" / "stuff s".
        model_path: with a run folder, the model file (default best.keras).

    Returns:
        {"pictures": {image path: png path}, "json": panoptic.json path}.
    """
    model = run_dir_or_model if isinstance(run_dir_or_model, keras.Model) else None
    if model is None:
        categories = categories or load_panoptic_run(run_dir_or_model)["categories"]
        model = load_panoptic_model(run_dir_or_model, model_path)
    categories = categories or (
        [{"id": k, "name": f"class {k}", "isthing": 1} for k in range(1, model.num_classes + 1)]
        + [{"id": model.num_classes + s, "name": f"stuff {s}", "isthing": 0}
           for s in range(1, model.num_stuff_classes + 1)])
    forward = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True, autograph=False)
    os.makedirs(output_dir, exist_ok=True)
    pictures = {}

    def predictions():
        for i, path in enumerate(progress(images, desc="predict") if verbose else images):
            image = kdata.read_image(path, channels=3)
            panoptic, segments = predict_panoptic_image(model, image, forward)
            stem = os.path.splitext(os.path.basename(path))[0]
            pictures[path] = os.path.join(output_dir, f"{stem}_panoptic.png")
            viz.save_png(pictures[path], viz.panoptic_overlay(image, panoptic, segments, categories))
            yield {"image_id": i, "file_name": f"{stem}.png", "image_file_name": os.path.basename(path),
                   "panoptic": panoptic,
                   "segments": {sid: {"category_id": s["category_id"], "iscrowd": 0, "score": round(s["score"], 4)}
                                for sid, s in segments.items()}}

    json_path = os.path.join(output_dir, "panoptic.json")
    write_coco_panoptic(predictions(), json_path, os.path.join(output_dir, "panoptic"), categories=categories)
    return {"pictures": pictures, "json": json_path}


PANOPTIC_TASK = DetectionTask(
    name="panoptic", model_name="panoptic_fpn", load_splits=load_panoptic_splits, build=build_panoptic_fpn,
    evaluate=evaluate_panoptic_model, log_entries=_pq_log_entries, load=load_panoptic_model,
    load_run=load_panoptic_run, monitor=MONITOR,
    score_key="val_PQ", score_name="PQ", semantic=True,
)
MASKFORMER_TASK = dataclasses.replace(PANOPTIC_TASK, model_name="maskformer", build=build_maskformer)
