"""Evaluation behind `kseg evaluate`: one confusion matrix over a dataset, then every score."""

import numpy as np

from kseg import metrics as kmetrics
from kseg.utils import ProgressBar


def evaluate_model(model, dataset, num_classes, ignore_class=None, class_names=None, loss=None, forward=None,
                   verbose=1):
    """Per-class IoU / Dice, mIoU and pixel accuracy of `model` on `dataset`.

    Runs on one device, batch by batch, so any batch size and any image size work, also
    for a model trained under a multi-replica `tf.distribute` strategy.

    Args:
        model: maps images [B, H, W, C] to logits [B, H, W, K].
        dataset: yields (images, masks [B, H, W]) batches.
        num_classes, ignore_class: as in training.
        class_names: K names for the report, or None.
        loss: a kseg loss (its `call` gives one value per image); adds "loss", the mean over images.
        forward: images -> logits; default `model(images, training=False)` (eager). Pass a
            `tf.function` kept across calls to evaluate repeatedly without retracing.

    Returns:
        The `kseg.metrics.ConfusionMatrix` summary dict (JSON-ready).
    """
    matrix = kmetrics.ConfusionMatrix(num_classes, ignore_class=ignore_class)
    forward = forward or (lambda images: model(images, training=False))
    loss_sum, images_seen = 0.0, 0
    cardinality = int(dataset.cardinality())
    bar = ProgressBar(total=cardinality if cardinality > 0 else None, desc="evaluate") if verbose else None
    for images, masks in dataset:
        logits = forward(images)
        matrix.update(masks.numpy(), np.argmax(logits.numpy(), axis=-1))
        if loss is not None:
            loss_sum += float(np.sum(loss.call(masks, logits)))
            images_seen += int(masks.shape[0])
        if bar:
            bar.update()
    if bar:
        bar.close()
    summary = matrix.summary(class_names=class_names)
    if loss is not None:
        summary["loss"] = loss_sum / max(images_seen, 1)
    return summary


def format_table(summary):
    """A fixed-width per-class table (IoU, Dice, pixels) with the means underneath."""
    rows = summary["per_class"]
    width = max([len(str(r["name"])) for r in rows] + [8])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Dice':>7}  {'pixels':>12}"]
    for r in rows:
        iou = "    n/a" if r["iou"] is None else f"{r['iou']:7.4f}"
        dice = "    n/a" if r["dice"] is None else f"{r['dice']:7.4f}"
        lines.append(f"{str(r['name']):<{width}}  {iou}  {dice}  {r['pixels']:>12d}")
    lines.append("-" * len(lines[0]))
    lines.append(f"{'mIoU':<{width}}  {summary['mean_iou']:7.4f}")
    lines.append(f"{'mean Dice':<{width}}  {summary['mean_dice']:7.4f}")
    lines.append(f"{'pixel acc':<{width}}  {summary['pixel_accuracy']:7.4f}")
    return "\n".join(lines)
