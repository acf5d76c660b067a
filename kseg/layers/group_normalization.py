"""Group normalization on rank-4 tensors only (Wu and He 2018).

    inputs   [B, H, W, C]        channels-last, C divisible by groups
    moments  [B, 1, 1, C]        per-channel means over H and W, averaged over each group's
                                 channels: one mean and variance per group, on its channels
    outputs  [B, H, W, C]

`keras.layers.GroupNormalization` gives the same values through [B, H, W, G, C/G] tensors. In
TFLite a broadcast over five dimensions makes the converter write SUB at version 3, and LiteRT's
GPU accelerator takes SUB only up to version 2; as the model file holds one version per op type,
SUBs it takes elsewhere in the graph then fall back to the CPU. Here every tensor stays at rank
4, and the big reductions are means over H and W, which XNNPACK runs (a mean over axes 1 and 3
of [B, H * W, G, C/G] runs on TFLite's reference kernel). The weights (gamma, beta [C]) are
keras.layers.GroupNormalization's, so a model saved with that layer loads into this one.
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
        if len(inputs.shape) != 4 or None in tuple(inputs.shape[1:]):
            raise ValueError(f"GroupNormalization: inputs of shape {inputs.shape}, expected [B, H, W, C] with static "
                             "H, W and C")
        channels = inputs.shape[-1]
        # As in Keras' layer: statistics in float32 even under mixed precision.
        x = ops.cast(inputs, "float32")
        mean = self._group_mean(ops.mean(x, axis=(1, 2), keepdims=True))  # [B, 1, 1, C]
        centred = x - mean  # SUB and MUL, which XNNPACK runs in int8 too (not SQUARED_DIFFERENCE)
        variance = self._group_mean(ops.mean(centred * centred, axis=(1, 2), keepdims=True))
        inv = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            inv = inv * ops.cast(ops.reshape(self.gamma, (1, 1, 1, channels)), "float32")
        shift = -mean * inv
        if self.center:
            shift = shift + ops.cast(ops.reshape(self.beta, (1, 1, 1, channels)), "float32")
        return ops.cast(x * inv + shift, self.compute_dtype)

    def _group_mean(self, channel_means):
        """[B, 1, 1, C] per-channel means -> their mean over each group, repeated on its channels.

        Every channel has H * W values, so the mean of a group's channel means is the group's mean.
        """
        channels = channel_means.shape[-1]
        size = channels // self.groups
        grouped = ops.mean(ops.reshape(channel_means, (-1, 1, self.groups, size)), axis=3, keepdims=True)
        return ops.reshape(grouped * ops.ones((1, 1, 1, size), "float32"), (-1, 1, 1, channels))
