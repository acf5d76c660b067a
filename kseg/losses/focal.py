"""Multi-class softmax focal loss with an ignore label.

Shape shorthand: y_true int [B, H, W] (or [B, H, W, 1]); y_pred float [B, H, W, K];
ce, modulating factor [B, H, W]; returns float32 [B].

Not built on `keras.losses.categorical_focal_crossentropy`: it takes one-hot targets,
a scalar `alpha` only, and clips softmax probabilities to `[eps, 1 - eps]`, so with
`gamma=0` it does not equal cross-entropy for confident logits and its gradient
vanishes there. Here the focal term is written on top of the exact per-pixel CE of
`keras.losses.sparse_categorical_crossentropy`, using `p_t = exp(-ce)`.
"""

import keras
import numpy as np
import tensorflow as tf

from kseg.losses import _common
from kseg.losses.cross_entropy import pixel_cross_entropy


def _check_gamma(gamma):
    if not gamma >= 0:
        raise ValueError(f"`gamma` must be a float >= 0. Received: gamma={gamma!r}")
    return float(gamma)


def _check_alpha(alpha):
    if alpha is None:
        return None
    scalar = np.ndim(alpha) == 0
    values = [float(alpha)] if scalar else [float(a) for a in alpha]
    if not values or min(values) < 0:
        raise ValueError(
            "`alpha` must be None, a float >= 0 or a list of K floats >= 0. "
            f"Received: alpha={alpha!r}"
        )
    return values[0] if scalar else values


def focal(y_true, y_pred, *, gamma=2.0, alpha=None, from_logits=True, ignore_class=None):
    """Softmax focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

    Per pixel, with `p_t` the probability of the true class,
    `FL = -alpha_t * (1 - p_t) ** gamma * log(p_t)`; per sample, the plain mean of
    FL over the counted pixels (not normalised by alpha). `gamma=0` and
    `alpha=None` give exactly `sparse_cross_entropy`.

    Args:
        y_true: int `[B, H, W]` or `[B, H, W, 1]` class ids.
        y_pred: float `[B, H, W, K]` logits, or probabilities if `from_logits=False`.
        gamma: float >= 0, focusing parameter. Defaults to 2.0.
        alpha: None (no weighting, the default), a float applied to every pixel, or
            K floats, `alpha_t = alpha[y]`.
        from_logits: bool, defaults to True.
        ignore_class: optional int label to leave out.

    Returns:
        float `[B]`, per-sample loss.

    Example:

    >>> import numpy as np
    >>> loss = focal(np.zeros([1, 1, 2]), np.zeros([1, 1, 2, 2]))
    >>> round(float(loss[0]), 4)  # 0.5 ** 2 * log(2)
    0.1733
    """
    gamma = _check_gamma(gamma)
    alpha = _check_alpha(alpha)
    ignore_class = _common.check_ignore_class(ignore_class)
    labels, y_pred, valid, num_classes = _common.prepare(y_true, y_pred, ignore_class)
    ce = pixel_cross_entropy(labels, y_pred, from_logits)
    # 1 - p_t, floored so that d/dp (1 - p_t) ** gamma stays finite when p_t rounds to 1.
    one_minus_p = tf.maximum(-tf.math.expm1(-ce), 1e-12)
    loss = tf.pow(one_minus_p, gamma) * ce
    if isinstance(alpha, list):
        _common.check_per_class(alpha, "alpha", num_classes)
        loss = loss * tf.gather(tf.constant(alpha, loss.dtype), labels)
    elif alpha is not None:
        loss = loss * alpha
    return _common.per_sample_mean(loss, valid)


@keras.saving.register_keras_serializable(package="kseg")
class Focal(_common.SegmentationLoss):
    """Multi-class softmax focal loss with an ignore label; see `focal`.

    Args:
        gamma: float >= 0, defaults to 2.0.
        alpha: None, a float, or K floats. Defaults to None.
        from_logits: bool, whether `y_pred` are logits. Defaults to True.
        ignore_class: optional int label that counts in no loss.
        reduction: Keras reduction over the per-sample losses `[B]`.
        name: loss name.
        dtype: loss dtype, defaults to `keras.backend.floatx()`.
    """

    fn = staticmethod(focal)

    def __init__(
        self,
        gamma=2.0,
        alpha=None,
        from_logits=True,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name="focal",
        dtype=None,
    ):
        super().__init__(
            name=name,
            reduction=reduction,
            dtype=dtype,
            gamma=_check_gamma(gamma),
            alpha=_check_alpha(alpha),
            from_logits=bool(from_logits),
            ignore_class=_common.check_ignore_class(ignore_class),
        )
