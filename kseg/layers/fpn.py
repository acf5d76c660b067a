"""Feature Pyramid Network (Lin et al. 2017) as one Keras layer.

    inputs   {"P2": [B, H/4, W/4, C2], ..., "P5": [B, H/32, W/32, C5]}  backbone features
    outputs  {"P2": [B, H/4, W/4, D], ..., "P5": ..., "P6": [B, H/64, W/64, D]}  D = channels

Each level: a 1x1 lateral conv to D channels, plus the level above upsampled x2 (nearest); a
3x3 conv smooths the sum. P6 is P5 max-pooled with stride 2 (Mask R-CNN's extra RPN level).
"""

import keras
from keras import layers

from kseg.layers.resize import NearestUpsampling2D


@keras.saving.register_keras_serializable(package="kseg")
class FPN(layers.Layer):
    """Top-down feature pyramid with lateral connections.

    Args:
        channels: D, the channels of every output level (256 in the paper).
        min_level, max_level: the input levels (2 and 5).
        extra_pool_level: add P{max_level + 1} by 1x1 max pooling with stride 2 (True).

    Example:
        >>> import numpy as np
        >>> fpn = FPN(channels=8)
        >>> out = fpn({f"P{n}": np.zeros((1, 64 // 2**n, 64 // 2**n, 4), "float32") for n in range(2, 6)})
        >>> sorted(out), tuple(out["P6"].shape)
        (['P2', 'P3', 'P4', 'P5', 'P6'], (1, 1, 1, 8))
    """

    def __init__(self, channels=256, min_level=2, max_level=5, extra_pool_level=True, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.min_level = min_level
        self.max_level = max_level
        self.extra_pool_level = extra_pool_level
        levels = range(min_level, max_level + 1)
        self.lateral = {f"P{n}": layers.Conv2D(channels, 1, name=f"lateral_P{n}") for n in levels}
        self.smooth = {f"P{n}": layers.Conv2D(channels, 3, padding="same", name=f"output_P{n}") for n in levels}
        self.upsample = NearestUpsampling2D(2, name="top_down")
        self.pool = layers.MaxPooling2D(1, strides=2, name=f"pool_P{max_level + 1}")

    def build(self, input_shape):
        for n in range(self.min_level, self.max_level + 1):
            self.lateral[f"P{n}"].build(input_shape[f"P{n}"])
            self.smooth[f"P{n}"].build(tuple(input_shape[f"P{n}"][:-1]) + (self.channels,))
        self.built = True

    def call(self, features):
        top_down = None
        outputs = {}
        for n in range(self.max_level, self.min_level - 1, -1):
            x = self.lateral[f"P{n}"](features[f"P{n}"])
            if top_down is not None:
                x = x + self.upsample(top_down)
            top_down = x
            outputs[f"P{n}"] = self.smooth[f"P{n}"](x)
        if self.extra_pool_level:
            outputs[f"P{self.max_level + 1}"] = self.pool(outputs[f"P{self.max_level}"])
        return outputs

    def compute_output_shape(self, input_shape):
        shapes = {k: tuple(v[:-1]) + (self.channels,) for k, v in input_shape.items()}
        if self.extra_pool_level:
            b, h, w, _ = shapes[f"P{self.max_level}"]
            half = lambda d: None if d is None else (d + 1) // 2  # noqa: E731
            shapes[f"P{self.max_level + 1}"] = (b, half(h), half(w), self.channels)
        return shapes

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "min_level": self.min_level,
                "max_level": self.max_level, "extra_pool_level": self.extra_pool_level}
