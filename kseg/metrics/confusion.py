"""Confusion-matrix metrics: mean IoU, mean Dice and pixel accuracy.

Shape shorthand (B batch, H height, W width, K classes):

    y_true   int    [B, H, W] or [B, H, W, 1]  class ids
    y_pred   float  [B, H, W, K]               logits or probabilities (argmax taken)
             int    [B, H, W]                  class ids, with `sparse_y_pred=True`
    cm       float64 [K, K]                    rows = truth, columns = prediction

Two front ends, one set of formulas (all in `kseg.ops.confusion`, shared, not copied):
`ConfusionMatrixMetric` and its scalar subclasses accumulate a float64 matrix (exact
up to 2^53 pixels) inside `fit`; `ConfusionMatrix` is the plain evaluator for
`kseg evaluate`, with an int64 NumPy matrix counted by the same TF op run eagerly.
Both report through `confusion_summary`. Pixels whose truth is `ignore_class` or
outside `[0, K)` are dropped (a metric cannot raise in graph code).
"""

import keras
import numpy as np
import tensorflow as tf

from kseg.ops import confusion as confusion_ops


def _class_ids(y_true, y_pred, sparse_y_pred):
    """Truth and predicted ids of equal rank: argmax of `[B, H, W, K]` scores unless
    `sparse_y_pred`; a trailing axis of size 1 is squeezed from either."""
    y_pred = tf.convert_to_tensor(y_pred)
    if not sparse_y_pred:
        y_pred = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
    y_true = tf.convert_to_tensor(y_true)
    if y_true.shape.rank == y_pred.shape.rank + 1 and y_true.shape[-1] == 1:
        y_true = tf.squeeze(y_true, axis=-1)
    if y_pred.shape.rank == y_true.shape.rank + 1 and y_pred.shape[-1] == 1:
        y_pred = tf.squeeze(y_pred, axis=-1)
    return y_true, y_pred


def _check_args(num_classes, ignore_class):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"`num_classes` must be an int >= 1. Received: num_classes={num_classes!r}"
        )
    if ignore_class is not None and (
        isinstance(ignore_class, bool) or not hasattr(ignore_class, "__index__")
    ):
        raise ValueError(
            f"`ignore_class` must be an int or None. Received: ignore_class={ignore_class!r}"
        )
    return None if ignore_class is None else int(ignore_class)


def _py_number(value):
    value = float(value)
    return None if np.isnan(value) else value


def confusion_summary(cm, class_names=None):
    """Scores of a confusion matrix as a JSON-ready dict (the `kseg evaluate` report).

    Args:
        cm: `[K, K]` array-like, rows = truth, columns = prediction.
        class_names: optional list of K names; defaults to `"0"`, `"1"`, ...

    Returns:
        dict with `mean_iou`, `mean_dice`, `pixel_accuracy`, `num_pixels`,
        `confusion_matrix` (list of K lists) and `per_class`: a list of K dicts
        `{id, name, iou, dice, pixels, pred_pixels}` (`pixels`: truth pixels).
        Scores of a class absent from truth and prediction are None (JSON null);
        counts are ints when the matrix is integral (no fractional sample weights).
    """
    cm = np.asarray(cm, np.float64)
    num_classes = cm.shape[0]
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` must have {num_classes} entries (one per class). "
            f"Received {len(class_names)}: class_names={list(class_names)}"
        )
    count = int if np.array_equal(cm, np.round(cm)) else float
    iou = confusion_ops.iou_from_confusion(cm).numpy()
    dice = confusion_ops.dice_from_confusion(cm).numpy()
    true_pixels, pred_pixels = cm.sum(axis=1), cm.sum(axis=0)
    per_class = [
        {
            "id": c,
            "name": str(class_names[c]),
            "iou": _py_number(iou[c]),
            "dice": _py_number(dice[c]),
            "pixels": count(true_pixels[c]),
            "pred_pixels": count(pred_pixels[c]),
        }
        for c in range(num_classes)
    ]
    return {
        "mean_iou": float(confusion_ops.mean_iou_from_confusion(cm)),
        "mean_dice": float(confusion_ops.mean_dice_from_confusion(cm)),
        "pixel_accuracy": float(confusion_ops.pixel_accuracy_from_confusion(cm)),
        "num_pixels": count(cm.sum()),
        "per_class": per_class,
        "confusion_matrix": [[count(v) for v in row] for row in cm],
    }


class _ConfusionScores:
    """Eager NumPy scores of an accumulated matrix; the class provides `confusion()`."""

    def per_class_iou(self):
        """NumPy float64 `[K]` IoU, NaN for absent classes."""
        return confusion_ops.iou_from_confusion(self.confusion()).numpy()

    def per_class_dice(self):
        """NumPy float64 `[K]` Dice (F1), NaN for absent classes."""
        return confusion_ops.dice_from_confusion(self.confusion()).numpy()

    def pixel_accuracy(self):
        """Python float, fraction of counted pixels predicted right."""
        return float(confusion_ops.pixel_accuracy_from_confusion(self.confusion()))

    def summary(self, class_names=None):
        """`confusion_summary` of the accumulated matrix."""
        return confusion_summary(self.confusion(), class_names)


@keras.saving.register_keras_serializable(package="kseg")
class ConfusionMatrixMetric(_ConfusionScores, keras.metrics.Metric):
    """Streaming `[K, K]` confusion matrix of a segmentation, with an ignore label.

    `result()` is the float64 confusion matrix; in `compile(metrics=...)` use the
    scalar subclasses `MeanIoU`, `MeanDice` and `PixelAccuracy`. Eagerly, the
    methods below return NumPy values of everything accumulated so far.

    Args:
        num_classes: int K.
        ignore_class: optional int truth label that counts nowhere (e.g. 255).
        sparse_y_pred: bool; False (default) takes `[B, H, W, K]` logits or
            probabilities and their argmax, True takes class ids `[B, H, W]`.
        name: metric name.
        dtype: dtype of the scalar results; the matrix itself is always float64.

    Example:

    >>> metric = ConfusionMatrixMetric(num_classes=2, ignore_class=255, sparse_y_pred=True)
    >>> metric.update_state([[[0, 1, 255]]], [[[0, 0, 1]]])
    >>> metric.confusion().tolist()
    [[1.0, 0.0], [1.0, 0.0]]
    """

    def __init__(
        self, num_classes, ignore_class=None, sparse_y_pred=False, name=None, dtype=None
    ):
        super().__init__(name=name, dtype=dtype)
        self.ignore_class = _check_args(num_classes, ignore_class)
        self.num_classes = num_classes
        self.sparse_y_pred = bool(sparse_y_pred)
        self.total_cm = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype="float64",
            name="total_cm",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch to the matrix.

        Args:
            y_true: int `[B, H, W]` or `[B, H, W, 1]` class ids.
            y_pred: float `[B, H, W, K]`, or int `[B, H, W]` ids if `sparse_y_pred`.
            sample_weight: optional weights `[B]`, `[B, H, W]` or `[B, H, W, 1]`.
        """
        y_true, y_pred = _class_ids(y_true, y_pred, self.sparse_y_pred)
        cm = confusion_ops.confusion_matrix(
            y_true, y_pred, self.num_classes, self.ignore_class, sample_weight, tf.float64
        )
        self.total_cm.assign_add(cm)

    def reset_state(self):
        self.total_cm.assign(tf.zeros((self.num_classes, self.num_classes), tf.float64))

    def result(self):
        return tf.convert_to_tensor(self.total_cm)

    def confusion(self):
        """NumPy float64 `[K, K]`, rows = truth, columns = prediction (eager only)."""
        return keras.ops.convert_to_numpy(self.total_cm)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "ignore_class": self.ignore_class,
                "sparse_y_pred": self.sparse_y_pred,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kseg")
class MeanIoU(ConfusionMatrixMetric):
    """Mean intersection over union over the classes present (same as `keras.metrics.MeanIoU`).

    Args: see `ConfusionMatrixMetric`; `name` defaults to `"mean_iou"`.
    """

    def __init__(
        self, num_classes, ignore_class=None, sparse_y_pred=False, name="mean_iou", dtype=None
    ):
        super().__init__(num_classes, ignore_class, sparse_y_pred, name=name, dtype=dtype)

    def result(self):
        return tf.cast(confusion_ops.mean_iou_from_confusion(self.total_cm), self.dtype)


@keras.saving.register_keras_serializable(package="kseg")
class MeanDice(ConfusionMatrixMetric):
    """Mean Dice (F1) over the classes present, from the confusion matrix.

    Args: see `ConfusionMatrixMetric`; `name` defaults to `"mean_dice"`.
    """

    def __init__(
        self, num_classes, ignore_class=None, sparse_y_pred=False, name="mean_dice", dtype=None
    ):
        super().__init__(num_classes, ignore_class, sparse_y_pred, name=name, dtype=dtype)

    def result(self):
        return tf.cast(confusion_ops.mean_dice_from_confusion(self.total_cm), self.dtype)


@keras.saving.register_keras_serializable(package="kseg")
class PixelAccuracy(ConfusionMatrixMetric):
    """Fraction of counted pixels predicted right.

    Args: see `ConfusionMatrixMetric`; `name` defaults to `"pixel_accuracy"`.
    """

    def __init__(
        self,
        num_classes,
        ignore_class=None,
        sparse_y_pred=False,
        name="pixel_accuracy",
        dtype=None,
    ):
        super().__init__(num_classes, ignore_class, sparse_y_pred, name=name, dtype=dtype)

    def result(self):
        return tf.cast(confusion_ops.pixel_accuracy_from_confusion(self.total_cm), self.dtype)


class ConfusionMatrix(_ConfusionScores):
    """Plain streaming confusion matrix for evaluation loops (`kseg evaluate`).

    Holds an exact int64 NumPy `[K, K]` matrix (rows = truth, columns = prediction),
    counted by `kseg.ops.confusion.confusion_matrix` run eagerly, and reports
    through `confusion_summary`: the same formulas as the Keras metrics.

    Args:
        num_classes: int K.
        ignore_class: optional int truth label that counts nowhere (e.g. 255).
        sparse_y_pred: bool; True (default) takes predicted class ids `[B, H, W]`,
            False takes `[B, H, W, K]` logits or probabilities and their argmax.

    Example:

    >>> matrix = ConfusionMatrix(num_classes=2, ignore_class=255)
    >>> matrix.update([[[0, 1, 255]]], [[[0, 0, 1]]])
    >>> matrix.matrix.tolist(), matrix.summary()["pixel_accuracy"]
    ([[1, 0], [1, 0]], 0.5)
    """

    def __init__(self, num_classes, ignore_class=None, sparse_y_pred=True):
        self.ignore_class = _check_args(num_classes, ignore_class)
        self.num_classes = num_classes
        self.sparse_y_pred = bool(sparse_y_pred)
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, y_true, y_pred):
        """Adds a batch: `y_true` int `[B, H, W]` (or `[B, H, W, 1]`), `y_pred` as set up."""
        y_true, y_pred = _class_ids(y_true, y_pred, self.sparse_y_pred)
        cm = confusion_ops.confusion_matrix(
            y_true, y_pred, self.num_classes, self.ignore_class, dtype=tf.int64
        )
        self.matrix += cm.numpy()

    def reset(self):
        self.matrix[...] = 0

    def confusion(self):
        """The int64 `[K, K]` matrix, rows = truth, columns = prediction."""
        return self.matrix
