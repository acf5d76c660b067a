"""Nearest-neighbour upsampling by an integer factor as one resize op.

    inputs   [B, H, W, C]
    outputs  [B, factor * H, factor * W, C]   every input pixel repeated factor x factor times

`keras.layers.UpSampling2D(interpolation="nearest")` gives the same values, but TensorFlow builds
it from RESHAPE and TILE ops; LiteRT's GPU accelerator has no TILE kernel, so each such layer in
an FPN sends the graph to the CPU and back. A nearest resize converts to one
RESIZE_NEAREST_NEIGHBOR op, which the accelerator takes.
"""

import keras
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable(package="kseg")
class NearestUpsampling2D(layers.Layer):
    """x`factor` nearest-neighbour upsampling (a resize op, see the module doc).

    Args:
        factor: int >= 1, the upsampling factor of both spatial axes.

    Example:
        >>> import numpy as np
        >>> NearestUpsampling2D(2)(np.arange(4, dtype="float32").reshape(1, 2, 2, 1))[0, :, :, 0].numpy().tolist()
        [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0]]
    """

    def __init__(self, factor=2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"NearestUpsampling2D: factor={factor!r}, expected an int >= 1")
        self.factor = factor

    def call(self, x):
        height, width = x.shape[1], x.shape[2]
        if height is None or width is None:
            shape = tf.shape(x)
            height, width = shape[1], shape[2]
        factor = self.factor

        @tf.custom_gradient
        def upsample(x):
            # Half-pixel centres (TensorFlow's resize) map output pixel i to input pixel
            # floor((i + 0.5) / factor) = i // factor: exactly UpSampling2D's repetition.
            def gradient(dy):  # each input pixel's factor x factor block, summed: XLA has no
                shape = tf.shape(x)  # kernel for ResizeNearestNeighborGrad
                blocks = tf.reshape(dy, [shape[0], shape[1], factor, shape[2], factor, shape[3]])
                return tf.reduce_sum(blocks, axis=[2, 4])

            return tf.image.resize(x, (height * factor, width * factor), method="nearest"), gradient

        return upsample(x)

    def compute_output_shape(self, input_shape):
        scale = lambda n: None if n is None else n * self.factor  # noqa: E731
        return (input_shape[0], scale(input_shape[1]), scale(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
