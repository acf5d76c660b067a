"""Input handling shared by the kseg losses.

Shape shorthand (B batch, H height, W width, K classes):

    y_true   int    [B, H, W] or [B, H, W, 1]  class ids
    y_pred   float  [B, H, W, K]               logits (from_logits=True) or probabilities
    labels   int32  [B, H, W]                  y_true with non-counted pixels set to 0
    valid    float  [B, H, W]                  1.0 where a pixel counts, else 0.0

A pixel counts unless its label is `ignore_class` or outside `[0, K)` (see
`kseg.ops.confusion`). Every loss is reduced per sample: the mean over that
sample's counted pixels, 0 for a sample with none.
"""

import keras
import tensorflow as tf

from kseg.ops import confusion as confusion_ops


def check_ignore_class(ignore_class):
    """Returns `ignore_class` as a Python int (or None); raises on anything else."""
    if ignore_class is None:
        return None
    if isinstance(ignore_class, bool) or not hasattr(ignore_class, "__index__"):
        raise ValueError(
            f"`ignore_class` must be an int or None. Received: ignore_class={ignore_class!r}"
        )
    return int(ignore_class)


def check_per_class(values, name, num_classes):
    """Raises unless the per-class list `values` has K entries."""
    if len(values) != num_classes:
        raise ValueError(
            f"`{name}` must have one entry per class: expected {num_classes} (the last "
            f"dimension of y_pred), received {len(values)}: {name}={list(values)}"
        )


def prepare(y_true, y_pred, ignore_class):
    """Validates shapes and splits out the counted pixels.

    Args:
        y_true: int (or integral float) `[B, H, W]` or `[B, H, W, 1]` class ids.
        y_pred: float `[B, H, W, K]`, K static.
        ignore_class: optional int.

    Returns:
        `(labels, y_pred, valid, num_classes)`: int32 `[B, H, W]` safe labels,
        float32 (or float64) `[B, H, W, K]`, float `[B, H, W]` mask, int K.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    if not y_pred.dtype.is_floating:
        raise ValueError(
            f"`y_pred` must be float logits or probabilities. Received dtype: {y_pred.dtype}"
        )
    if y_pred.dtype != tf.float64:
        y_pred = tf.cast(y_pred, tf.float32)  # float16/bfloat16 outputs: compute in float32
    if y_pred.shape.rank != 4 or y_pred.shape[-1] is None:
        raise ValueError(
            f"`y_pred` must be [B, H, W, K] with a known K. Received: y_pred.shape={y_pred.shape}"
        )
    y_true = tf.convert_to_tensor(y_true)
    if y_true.shape.rank == 4 and y_true.shape[-1] == 1:
        y_true = tf.squeeze(y_true, axis=-1)
    if y_true.shape.rank != 3:
        raise ValueError(
            "`y_true` must be [B, H, W] or [B, H, W, 1] class ids. "
            f"Received: y_true.shape={y_true.shape}"
        )
    if not y_true.shape[1:].is_compatible_with(y_pred.shape[1:3]):
        raise ValueError(
            "`y_true` and `y_pred` must have the same H and W. Received: "
            f"y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
    num_classes = int(y_pred.shape[-1])
    y_true = tf.cast(y_true, tf.int32)
    valid = confusion_ops.valid_mask(y_true, num_classes, ignore_class)
    labels = tf.where(valid, y_true, tf.zeros_like(y_true))
    return labels, y_pred, tf.cast(valid, y_pred.dtype), num_classes


def per_sample_mean(values, weights):
    """Weighted mean over H and W: `[B, H, W]` values and weights -> `[B]`, 0 if no weight."""
    values = tf.where(weights > 0, values, tf.zeros_like(values))
    numerator = tf.reduce_sum(values * weights, axis=[1, 2])
    return tf.math.divide_no_nan(numerator, tf.reduce_sum(weights, axis=[1, 2]))


class SegmentationLoss(keras.losses.Loss):
    """Base of the kseg loss classes: a Keras `Loss` around one loss function.

    A subclass names its function in `fn` and passes its validated keyword arguments to
    `__init__`; each becomes an attribute of the same name, `call` forwards them to `fn`
    and `get_config` returns them, so a loss is written once, as a function.
    """

    fn = None

    def __init__(self, *, name, reduction, dtype, **fn_kwargs):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.fn_kwargs = fn_kwargs
        for key, value in fn_kwargs.items():
            setattr(self, key, value)

    def call(self, y_true, y_pred):
        return type(self).fn(y_true, y_pred, **self.fn_kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(self.fn_kwargs)
        return config
