"""Panoptic fusion as a Keras layer (kseg.ops.panoptic_fusion holds the math and the conventions)."""

import keras

from kseg.ops import panoptic_fusion as fusion_ops


@keras.saving.register_keras_serializable(package="kseg")
class PanopticFusion(keras.layers.Layer):
    """Panoptic FPN's heuristic fusion (Kirillov et al. 2019) of Mask R-CNN and semantic outputs.

    Args:
        stuff_categories: output category id per stuff channel, in channel order, skipping
            `thing_class`.
        thing_class: semantic channel meaning "thing/other" (0), or None.
        score_threshold, mask_threshold, overlap_threshold: 0.5 each.
        min_stuff_area: minimum stuff segment area in pixels (4096).
        max_segments: N, static table size (default D + number of stuff channels).

    Call: (masks [B, D, H, W], scores [B, D], classes [B, D], num_detections [B],
    semantic_logits [B, H, W, S]) -> {"panoptic": [B, H, W] int32, "category": [B, N] int32,
    "is_thing": [B, N] bool, "area": [B, N] int32, "score": [B, N] float32,
    "num_segments": [B] int32}.
    """

    def __init__(self, stuff_categories, thing_class=0, score_threshold=0.5, mask_threshold=0.5,
                 overlap_threshold=0.5, min_stuff_area=4096, max_segments=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # scores and areas stay float32 under mixed precision
        super().__init__(**kwargs)
        self.stuff_categories = [int(c) for c in stuff_categories]
        self.thing_class = thing_class
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.overlap_threshold = overlap_threshold
        self.min_stuff_area = min_stuff_area
        self.max_segments = max_segments

    def _max_segments(self, masks_shape, logits_shape):
        if self.max_segments is not None:
            return self.max_segments
        return fusion_ops.default_max_segments(masks_shape[1], logits_shape[-1], self.thing_class)

    def call(self, masks, scores, classes, num_detections, semantic_logits):
        return fusion_ops.panoptic_fusion(
            masks, scores, classes, num_detections, semantic_logits, stuff_categories=self.stuff_categories,
            thing_class=self.thing_class, score_threshold=self.score_threshold,
            mask_threshold=self.mask_threshold, overlap_threshold=self.overlap_threshold,
            min_stuff_area=self.min_stuff_area, max_segments=self._max_segments(masks.shape, semantic_logits.shape),
        )

    def compute_output_spec(self, masks, scores, classes, num_detections, semantic_logits):
        batch, height, width = masks.shape[0], masks.shape[2], masks.shape[3]
        n = self._max_segments(masks.shape, semantic_logits.shape)
        spec = keras.KerasTensor
        return {"panoptic": spec((batch, height, width), "int32"), "category": spec((batch, n), "int32"),
                "is_thing": spec((batch, n), "bool"), "area": spec((batch, n), "int32"),
                "score": spec((batch, n), "float32"), "num_segments": spec((batch,), "int32")}

    def get_config(self):
        return {**super().get_config(), "stuff_categories": self.stuff_categories, "thing_class": self.thing_class,
                "score_threshold": self.score_threshold, "mask_threshold": self.mask_threshold,
                "overlap_threshold": self.overlap_threshold, "min_stuff_area": self.min_stuff_area,
                "max_segments": self.max_segments}
