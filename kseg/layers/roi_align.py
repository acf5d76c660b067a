"""ROI Align over a feature pyramid as a Keras layer (kseg.ops.roi_align holds the math)."""

import keras

from kseg.ops import roi_align as roi_align_ops
from kseg.ops.checks import check_choice


@keras.saving.register_keras_serializable(package="kseg")
class ROIAlign(keras.layers.Layer):
    """Multilevel ROI Align (He et al. 2017) over P2..P5, as torchvision.ops.roi_align per level.

    Sampling follows Detectron2 and torchvision, borders included (see kseg.ops.roi_align):
    points within one pixel outside a level read its border pixels, points farther out read 0.

    Args:
        output_size: S, the bins per side.
        image_size: (H, W) of the network input, which sets each level's stride.
        sampling_ratio: bilinear samples per bin side (2); <= 0 for torchvision's adaptive
            ratio ceil(box side / S) per box, capped at `max_sampling_ratio`.
        aligned: True (default; Detectron2, kseg's Mask R-CNN) shifts boxes by half a pixel;
            False (torchvision's Mask R-CNN) does not and makes each box side at least one
            level pixel.
        max_sampling_ratio: the cap of the adaptive ratio (static shapes); needed when
            sampling_ratio <= 0, ignored otherwise.
        method: "crop_and_resize" (fast, differentiable; training) or "gather" (builtin TFLite
            ops only; export). Both give the same values; inside a function compiled by XLA
            (`compile(jit_compile=True)`), "crop_and_resize" runs the gather implementation,
            as XLA has no kernel for crop_and_resize.

    Call: ({"P2": ..., "P5": ...}, boxes [B, N, 4] (y1, x1, y2, x2) image pixels)
        -> [B, N, S, S, D].

    Example:
        torchvision's box pooler: `ROIAlign(7, image_size, sampling_ratio=2, aligned=False)`.
    """

    def __init__(self, output_size, image_size, sampling_ratio=2, method="crop_and_resize", aligned=True,
                 max_sampling_ratio=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # box coordinates need float32 under any dtype policy
        super().__init__(**kwargs)
        check_choice("method", method, roi_align_ops.METHODS)
        if not isinstance(aligned, bool):
            raise ValueError(f"`aligned` must be True or False; got {aligned!r}.")
        if sampling_ratio <= 0 and (not isinstance(max_sampling_ratio, int) or max_sampling_ratio < 1):
            raise ValueError(f"`sampling_ratio={sampling_ratio}` (adaptive) needs `max_sampling_ratio`, an int >= 1 "
                             f"(static shapes); got {max_sampling_ratio!r}.")
        self.output_size = output_size
        self.image_size = tuple(image_size)
        self.sampling_ratio = sampling_ratio
        self.method = method
        self.aligned = aligned
        self.max_sampling_ratio = max_sampling_ratio

    def call(self, features, boxes):
        levels = {k: v for k, v in features.items() if 2 <= int(k[1:]) <= 5}
        return roi_align_ops.roi_align(
            levels, boxes, image_size=self.image_size, output_size=self.output_size,
            sampling_ratio=self.sampling_ratio, aligned=self.aligned,
            max_sampling_ratio=self.max_sampling_ratio, method=self.method,
        )

    def compute_output_shape(self, features_shape, boxes_shape):
        depth = features_shape["P2"][-1]
        return (boxes_shape[0], boxes_shape[1], self.output_size, self.output_size, depth)

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "image_size": self.image_size,
                "sampling_ratio": self.sampling_ratio, "method": self.method, "aligned": self.aligned,
                "max_sampling_ratio": self.max_sampling_ratio}
