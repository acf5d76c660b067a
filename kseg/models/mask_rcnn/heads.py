"""The three heads of Mask R-CNN (He et al. 2017), as Keras layers.

    P{n}        [B, H_n, W_n, D]        FPN level n (D = FPN channels), n = 2..6
    A           anchors per location (aspect ratios x scales)
    rois        [B, N, S, S, D]         ROI-aligned features (S = 7 for boxes, 14 for masks)
    K           object classes, not counting the background (class 0)
"""

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="kseg")
class RPNHead(layers.Layer):
    """Region proposal head shared over the pyramid: a 3x3 conv, then objectness and box deltas.

    Args:
        num_anchors: A, anchors per feature-map location.
        channels: channels of the shared 3x3 conv (the FPN's D).

    Call: {"P2": ..., "P6": ...} -> (objectness logits [B, total], deltas [B, total, 4]); the
    anchors of each level in (y, x, anchor) order, levels concatenated P2 first, which is the
    order of `kseg.ops.boxes.anchor_boxes`.
    """

    def __init__(self, num_anchors=3, channels=256, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        self.channels = channels
        self.conv = layers.Conv2D(channels, 3, padding="same", activation="relu", name="conv")
        self.objectness = layers.Conv2D(num_anchors, 1, name="objectness")
        self.deltas = layers.Conv2D(4 * num_anchors, 1, name="deltas",
                                    kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def build(self, input_shape):
        shape = tuple(next(iter(input_shape.values())))
        self.conv.build(shape)
        self.objectness.build(shape[:-1] + (self.channels,))
        self.deltas.build(shape[:-1] + (self.channels,))
        self.built = True

    def call(self, features):
        logits, deltas = [], []
        for key in sorted(features, key=lambda k: int(k[1:])):
            x = self.conv(features[key])
            batch = ops.shape(x)[0]
            logits.append(ops.reshape(self.objectness(x), (batch, -1)))
            deltas.append(ops.reshape(self.deltas(x), (batch, -1, 4)))
        return ops.concatenate(logits, axis=1), ops.concatenate(deltas, axis=1)

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors, "channels": self.channels}


@keras.saving.register_keras_serializable(package="kseg")
class BoxHead(layers.Layer):
    """Two fully connected layers, then class scores and class-specific box refinements.

    Args:
        num_classes: K (the background is added as class 0).
        fc_dim: width of the two hidden layers (1024 in the paper).

    Call: rois [B, N, 7, 7, D] -> (class logits [B, N, K + 1], deltas [B, N, K, 4]); deltas are
    encoded with weights (10, 10, 5, 5) against the ROI.
    """

    def __init__(self, num_classes, fc_dim=1024, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.fc_dim = fc_dim
        self.fc1 = layers.Dense(fc_dim, activation="relu", name="fc1")
        self.fc2 = layers.Dense(fc_dim, activation="relu", name="fc2")
        self.classifier = layers.Dense(num_classes + 1, name="class_logits",
                                       kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.regressor = layers.Dense(4 * num_classes, name="box_deltas",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def build(self, input_shape):
        flat = int(input_shape[2]) * int(input_shape[3]) * int(input_shape[4])
        self.fc1.build((None, flat))
        self.fc2.build((None, self.fc_dim))
        self.classifier.build((None, self.fc_dim))
        self.regressor.build((None, self.fc_dim))
        self.built = True

    def call(self, rois):
        batch, count = ops.shape(rois)[0], ops.shape(rois)[1]
        flat = int(rois.shape[2]) * int(rois.shape[3]) * int(rois.shape[4])
        x = self.fc2(self.fc1(ops.reshape(rois, (batch * count, flat))))
        logits = ops.reshape(self.classifier(x), (batch, count, self.num_classes + 1))
        deltas = ops.reshape(self.regressor(x), (batch, count, self.num_classes, 4))
        return logits, deltas

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "fc_dim": self.fc_dim}


@keras.saving.register_keras_serializable(package="kseg")
class MaskHead(layers.Layer):
    """The paper's mask head: four 3x3 convs, a 2x2 transposed conv (x2), a 1x1 conv per class.

    Args:
        num_classes: K.
        channels: width of the convs (256 in the paper).
        num_convs: the 3x3 convs (4).

    Call: rois [B, N, 14, 14, D] -> per-class mask logits [B, N, 28, 28, K].
    """

    def __init__(self, num_classes, channels=256, num_convs=4, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        self.convs = [layers.Conv2D(channels, 3, padding="same", activation="relu", name=f"conv{i + 1}")
                      for i in range(num_convs)]
        self.upsample = layers.Conv2DTranspose(channels, 2, strides=2, activation="relu", name="upsample")
        self.predictor = layers.Conv2D(num_classes, 1, name="mask_logits")

    def build(self, input_shape):
        size, depth = int(input_shape[2]), int(input_shape[4])
        shape = (None, size, size, depth)
        for conv in self.convs:
            conv.build(shape)
            shape = (None, size, size, self.channels)
        self.upsample.build(shape)
        self.predictor.build((None, 2 * size, 2 * size, self.channels))
        self.built = True

    def call(self, rois, training=None):
        batch, count = ops.shape(rois)[0], ops.shape(rois)[1]
        size, depth = int(rois.shape[2]), int(rois.shape[4])
        x = ops.reshape(rois, (batch * count, size, size, depth))
        for conv in self.convs:
            x = conv(x)
        x = self.upsample(x) if training else self._upsample_by_depth_to_space(x)
        x = self.predictor(x)
        return ops.reshape(x, (batch, count, 2 * size, 2 * size, self.num_classes))

    def _upsample_by_depth_to_space(self, x):
        """`self.upsample` (2x2 kernel, stride 2, ReLU) with its own weights, as a 1x1 conv to
        4 x channels whose outputs are moved to their pixels (a depth-to-space through rank-4
        RESHAPE / TRANSPOSE): every output pixel reads one input pixel, so it is the same sum.
        Inference and export use it: TFLite fuses the ReLU into a TRANSPOSE_CONV (version 4),
        which LiteRT's GPU accelerator refuses, and its WebGPU DEPTH_TO_SPACE computed wrong
        values here.

        Args:
            x: [M, S, S, C_in].

        Returns:
            [M, 2S, 2S, C]: y[2i + dy, 2j + dx, o] = relu(sum_c x[i, j, c] kernel[dy, dx, o, c] + bias[o]).
        """
        kernel = ops.cast(self.upsample.kernel, x.dtype)  # [2, 2, C, C_in]
        inputs, size = int(kernel.shape[3]), int(x.shape[1])
        # Channel (dy * 2 + dx) * C + o of pixel (i, j) goes to pixel (2i + dy, 2j + dx).
        weights = ops.reshape(ops.transpose(kernel, (3, 0, 1, 2)), (1, 1, inputs, 4 * self.channels))
        y = ops.conv(x, weights, strides=1, padding="valid")
        if self.upsample.use_bias:
            y = y + ops.tile(ops.cast(self.upsample.bias, x.dtype), (4,))
        y = ops.reshape(ops.relu(y), (-1, size, 2, 2 * self.channels))  # [M * S (i), S (j), dy, (dx, o)]
        y = ops.transpose(y, (0, 2, 1, 3))  # [M * S, dy, j, (dx, o)]
        return ops.reshape(y, (-1, 2 * size, 2 * size, self.channels))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "channels": self.channels,
                "num_convs": self.num_convs}
