"""Confusion matrix of a segmentation and the scores derived from it.

Shape shorthand (B batch, H height, W width, K classes):

    y_true       int      [B, H, W]  truth class ids (any shape works; it is flattened)
    y_pred_ids   int      [B, H, W]  predicted class ids, same shape as `y_true`
    valid        bool     [B, H, W]  True where a pixel counts
    cm           float64  [K, K]     rows = truth, columns = prediction

Which pixels count: a pixel is dropped, in every loss and metric of kseg, when its
truth equals `ignore_class` or lies outside `[0, K)`, or (for the confusion matrix)
when its predicted id lies outside `[0, K)`. Graph code cannot raise on a tensor
value, so out-of-range labels are dropped, never wrapped or clipped into a real
class; `kseg.losses.class_pixel_counts` (eager NumPy) is the place that raises on them.

Scores follow `keras.metrics.MeanIoU`: a class whose denominator is 0 (absent from
both truth and prediction) has score NaN per class and is left out of the means;
the means and the pixel accuracy of an empty matrix are 0.
"""

import tensorflow as tf


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"`num_classes` must be an int >= 1. Received: num_classes={num_classes!r}"
        )


def _as_ids(x):
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.int32 else tf.cast(x, tf.int32)


def valid_mask(y_true, num_classes, ignore_class=None):
    """Pixels that count in losses and metrics.

    Args:
        y_true: int tensor of class ids, any shape (usually `[B, H, W]`).
        num_classes: int K.
        ignore_class: optional int; pixels with this id do not count.

    Returns:
        bool tensor shaped like `y_true`: True where `0 <= y_true < K` and
        `y_true != ignore_class`.
    """
    y_true = _as_ids(y_true)
    valid = tf.logical_and(y_true >= 0, y_true < num_classes)
    if ignore_class is not None:
        valid = tf.logical_and(valid, tf.not_equal(y_true, int(ignore_class)))
    return valid


def _broadcast_weight(sample_weight, y_true, dtype):
    weight = tf.cast(tf.convert_to_tensor(sample_weight), dtype)
    rank = y_true.shape.rank
    if weight.shape.rank == 1 and rank > 1:
        weight = tf.reshape(weight, [-1] + [1] * (rank - 1))  # per-image weight [B]
    elif weight.shape.rank == rank + 1 and weight.shape[-1] == 1:
        weight = tf.squeeze(weight, axis=-1)  # [B, H, W, 1]
    return tf.broadcast_to(weight, tf.shape(y_true))


def confusion_matrix(
    y_true, y_pred_ids, num_classes, ignore_class=None, sample_weight=None, dtype=tf.float64
):
    """Confusion matrix of class ids, ignoring `ignore_class` and out-of-range ids.

    Accumulates in `dtype` (float64 by default: pixel counts stay exact up to 2^53,
    about 9e15 pixels). Pixels whose truth is `ignore_class` or outside `[0, K)`, or
    whose prediction is outside `[0, K)`, are dropped (see the module docstring).
    Static shapes only; works under `tf.function` and XLA.

    Args:
        y_true: int tensor `[B, H, W]` (any shape) of truth class ids.
        y_pred_ids: int tensor of predicted class ids, same shape as `y_true`.
        num_classes: int K.
        ignore_class: optional int, truth id that counts nowhere (e.g. 255).
        sample_weight: optional float weights, shaped like `y_true`, `[B]` (one per
            image) or `[B, H, W, 1]`. Defaults to 1 per pixel.
        dtype: accumulation dtype, `tf.float64` (default) or `tf.int64`.

    Returns:
        `[K, K]` tensor of `dtype`, rows = truth, columns = prediction.

    Example:

    >>> cm = confusion_matrix([[0, 1, 255]], [[0, 0, 1]], num_classes=2, ignore_class=255)
    >>> cm.numpy().tolist()
    [[1.0, 0.0], [1.0, 0.0]]
    """
    _check_num_classes(num_classes)
    y_true = _as_ids(y_true)
    y_pred_ids = _as_ids(y_pred_ids)
    if (
        y_true.shape.is_fully_defined()
        and y_pred_ids.shape.is_fully_defined()
        and y_true.shape != y_pred_ids.shape
    ):
        raise ValueError(
            "`y_true` and `y_pred_ids` must have the same shape. Received: "
            f"y_true.shape={y_true.shape}, y_pred_ids.shape={y_pred_ids.shape}"
        )
    valid = valid_mask(y_true, num_classes, ignore_class)
    valid = tf.logical_and(valid, tf.logical_and(y_pred_ids >= 0, y_pred_ids < num_classes))
    weight = tf.cast(valid, dtype)
    if sample_weight is not None:
        weight = weight * _broadcast_weight(sample_weight, y_true, dtype)
    index = tf.where(valid, y_true * num_classes + y_pred_ids, 0)
    cm = tf.math.unsorted_segment_sum(
        tf.reshape(weight, [-1]), tf.reshape(index, [-1]), num_classes * num_classes
    )
    return tf.reshape(cm, [num_classes, num_classes])


def _counts(cm):
    cm = tf.cast(tf.convert_to_tensor(cm), tf.float64)
    if cm.shape.rank != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"`cm` must be a square [K, K] matrix. Received: cm.shape={cm.shape}")
    true_positive = tf.linalg.diag_part(cm)
    false_positive = tf.reduce_sum(cm, axis=0) - true_positive
    false_negative = tf.reduce_sum(cm, axis=1) - true_positive
    return true_positive, false_positive, false_negative


def _ratio_or_nan(numerator, denominator):
    present = denominator > 0
    safe = tf.where(present, denominator, tf.ones_like(denominator))
    nan = tf.fill(tf.shape(numerator), tf.constant(float("nan"), numerator.dtype))
    return tf.where(present, numerator / safe, nan)


def _nanmean(values):
    present = tf.logical_not(tf.math.is_nan(values))
    total = tf.reduce_sum(tf.where(present, values, tf.zeros_like(values)))
    return tf.math.divide_no_nan(total, tf.reduce_sum(tf.cast(present, values.dtype)))


def iou_from_confusion(cm):
    """Per-class intersection over union, TP / (TP + FP + FN).

    Args:
        cm: `[K, K]` confusion matrix, rows = truth, columns = prediction.

    Returns:
        float64 `[K]`; NaN for a class absent from both truth and prediction.
    """
    tp, fp, fn = _counts(cm)
    return _ratio_or_nan(tp, tp + fp + fn)


def dice_from_confusion(cm):
    """Per-class Dice coefficient (F1 score), 2 TP / (2 TP + FP + FN).

    Args:
        cm: `[K, K]` confusion matrix, rows = truth, columns = prediction.

    Returns:
        float64 `[K]`; NaN for a class absent from both truth and prediction.
    """
    tp, fp, fn = _counts(cm)
    return _ratio_or_nan(2.0 * tp, 2.0 * tp + fp + fn)


def mean_iou_from_confusion(cm):
    """Mean IoU over the classes present in truth or prediction (0 if none).

    Args:
        cm: `[K, K]` confusion matrix.

    Returns:
        float64 scalar, equal to `keras.metrics.MeanIoU` on the same pixels.
    """
    return _nanmean(iou_from_confusion(cm))


def mean_dice_from_confusion(cm):
    """Mean Dice (F1) over the classes present in truth or prediction (0 if none).

    Args:
        cm: `[K, K]` confusion matrix.

    Returns:
        float64 scalar.
    """
    return _nanmean(dice_from_confusion(cm))


def pixel_accuracy_from_confusion(cm):
    """Fraction of counted pixels whose prediction is right (0 for an empty matrix).

    Args:
        cm: `[K, K]` confusion matrix.

    Returns:
        float64 scalar, trace(cm) / sum(cm).
    """
    tp, _, _ = _counts(cm)
    return tf.math.divide_no_nan(tf.reduce_sum(tp), tf.reduce_sum(tf.cast(cm, tf.float64)))
