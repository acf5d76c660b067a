"""Evaluation of detectors: COCO mask/box AP (instance) and PQ (panoptic), their tables and the
val_* entries of the epoch logs.

Shape shorthand (D = the model's max_detections, S = its segment slots):

    model input    float32 [B, h, w, 3] raw pixels at the model's input size
    instance out   boxes [B, D, 4] px, scores [B, D], classes [B, D] (0 pads), masks [B, D, h, w],
                   num_detections [B]
    panoptic out   panoptic int32 [B, h, w] segment ids, segment_{category,is_thing,score,area} [B, S],
                   num_segments [B]
"""

import math

import numpy as np
import tensorflow as tf

from kseg.metrics.coco import STAT_NAMES, InstanceAP
from kseg.metrics.panoptic import PanopticQuality
from kseg.utils import progress

_LOGGED = ("AP", "AP50", "AP75")
PQ_GROUPS = (("all", ""), ("things", "_things"), ("stuff", "_stuff"))


def _batches(examples, batch_size, verbose):
    """Lists of examples of `batch_size`, in order."""
    starts = range(0, len(examples), batch_size)
    for start in progress(starts, desc="evaluate") if verbose else starts:
        yield [examples[i] for i in range(start, min(start + batch_size, len(examples)))]


def _images(batch):
    return np.stack([np.asarray(e["image"], np.float32) for e in batch])


def json_safe(value):
    """NaN -> None, recursively (valid JSON; None reads as "not scored")."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


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
    for batch in _batches(examples, batch_size, verbose):
        outputs = forward(_images(batch))
        metric.update_state(batch, {k: np.asarray(v) for k, v in outputs.items()})
    return {**json_safe(metric.result()), "images": len(examples)}


def predicted_segments(outputs, index=0):
    """The segments of image `index` of a panoptic output dict (NumPy arrays):
    {id: {"category_id", "isthing", "score", "area"}} for ids 1..num_segments."""
    n = int(outputs["num_segments"][index])
    return {k + 1: {"category_id": int(outputs["segment_category"][index, k]),
                    "isthing": bool(outputs["segment_is_thing"][index, k]),
                    "score": float(outputs["segment_score"][index, k]),
                    "area": int(outputs["segment_area"][index, k])} for k in range(n)}


def evaluate_panoptic_model(model, examples, categories, batch_size=4, forward=None, verbose=0):
    """PQ, SQ and RQ of a Panoptic FPN's (or MaskFormer's) fused output on examples at its input size.

    Args:
        model: a PanopticFPN or MaskFormer (the same panoptic outputs).
        examples: sequence of example dicts with "panoptic" and "segments", at the model's (h, w).
        categories: kseg categories.
        batch_size: images per forward pass.
        forward: images -> outputs; default `model(images, training=False)` in a `tf.function`.

    Returns:
        `PanopticQuality.result()` (NaN -> None) plus "images": n.
    """
    metric = PanopticQuality(categories)
    forward = forward or tf.function(lambda images: model(images, training=False), reduce_retracing=True,
                                     autograph=False)
    for batch in _batches(examples, batch_size, verbose):
        outputs = {k: np.asarray(v) for k, v in forward(_images(batch)).items()}
        for j, example in enumerate(batch):
            metric.update_state(example["panoptic"], example["segments"], outputs["panoptic"][j],
                                predicted_segments(outputs, j))
    return {**json_safe(metric.result()), "images": len(examples)}


def ap_log_entries(report):
    """val_{segm,bbox}_{AP,AP50,AP75} of an `evaluate_instance_model` report."""
    return {f"val_{iou_type}_{stat}": report[iou_type][stat] for iou_type in ("segm", "bbox") for stat in _LOGGED}


def pq_log_entries(report):
    """val_PQ, val_SQ, val_RQ, val_PQ_things and val_PQ_stuff of an `evaluate_panoptic_model` report."""
    entries = {f"val_{name.upper()}": report["all"][name] for name in ("pq", "sq", "rq")}
    entries.update({f"val_PQ{suffix}": report[group]["pq"] for group, suffix in PQ_GROUPS[1:]})
    return entries


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


def format_pq_table(result):
    """A fixed-width table: PQ, SQ, RQ and the category count for all/things/stuff, per class below."""
    cell = lambda v: "    n/a" if v is None else f"{100 * v:7.1f}"  # noqa: E731
    lines = [f"{'':<10}{'PQ':>8}{'SQ':>8}{'RQ':>8}{'n':>5}"]
    for group, _ in PQ_GROUPS:
        row = result[group]
        lines.append(f"{group:<10}" + "".join(f" {cell(row[k])}" for k in ("pq", "sq", "rq")) + f"{row['n']:>5}")
    scored = {name: row for name, row in result["per_class"].items() if row["pq"] is not None}
    if scored:
        width = max(len(n) for n in [*scored, "class"])
        lines += ["", f"{'class':<{width}}  {'PQ':>7}  {'SQ':>7}  {'RQ':>7}  {'TP':>5}  {'FP':>5}  {'FN':>5}"]
        lines += [f"{name:<{width}}  {cell(r['pq'])}  {cell(r['sq'])}  {cell(r['rq'])}  {r['tp']:>5}  {r['fp']:>5}  "
                  f"{r['fn']:>5}" for name, r in scored.items()]
    return "\n".join(lines)
