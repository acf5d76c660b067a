"""Softmax cross-entropy for segmentation, plain and class-weighted, with an ignore label.

Shape shorthand: y_true int [B, H, W] (or [B, H, W, 1]); y_pred float [B, H, W, K];
every function returns float32 [B], the loss of each sample (see `kseg.losses._common`).
"""

import keras
import tensorflow as tf

from kseg.losses import _common


def pixel_cross_entropy(labels, y_pred, from_logits):
    """Per-pixel CE `[B, H, W]` from in-range int labels, via `keras.losses`."""
    return keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=from_logits)


def sparse_cross_entropy(y_true, y_pred, *, from_logits=True, ignore_class=None):
    """Softmax cross-entropy, averaged over each sample's counted pixels.

    `keras.losses.sparse_categorical_crossentropy` per pixel; pixels labelled
    `ignore_class` (or outside `[0, K)`) are dropped before the mean, so a sample's
    loss equals the mean CE of its remaining pixels, and 0 when none remain.

    Args:
        y_true: int `[B, H, W]` or `[B, H, W, 1]` class ids.
        y_pred: float `[B, H, W, K]` logits, or probabilities if `from_logits=False`.
        from_logits: bool, defaults to True.
        ignore_class: optional int label to leave out (e.g. 255, CamVid void 11).

    Returns:
        float `[B]`, per-sample loss.

    Example:

    >>> import numpy as np
    >>> loss = sparse_cross_entropy(np.zeros([1, 1, 2]), np.zeros([1, 1, 2, 2]))
    >>> round(float(loss[0]), 4)  # log(2)
    0.6931
    """
    ignore_class = _common.check_ignore_class(ignore_class)
    labels, y_pred, valid, _ = _common.prepare(y_true, y_pred, ignore_class)
    return _common.per_sample_mean(pixel_cross_entropy(labels, y_pred, from_logits), valid)


def weighted_cross_entropy(y_true, y_pred, *, class_weights, from_logits=True, ignore_class=None):
    """Class-weighted softmax cross-entropy, the weighted mean over counted pixels.

    Per sample, `sum_i w[y_i] * ce_i / sum_i w[y_i]` over the counted pixels i: the
    normalisation of PyTorch's `CrossEntropyLoss(weight=...)` with `reduction="mean"`,
    so that scaling all weights leaves the loss unchanged. A sample whose counted
    pixels all have weight 0 (or that has none) has loss 0. Weights typically come
    from `median_frequency_weights` (Eigen & Fergus, ICCV 2015).

    Args:
        y_true: int `[B, H, W]` or `[B, H, W, 1]` class ids.
        y_pred: float `[B, H, W, K]` logits, or probabilities if `from_logits=False`.
        class_weights: K non-negative floats, one per class.
        from_logits: bool, defaults to True.
        ignore_class: optional int label to leave out.

    Returns:
        float `[B]`, per-sample loss.
    """
    ignore_class = _common.check_ignore_class(ignore_class)
    labels, y_pred, valid, num_classes = _common.prepare(y_true, y_pred, ignore_class)
    _common.check_per_class(class_weights, "class_weights", num_classes)
    weights = tf.gather(tf.constant(class_weights, y_pred.dtype), labels) * valid
    return _common.per_sample_mean(pixel_cross_entropy(labels, y_pred, from_logits), weights)


@keras.saving.register_keras_serializable(package="kseg")
class SparseCrossEntropy(_common.SegmentationLoss):
    """Softmax cross-entropy with an ignore label; see `sparse_cross_entropy`.

    Args:
        from_logits: bool, whether `y_pred` are logits. Defaults to True.
        ignore_class: optional int label that counts in no loss.
        reduction: Keras reduction over the per-sample losses `[B]`; defaults to
            `"sum_over_batch_size"` (the mean over the batch). `sample_weight`, if
            given, is one weight per sample `[B]`.
        name: loss name.
        dtype: loss dtype, defaults to `keras.backend.floatx()`.
    """

    fn = staticmethod(sparse_cross_entropy)

    def __init__(
        self,
        from_logits=True,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name="sparse_cross_entropy",
        dtype=None,
    ):
        super().__init__(
            name=name,
            reduction=reduction,
            dtype=dtype,
            from_logits=bool(from_logits),
            ignore_class=_common.check_ignore_class(ignore_class),
        )



@keras.saving.register_keras_serializable(package="kseg")
class WeightedCrossEntropy(_common.SegmentationLoss):
    """Class-weighted softmax cross-entropy; see `weighted_cross_entropy`.

    Args:
        class_weights: K non-negative floats, one per class.
        from_logits: bool, whether `y_pred` are logits. Defaults to True.
        ignore_class: optional int label that counts in no loss.
        reduction: Keras reduction over the per-sample losses `[B]`.
        name: loss name.
        dtype: loss dtype, defaults to `keras.backend.floatx()`.
    """

    fn = staticmethod(weighted_cross_entropy)

    def __init__(
        self,
        class_weights,
        from_logits=True,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name="weighted_cross_entropy",
        dtype=None,
    ):
        class_weights = [float(w) for w in class_weights]
        if not class_weights or min(class_weights) < 0:
            raise ValueError(
                "`class_weights` must be a non-empty list of non-negative floats. "
                f"Received: class_weights={class_weights}"
            )
        super().__init__(
            name=name,
            reduction=reduction,
            dtype=dtype,
            class_weights=class_weights,
            from_logits=bool(from_logits),
            ignore_class=_common.check_ignore_class(ignore_class),
        )
