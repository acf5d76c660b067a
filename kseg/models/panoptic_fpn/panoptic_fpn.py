"""Panoptic FPN (Kirillov et al. 2019): a Mask R-CNN plus a semantic branch on its FPN, and the fusion.

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
from kseg.models.base import (
    KERAS_MODEL_KWARGS,
    LossDictTraining,
    SegmentationModel,
    check_kwargs,
    detector_config_objects,
    dtype_policy_scope,
)
from kseg.models.mask_rcnn.mask_rcnn import LOSSES, MaskRCNN
from kseg.models.panoptic_fpn.semantic_head import SemanticHead
from kseg.ops.replicas import global_count

IGNORE = 255


# The flat constructor arguments of the semantic branch and the fusion (saved configs hold them
# beside Mask R-CNN's).
PANOPTIC_ARGUMENTS = ("num_stuff_classes", "semantic_channels", "stuff_categories", "fusion_score_threshold",
                      "overlap_threshold", "min_stuff_area")


@keras.saving.register_keras_serializable(package="kseg")
class PanopticFPN(LossDictTraining, SegmentationModel):
    """Panoptic FPN composed from a Mask R-CNN, a semantic head on its FPN and the fusion layer.

    Args:
        detector: a `MaskRCNN` (masks pasted in image coordinates); its FPN feeds the head.
        semantic_head: a `SemanticHead` of S + 1 classes (0: "a thing", 1..S the stuff).
        fusion: a `PanopticFusion` layer with the S stuff category ids (thing_class 0).
        semantic_loss_weight: lambda of the joint loss (0.5).

    `panoptic_fpn_parts` builds the three parts from plain values (K thing classes, S stuff
    classes, widths and the fusion's rules); `kseg.models.build_model("panoptic_fpn", ...)`
    and `from_config` use it.

    Example:
        >>> from kseg.models.mask_rcnn import SMALL_CONFIG
        >>> model = PanopticFPN(*panoptic_fpn_parts(num_classes=2, num_stuff_classes=3, input_shape=(64, 64, 3),
        ...                                         **SMALL_CONFIG))
        >>> tuple(model.output["semantic_logits"].shape)
        (None, 64, 64, 4)
    """

    def __init__(self, detector=None, semantic_head=None, fusion=None, semantic_loss_weight=0.5,
                 name="panoptic_fpn", **kwargs):
        keras_kwargs = {k: kwargs.pop(k) for k in KERAS_MODEL_KWARGS if k in kwargs}
        if detector is None:
            raise ValueError(f"PanopticFPN takes its parts: `detector`, `semantic_head` and `fusion`; got None and "
                             f"{sorted(kwargs)}. Build one from plain values with kseg.models.build_model("
                             f"\"panoptic_fpn\", preset, ...) or PanopticFPN(*panoptic_fpn_parts(...)).")
        check_kwargs(type(self).__name__, kwargs)
        _check_parts(detector, semantic_head, fusion)
        with dtype_policy_scope(keras_kwargs.get("dtype")):
            image = keras.Input(detector.image_shape, name="image")
            features, outputs = detector.detect(image)
            # float32 also under mixed precision
            logits = keras.ops.cast(semantic_head({k: v for k, v in features.items() if k != "P6"}), "float32")
            fused = fusion(outputs["masks"], outputs["scores"], outputs["classes"], outputs["num_detections"],
                           logits)
            outputs.update({"semantic_logits": logits, "panoptic": fused["panoptic"],
                            "segment_category": fused["category"], "segment_is_thing": fused["is_thing"],
                            "segment_area": fused["area"], "segment_score": fused["score"],
                            "num_segments": fused["num_segments"]})
        super().__init__(inputs=image, outputs=outputs, name=name, **keras_kwargs)
        self.detector = detector
        self.semantic_head = semantic_head
        self.fusion = fusion
        self.semantic_loss_weight = semantic_loss_weight
        # What readers of a detector ask of any kseg detector.
        self.num_classes, self.image_shape, self.image_size = detector.num_classes, detector.image_shape, \
            detector.image_size
        self.num_stuff_classes = semantic_head.num_classes - 1
        self._init_loss_trackers()

    @classmethod
    def loss_names(cls):
        return LOSSES + ("semantic",)

    def compute_losses(self, batch, training=True):
        features = self.detector.pyramid_features(batch["image"], training)
        losses = self.detector.detection_losses(features, batch)
        logits = tf.cast(self.semantic_head({k: v for k, v in features.items() if k != "P6"}, training=training),
                         tf.float32)
        losses["semantic"] = self.semantic_loss_weight * semantic_cross_entropy(batch["semantic"], logits)
        return losses

    def get_config(self):
        """The parts' plain values, flat (as `panoptic_fpn_parts` takes them)."""
        detector = {k: v for k, v in self.detector.get_config().items() if k not in ("name", "trainable", "dtype")}
        return {**detector, "num_stuff_classes": self.num_stuff_classes,
                "semantic_channels": self.semantic_head.channels, "semantic_loss_weight": self.semantic_loss_weight,
                "stuff_categories": list(self.fusion.stuff_categories),
                "fusion_score_threshold": self.fusion.score_threshold,
                "overlap_threshold": self.fusion.overlap_threshold, "min_stuff_area": self.fusion.min_stuff_area,
                **self.base_config()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        keras_kwargs = {k: config[k] for k in KERAS_MODEL_KWARGS if k in config}
        name = config.pop("name", "panoptic_fpn")
        weight = config.pop("semantic_loss_weight", 0.5)
        return cls(*panoptic_fpn_parts(**config), semantic_loss_weight=weight, name=name, **keras_kwargs)


def panoptic_fpn_parts(num_classes, num_stuff_classes, semantic_channels=128, stuff_categories=None,
                       fusion_score_threshold=0.5, overlap_threshold=0.5, min_stuff_area=64, **kwargs):
    """(detector, semantic_head, fusion) of a Panoptic FPN from plain values.

    Args:
        num_classes: K thing classes (Mask R-CNN's classes).
        num_stuff_classes: S stuff classes.
        semantic_channels: width of the semantic branch (128).
        stuff_categories: the category id of each stuff class 1..S (default K + 1 .. K + S, after
            the thing ids 1..K).
        fusion_score_threshold, overlap_threshold, min_stuff_area: the fusion's rules (0.5, 0.5,
            64 pixels at the input size; the paper's 4096 is at 800 x 1333).
        **kwargs: MaskRCNN's arguments (input_shape, backbone, ..., dtype); a saved config's
            backbone name or serialized backbone is built here.

    Returns:
        (MaskRCNN, SemanticHead, PanopticFusion), built under the `dtype` policy if given.
    """
    if not isinstance(num_stuff_classes, int) or num_stuff_classes < 1:
        raise ValueError(f"`num_stuff_classes` must be a positive int; got {num_stuff_classes!r}.")
    if kwargs.get("paste_masks") is False:
        raise ValueError("PanopticFPN fuses masks in image coordinates: `paste_masks` must be True.")
    stuff_categories = list(stuff_categories or range(num_classes + 1, num_classes + 1 + num_stuff_classes))
    if len(stuff_categories) != num_stuff_classes:
        raise ValueError(f"`stuff_categories` gives {len(stuff_categories)} ids; expected num_stuff_classes="
                         f"{num_stuff_classes}.")
    kwargs.pop("name", None)
    detector = MaskRCNN(num_classes, **detector_config_objects(kwargs))
    with dtype_policy_scope(kwargs.get("dtype")):
        head = SemanticHead(num_stuff_classes + 1, semantic_channels, name="semantic_head")
        fusion = PanopticFusion(stuff_categories, thing_class=0, score_threshold=fusion_score_threshold,
                                overlap_threshold=overlap_threshold, min_stuff_area=min_stuff_area, name="fusion")
    return detector, head, fusion


def _check_parts(detector, semantic_head, fusion):
    if not isinstance(detector, MaskRCNN):
        raise ValueError(f"`detector` must be a MaskRCNN; got {type(detector).__name__}.")
    if not detector.paste_masks:
        raise ValueError("PanopticFPN fuses masks in image coordinates: `paste_masks` must be True.")
    if not isinstance(semantic_head, SemanticHead) or not isinstance(fusion, PanopticFusion):
        raise ValueError(f"`semantic_head` and `fusion` must be a SemanticHead and a PanopticFusion; got "
                         f"{type(semantic_head).__name__} and {type(fusion).__name__}.")
    if semantic_head.num_classes != len(fusion.stuff_categories) + 1:
        raise ValueError(f"`semantic_head` has {semantic_head.num_classes} classes; expected the "
                         f"{len(fusion.stuff_categories)} stuff categories of `fusion` + 1.")


def semantic_cross_entropy(labels, logits, ignore=IGNORE):
    """Mean per-pixel softmax cross-entropy over the pixels whose label is not `ignore`."""
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore)
    safe = tf.where(valid, labels, 0)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    weights = tf.cast(valid, tf.float32)
    return tf.reduce_sum(loss * weights) / tf.maximum(global_count(tf.reduce_sum(weights)), 1.0)
