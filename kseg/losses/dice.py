"""Multi-class soft Dice loss with an ignore label.

Shape shorthand: y_true int [B, H, W] (or [B, H, W, 1]); y_pred float [B, H, W, K];
probs/targets float [B, H, W, K]; per-class sums [B, K]; returns float32 [B].

Not built on `keras.losses.dice`: that function has no smoothing term (it adds
`backend.epsilon()` to the denominator only), takes no mask and, with the default
`axis`, pools all classes into one ratio. kseg needs the smoothed per-class ratio
averaged over classes, over counted pixels only, so the few lines are written here.
"""

import keras
import tensorflow as tf

from kseg.losses import _common


def _check_smooth(smooth):
    if not smooth >= 0:
        raise ValueError(f"`smooth` must be a float >= 0. Received: smooth={smooth!r}")
    return float(smooth)


def dice(y_true, y_pred, *, smooth=1.0, from_logits=True, ignore_class=None):
    """Soft Dice loss (Milletari et al., V-Net, 3DV 2016), averaged over classes.

    For each sample and class c, with p the softmax probabilities and t the one-hot
    targets, both zeroed at pixels that do not count:

        dice_c = (2 * sum(p_c * t_c) + smooth) / (sum(p_c) + sum(t_c) + smooth)
        loss   = 1 - mean_c dice_c

    All K classes enter the mean, including those absent from the sample: with
    `smooth > 0` an absent class scores `smooth / (sum(p_c) + smooth)`, which
    rewards predicting none of it. A class with zero denominator (only possible
    with `smooth=0`) scores 1, so a sample without counted pixels has loss 0.

    Args:
        y_true: int `[B, H, W]` or `[B, H, W, 1]` class ids.
        y_pred: float `[B, H, W, K]` logits, or probabilities if `from_logits=False`.
        smooth: float >= 0 added to numerator and denominator. Defaults to 1.0.
        from_logits: bool, defaults to True.
        ignore_class: optional int label to leave out.

    Returns:
        float `[B]`, per-sample loss in `[0, 1]`.

    Example:

    >>> import numpy as np
    >>> loss = dice(np.zeros([1, 1, 2]), np.zeros([1, 1, 2, 2]))
    >>> round(float(loss[0]), 4)  # 1 - ((2 + 1) / (3 + 1) + 1 / (1 + 1)) / 2
    0.375
    """
    smooth = _check_smooth(smooth)
    ignore_class = _common.check_ignore_class(ignore_class)
    labels, y_pred, valid, num_classes = _common.prepare(y_true, y_pred, ignore_class)
    probs = tf.nn.softmax(y_pred, axis=-1) if from_logits else y_pred
    keep = valid[..., None]
    probs = tf.where(keep > 0, probs, tf.zeros_like(probs))
    targets = tf.one_hot(labels, num_classes, dtype=probs.dtype) * keep
    intersection = tf.reduce_sum(probs * targets, axis=[1, 2])
    denominator = tf.reduce_sum(probs, axis=[1, 2]) + tf.reduce_sum(targets, axis=[1, 2]) + smooth
    nonzero = denominator > 0
    safe_denominator = tf.where(nonzero, denominator, tf.ones_like(denominator))
    per_class = tf.where(
        nonzero, (2.0 * intersection + smooth) / safe_denominator, tf.ones_like(denominator)
    )
    return 1.0 - tf.reduce_mean(per_class, axis=-1)


@keras.saving.register_keras_serializable(package="kseg")
class Dice(_common.SegmentationLoss):
    """Multi-class soft Dice loss with an ignore label; see `dice`.

    Args:
        smooth: float >= 0, defaults to 1.0.
        from_logits: bool, whether `y_pred` are logits. Defaults to True.
        ignore_class: optional int label that counts in no loss.
        reduction: Keras reduction over the per-sample losses `[B]`.
        name: loss name.
        dtype: loss dtype, defaults to `keras.backend.floatx()`.
    """

    fn = staticmethod(dice)

    def __init__(
        self,
        smooth=1.0,
        from_logits=True,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name="dice",
        dtype=None,
    ):
        super().__init__(
            name=name,
            reduction=reduction,
            dtype=dtype,
            smooth=_check_smooth(smooth),
            from_logits=bool(from_logits),
            ignore_class=_common.check_ignore_class(ignore_class),
        )
