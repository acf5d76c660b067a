"""Group normalization on rank-4 tensors only (Wu and He 2018).

    inputs   [B, H, W, C]        channels-last, C divisible by groups
    grouped  [B, H * W, G, C/G]  statistics over axes 1 and 3: one mean and variance per group
    outputs  [B, H, W, C]

`keras.layers.GroupNormalization` gives the same values through [B, H, W, G, C/G] tensors. In
TFLite a broadcast over five dimensions makes the converter write SUB at version 3, and LiteRT's
GPU accelerator takes SUB only up to version 2; as the model file holds one version per op type,
every SUB of the graph then falls back to the CPU. Grouping H and W first keeps every tensor at
rank 4. The weights (gamma, beta [C]) are keras.layers.GroupNormalization's, so a model saved with
that layer loads into this one.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kseg")
class GroupNormalization(keras.layers.GroupNormalization):
    """`keras.layers.GroupNormalization` for [B, H, W, C] inputs whose tensors stay at rank 4.

    Args:
        groups: G, dividing C.
        epsilon: added to the variance (1e-3, Keras' default).
        **kwargs: keras.layers.GroupNormalization's other arguments; `axis` must be -1.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(1, 4, 4, 8)).astype("float32")
        >>> bool(np.allclose(GroupNormalization(2)(x), keras.layers.GroupNormalization(2)(x), atol=1e-5))
        True
    """

    def __init__(self, groups=32, epsilon=1e-3, **kwargs):
        super().__init__(groups=groups, epsilon=epsilon, **kwargs)
        if self.axis not in (-1, 3):
            raise ValueError(f"GroupNormalization: axis={self.axis!r}, expected -1 (channels-last [B, H, W, C])")

    def call(self, inputs):
        height, width, channels = inputs.shape[1:]
        if len(inputs.shape) != 4 or None in (height, width, channels):
            raise ValueError(f"GroupNormalization: inputs of shape {inputs.shape}, expected [B, H, W, C] with static "
                             "H, W and C")
        # As in Keras' layer: statistics in float32 even under mixed precision.
        x = ops.cast(ops.reshape(inputs, (-1, height * width, self.groups, channels // self.groups)), "float32")
        mean, variance = ops.moments(x, axes=(1, 3), keepdims=True)  # [B, 1, G, 1]
        inv = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            inv = inv * ops.cast(ops.reshape(self.gamma, (1, 1, self.groups, -1)), "float32")
        shift = -mean * inv
        if self.center:
            shift = shift + ops.cast(ops.reshape(self.beta, (1, 1, self.groups, -1)), "float32")
        outputs = ops.reshape(x * inv + shift, (-1, height, width, channels))
        return ops.cast(outputs, self.compute_dtype)
