"""Panoptic FPN (Kirillov et al. 2019): Mask R-CNN plus a semantic branch on the same FPN.

    image            [B, H, W, 3]  raw pixels
    outputs          Mask R-CNN's ("boxes", "scores", "classes", "masks", "num_detections")
                     plus "semantic_logits" [B, H, W, S + 1]: class 0 is "a thing", classes
                     1..S the stuff categories; and the fused panoptic result (the
                     PanopticFusion layer): "panoptic" [B, H, W] int32 segment ids (0 = void),
                     "segment_category", "segment_is_thing", "segment_area", "segment_score"
                     [B, N] and "num_segments" [B]
    batch (training) Mask R-CNN's padded instances plus "semantic" [B, H, W] int32: 0 where
                     a thing is, 1..S for stuff, IGNORE (255) for void pixels

The joint loss is the Mask R-CNN losses plus `semantic_loss_weight` x the semantic
cross-entropy (void pixels ignored).
"""

import keras
import tensorflow as tf

from kseg.layers import PanopticFusion
from kseg.models.mask_rcnn.mask_rcnn import LOSSES, MaskRCNN
from kseg.models.panoptic_fpn.semantic_head import SemanticHead
from kseg.ops.replicas import global_count

IGNORE = 255


@keras.saving.register_keras_serializable(package="kseg")
class PanopticFPN(MaskRCNN):
    """Args:
        num_classes: K thing classes (Mask R-CNN's classes).
        num_stuff_classes: S stuff classes.
        semantic_channels: width of the semantic branch (128).
        semantic_loss_weight: lambda of the joint loss (0.5).
        stuff_categories: the category id of each stuff class 1..S (default K + 1 .. K + S, after
            the thing ids 1..K).
        fusion_score_threshold, overlap_threshold, min_stuff_area: the fusion's rules (0.5, 0.5,
            64 pixels at the input size; the paper's 4096 is at 800 x 1333).
        **kwargs: MaskRCNN's arguments (input_shape, backbone, ...).

    Example:
        >>> from kseg.models.mask_rcnn import SMALL_CONFIG
        >>> model = PanopticFPN(num_classes=2, num_stuff_classes=3, input_shape=(64, 64, 3), **SMALL_CONFIG)
        >>> tuple(model.output["semantic_logits"].shape)
        (None, 64, 64, 4)
    """

    def __init__(self, num_classes, num_stuff_classes, semantic_channels=128, semantic_loss_weight=0.5,
                 stuff_categories=None, fusion_score_threshold=0.5, overlap_threshold=0.5, min_stuff_area=64,
                 name="panoptic_fpn", **kwargs):
        if not isinstance(num_stuff_classes, int) or num_stuff_classes < 1:
            raise ValueError(f"`num_stuff_classes` must be a positive int; got {num_stuff_classes!r}.")
        # Read by _extra_outputs while the graph is built, before keras.Model's constructor runs.
        if kwargs.get("paste_masks") is False:
            raise ValueError("PanopticFPN fuses masks in image coordinates: `paste_masks` must be True.")
        stuff_categories = list(stuff_categories or range(num_classes + 1, num_classes + 1 + num_stuff_classes))
        if len(stuff_categories) != num_stuff_classes:
            raise ValueError(f"`stuff_categories` gives {len(stuff_categories)} ids; expected num_stuff_classes="
                             f"{num_stuff_classes}.")
        fusion = PanopticFusion(stuff_categories, thing_class=0, score_threshold=fusion_score_threshold,
                                overlap_threshold=overlap_threshold, min_stuff_area=min_stuff_area, name="fusion")
        object.__setattr__(self, "_semantic_spec", (num_stuff_classes + 1, semantic_channels, fusion))
        super().__init__(num_classes, name=name, **kwargs)
        self.stuff_categories = stuff_categories
        self.fusion_score_threshold = fusion_score_threshold
        self.overlap_threshold = overlap_threshold
        self.min_stuff_area = min_stuff_area
        self.num_stuff_classes = num_stuff_classes
        self.semantic_channels = semantic_channels
        self.semantic_loss_weight = semantic_loss_weight

    def _extra_outputs(self, image, features, outputs, layers):
        classes, channels, fusion = self._semantic_spec
        head = SemanticHead(classes, channels, name="semantic_head")
        layers["semantic_head"] = head
        logits = keras.ops.cast(head({k: v for k, v in features.items() if k != "P6"}), "float32")  # mixed precision
        fused = fusion(outputs["masks"], outputs["scores"], outputs["classes"], outputs["num_detections"], logits)
        return {"semantic_logits": logits, "panoptic": fused["panoptic"], "segment_category": fused["category"],
                "segment_is_thing": fused["is_thing"], "segment_area": fused["area"], "segment_score": fused["score"],
                "num_segments": fused["num_segments"]}

    @classmethod
    def loss_names(cls):
        return LOSSES + ("semantic",)

    def compute_losses(self, batch, training=True):
        features = self.pyramid_features(batch["image"], training)
        losses = self.detection_losses(features, batch)
        logits = tf.cast(self.semantic_head({k: v for k, v in features.items() if k != "P6"}, training=training),
                         tf.float32)
        losses["semantic"] = self.semantic_loss_weight * semantic_cross_entropy(batch["semantic"], logits)
        return losses

    def get_config(self):
        return {**super().get_config(), "num_stuff_classes": self.num_stuff_classes,
                "semantic_channels": self.semantic_channels, "semantic_loss_weight": self.semantic_loss_weight,
                "stuff_categories": list(self.stuff_categories), "fusion_score_threshold": self.fusion_score_threshold,
                "overlap_threshold": self.overlap_threshold, "min_stuff_area": self.min_stuff_area}


def semantic_cross_entropy(labels, logits, ignore=IGNORE):
    """Mean per-pixel softmax cross-entropy over the pixels whose label is not `ignore`."""
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore)
    safe = tf.where(valid, labels, 0)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    weights = tf.cast(valid, tf.float32)
    return tf.reduce_sum(loss * weights) / tf.maximum(global_count(tf.reduce_sum(weights)), 1.0)
