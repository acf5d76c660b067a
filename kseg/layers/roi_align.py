"""ROI Align over a feature pyramid as a Keras layer (kseg.ops.roi_align holds the math)."""

import keras

from kseg.ops import roi_align as roi_align_ops

METHODS = ("crop_and_resize", "gather")


@keras.saving.register_keras_serializable(package="kseg")
class ROIAlign(keras.layers.Layer):
    """Multilevel ROI Align (He et al. 2017) with the half-pixel `aligned` convention.

    Args:
        output_size: S, the bins per side.
        image_size: (H, W) of the network input, which sets each level's stride.
        sampling_ratio: bilinear samples per bin side (2).
        method: "crop_and_resize" (fast, differentiable; training) or "gather" (builtin TFLite
            ops only; export). Both give the same values; inside a function compiled by XLA
            (`compile(jit_compile=True)`), "crop_and_resize" runs the gather implementation,
            as XLA has no kernel for crop_and_resize.

    Call: ({"P2": ..., "P5": ...}, boxes [B, N, 4]) -> [B, N, S, S, D].
    """

    def __init__(self, output_size, image_size, sampling_ratio=2, method="crop_and_resize", **kwargs):
        kwargs.setdefault("dtype", "float32")  # box coordinates need float32 under any dtype policy
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
        self.output_size = output_size
        self.image_size = tuple(image_size)
        self.sampling_ratio = sampling_ratio
        self.method = method

    def call(self, features, boxes):
        levels = {k: v for k, v in features.items() if 2 <= int(k[1:]) <= 5}
        return roi_align_ops.roi_align(
            levels, boxes, image_size=self.image_size, output_size=self.output_size,
            sampling_ratio=self.sampling_ratio, method=self.method,
        )

    def compute_output_shape(self, features_shape, boxes_shape):
        depth = features_shape["P2"][-1]
        return (boxes_shape[0], boxes_shape[1], self.output_size, self.output_size, depth)

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "image_size": self.image_size,
                "sampling_ratio": self.sampling_ratio, "method": self.method}
