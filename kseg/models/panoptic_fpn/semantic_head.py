"""Panoptic FPN's semantic segmentation branch (Kirillov et al. 2019, section 3.1).

    P{n}      [B, H / 2^n, W / 2^n, D]   FPN levels n = 2..5
    logits    [B, H, W, C]               C = stuff classes + 1 ("thing / other")

Each level goes through conv 3x3 + GroupNorm + ReLU stages, each followed by a bilinear x2
upsampling, until it reaches 1/4 scale (P2: one stage, no upsampling; P5: three stages). The
four maps are summed, a 1x1 conv gives C logits at 1/4 scale, and a x4 bilinear upsampling
brings them to the image.

GroupNorm is kseg's rank-4 layer (kseg.layers.group_normalization), which LiteRT's GPU
accelerator takes; it holds the same weights as Keras' layer, so older files load.
"""

import keras
from keras import layers

from kseg.layers.group_normalization import GroupNormalization


@keras.saving.register_keras_serializable(package="kseg")
class SemanticHead(layers.Layer):
    """Args:
        num_classes: C, the stuff classes plus one class for all things.
        channels: width of the stages (128 in the paper).
        groups: GroupNorm groups (32).
        min_level, max_level: the pyramid levels used (2..5).

    Example:
        >>> import numpy as np
        >>> head = SemanticHead(num_classes=4, channels=8, groups=4)
        >>> out = head({f"P{n}": np.zeros((1, 64 // 2**n, 64 // 2**n, 8), "float32") for n in range(2, 6)})
        >>> tuple(out.shape)
        (1, 64, 64, 4)
    """

    def __init__(self, num_classes, channels=128, groups=32, min_level=2, max_level=5, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.channels = channels
        self.groups = groups
        self.min_level = min_level
        self.max_level = max_level
        self.convs, self.norms = {}, {}
        for n in range(min_level, max_level + 1):
            count = max(1, n - min_level)
            self.convs[f"P{n}"] = [layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"P{n}_conv{i}")
                                   for i in range(count)]
            self.norms[f"P{n}"] = [GroupNormalization(min(groups, channels), name=f"P{n}_gn{i}")
                                   for i in range(count)]
        self.up2 = layers.UpSampling2D(2, interpolation="bilinear", name="up2")
        self.classifier = layers.Conv2D(num_classes, 1, name="classifier")
        self.up4 = layers.UpSampling2D(2 ** min_level, interpolation="bilinear", name="to_image")

    def build(self, input_shape):
        for n in range(self.min_level, self.max_level + 1):
            shape = tuple(input_shape[f"P{n}"])
            for conv, norm in zip(self.convs[f"P{n}"], self.norms[f"P{n}"]):
                conv.build(shape)
                shape = shape[:-1] + (self.channels,)
                norm.build(shape)
        self.classifier.build((None, None, None, self.channels))
        self.built = True

    def call(self, features, training=None):
        total = None
        for n in range(self.min_level, self.max_level + 1):
            x = features[f"P{n}"]
            for conv, norm in zip(self.convs[f"P{n}"], self.norms[f"P{n}"]):
                x = keras.ops.relu(norm(conv(x), training=training))
                if n > self.min_level:
                    x = self.up2(x)
            total = x if total is None else total + x
        return self.up4(self.classifier(total))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "channels": self.channels,
                "groups": self.groups, "min_level": self.min_level, "max_level": self.max_level}
