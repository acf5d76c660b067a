"""Mask R-CNN (He et al. 2017) with a feature pyramid (Lin et al. 2017).

    image        [B, H, W, 3]   raw pixels [0, 255]; H, W divisible by 32
    P2..P6       FPN levels, D channels, strides 4..64
    outputs      "boxes" [B, D, 4] (y1, x1, y2, x2) pixels, "scores" [B, D], "classes" [B, D]
                 (1..K; 0 pads), "masks" [B, D, H, W] probabilities (or [B, D, 28, 28] with
                 paste_masks=False), "num_detections" [B]

The functional graph is the inference path, the graph that `export` converts. Training runs
the same layers in `train_step` with targets computed in the graph from padded ground truth, so
plain `model.fit(dataset)` trains it: the dataset yields dicts {"image", "boxes", "classes",
"masks"} (kseg.data.instance_pipeline.instance_dataset), classes 0 marking padding.
"""

import types

import keras
import tensorflow as tf

from kseg.backbones import backbone_config
from kseg.layers import FPN, ROIAlign
from kseg.models.base import (
    LossDictTraining,
    SegmentationModel,
    check_detector_backbone,
    check_kwargs,
    detector_config_objects,
    detector_input_shape,
    dtype_policy_scope,
)
from kseg.models.mask_rcnn import losses
from kseg.models.mask_rcnn.heads import BoxHead, MaskHead, RPNHead
from kseg.models.mask_rcnn.layers import DetectedMasks, Detections, Proposals
from kseg.models.mask_rcnn.losses import LOSSES
from kseg.ops import boxes as box_ops



@keras.saving.register_keras_serializable(package="kseg")
class MaskRCNN(LossDictTraining, SegmentationModel):
    """Mask R-CNN: backbone + FPN, RPN, ROI Align, box/class head and mask head.

    Args:
        num_classes: K object classes (the background is class 0, added internally).
        input_shape: (H, W, 3), static; H and W divisible by 32 (default (512, 512, 3)).
        backbone: a keras.Model from input_shape images to {"P2": ..., "P5": ...}
            (`kseg.backbones.build_backbone`); required, as in keras-hub's task models. Names
            ("resnet50", "small", ...) and `backbone_weights` go to `kseg.models.build_model`.
        fpn_channels: D (256).
        anchor_sizes: anchor side per level P2..P6 (32..512 px).
        aspect_ratios: anchor h/w ratios (0.5, 1, 2).
        anchor_scales: anchor size multipliers per level ((1.0,); e.g. (1, 2**(1/3), 2**(2/3))
            gives RetinaNet-style octave scales).
        rpn_pre_nms_topk, rpn_post_nms_topk: (training, inference) boxes kept before/after NMS.
        rpn_nms_iou: 0.7.
        rpn_batch_size, rpn_positive_fraction: anchors sampled per image for the RPN loss (256, 0.5).
        roi_batch_size, roi_positive_fraction: ROIs sampled per image for the heads (512, 0.25).
        box_fc_dim: the box head's hidden width (1024).
        mask_channels: the mask head's conv width (256).
        max_detections, score_threshold, detection_nms_iou: inference (100, 0.05, 0.5).
        roi_align_method: "crop_and_resize" (training, Keras inference) or "gather" (builtin
            TFLite ops, for export); the two agree to 1e-5. Compiled by XLA
            (`compile(jit_compile=True)`), the model runs "gather" whatever this says.
        paste_masks: output masks in image coordinates (True) or on each box's 28 x 28 grid.

    Example:
        >>> from kseg.backbones import build_backbone
        >>> config = {**SMALL_CONFIG, "backbone": build_backbone("small", (64, 64, 3))}
        >>> model = MaskRCNN(num_classes=3, input_shape=(64, 64, 3), **config)
        >>> sorted(model.output)
        ['boxes', 'classes', 'masks', 'num_detections', 'scores']
    """

    def __init__(
        self,
        num_classes,
        input_shape=None,
        backbone=None,
        fpn_channels=256,
        anchor_sizes=(32, 64, 128, 256, 512),
        aspect_ratios=(0.5, 1.0, 2.0),
        anchor_scales=(1.0,),
        rpn_pre_nms_topk=(2000, 1000),
        rpn_post_nms_topk=(1000, 1000),
        rpn_nms_iou=0.7,
        rpn_batch_size=256,
        rpn_positive_fraction=0.5,
        roi_batch_size=512,
        roi_positive_fraction=0.25,
        box_fc_dim=1024,
        mask_channels=256,
        max_detections=100,
        score_threshold=0.05,
        detection_nms_iou=0.5,
        roi_align_method="crop_and_resize",
        paste_masks=True,
        name="mask_rcnn",
        **kwargs,
    ):
        check_kwargs(type(self).__name__, kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int (object classes, no background); got {num_classes!r}.")
        input_shape = detector_input_shape(input_shape, default=(512, 512, 3))
        image_size = input_shape[:2]
        anchors = box_ops.anchor_boxes(image_size, sizes=tuple(anchor_sizes), aspect_ratios=tuple(aspect_ratios),
                                       scales=tuple(anchor_scales))
        with dtype_policy_scope(kwargs.get("dtype")):
            check_detector_backbone(backbone, input_shape)
            fpn = FPN(fpn_channels, name="fpn")
            rpn_head = RPNHead(len(aspect_ratios) * len(anchor_scales), fpn_channels, name="rpn_head")
            box_align = ROIAlign(7, image_size, method=roi_align_method, name="box_roi_align")
            mask_align = ROIAlign(14, image_size, method=roi_align_method, name="mask_roi_align")
            box_head = BoxHead(num_classes, box_fc_dim, name="box_head")
            mask_head = MaskHead(num_classes, mask_channels, name="mask_head")
            proposals = Proposals(anchors, image_size, rpn_pre_nms_topk[1], rpn_post_nms_topk[1], rpn_nms_iou,
                                  name="proposals")
            detections = Detections(image_size, max_detections, score_threshold, detection_nms_iou, name="detections")
            detected_masks = DetectedMasks(image_size, paste=paste_masks, name="masks")
            parts = types.SimpleNamespace(backbone=backbone, fpn=fpn, rpn_head=rpn_head, proposals=proposals,
                                          box_align=box_align, box_head=box_head, detections=detections,
                                          mask_align=mask_align, mask_head=mask_head, detected_masks=detected_masks)
            image = keras.Input(input_shape, name="image")
            _, outputs = _detect(parts, image)
        super().__init__(inputs=image, outputs=outputs, name=name, **kwargs)

        self.num_classes = num_classes
        self.image_shape = input_shape  # keras.Model's `input_shape` is the graph's, with the batch
        self.image_size = image_size  # (H, W)
        self.backbone = backbone
        self.fpn_channels = fpn_channels
        self.anchor_sizes = tuple(anchor_sizes)
        self.aspect_ratios = tuple(aspect_ratios)
        self.anchor_scales = tuple(anchor_scales)
        self.rpn_pre_nms_topk = tuple(rpn_pre_nms_topk)
        self.rpn_post_nms_topk = tuple(rpn_post_nms_topk)
        self.rpn_nms_iou = rpn_nms_iou
        self.rpn_batch_size = rpn_batch_size
        self.rpn_positive_fraction = rpn_positive_fraction
        self.roi_batch_size = roi_batch_size
        self.roi_positive_fraction = roi_positive_fraction
        self.box_fc_dim = box_fc_dim
        self.mask_channels = mask_channels
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.detection_nms_iou = detection_nms_iou
        self.roi_align_method = roi_align_method
        self.paste_masks = paste_masks

        # The pieces of the graph above (train_step and `detect` run the same layer objects).
        self.anchors = anchors
        self.fpn, self.rpn_head, self.proposals = fpn, rpn_head, proposals
        self.box_align, self.mask_align = box_align, mask_align
        self.box_head, self.mask_head = box_head, mask_head
        self.detections, self.detected_masks = detections, detected_masks
        self.proposals_train = Proposals(anchors, image_size, rpn_pre_nms_topk[0], rpn_post_nms_topk[0], rpn_nms_iou,
                                         name="proposals_train")
        self._init_loss_trackers()

    def detect(self, image):
        """The inference graph on a symbolic `image` [B, H, W, 3], with this model's layers.

        Returns:
            (features, outputs): the FPN levels {"P2": ..., "P6": ...} and the detections
            {"boxes", "scores", "classes", "masks", "num_detections"} (module docstring). Models
            composed from a Mask R-CNN (Panoptic FPN) build their graph on these.
        """
        return _detect(self, image)

    @classmethod
    def loss_names(cls):
        return LOSSES

    # ------------------------------------------------------------------------- training

    def compute_losses(self, batch, training=True):
        """The five Mask R-CNN losses on a batch of padded ground truth: {name: scalar}."""
        return self.detection_losses(self.pyramid_features(batch["image"], training), batch)

    def pyramid_features(self, images, training=True):
        """Images -> the FPN levels {"P2": ..., "P6": ...} (float32)."""
        images = tf.cast(images, self.compute_dtype)
        features = self.fpn(self.backbone(images, training=training), training=training)
        return {k: tf.cast(v, tf.float32) for k, v in features.items()}

    def detection_losses(self, features, batch):
        """The RPN, box and mask losses from the FPN levels and padded ground truth (`losses`)."""
        return losses.detection_losses(self, features, batch["boxes"], batch["classes"], batch["masks"],
                                       seeds=batch.get("seed"))

    # ------------------------------------------------------------------------- config

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "input_shape": list(self.image_shape),
            "backbone": backbone_config(self.backbone),
            "fpn_channels": self.fpn_channels,
            "anchor_sizes": list(self.anchor_sizes),
            "aspect_ratios": list(self.aspect_ratios),
            "anchor_scales": list(self.anchor_scales),
            "rpn_pre_nms_topk": list(self.rpn_pre_nms_topk),
            "rpn_post_nms_topk": list(self.rpn_post_nms_topk),
            "rpn_nms_iou": self.rpn_nms_iou,
            "rpn_batch_size": self.rpn_batch_size,
            "rpn_positive_fraction": self.rpn_positive_fraction,
            "roi_batch_size": self.roi_batch_size,
            "roi_positive_fraction": self.roi_positive_fraction,
            "box_fc_dim": self.box_fc_dim,
            "mask_channels": self.mask_channels,
            "max_detections": self.max_detections,
            "score_threshold": self.score_threshold,
            "detection_nms_iou": self.detection_nms_iou,
            "roi_align_method": self.roi_align_method,
            "paste_masks": self.paste_masks,
            **self.base_config(),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**detector_config_objects(config))


# A configuration for tests, demos and CPU training on 128-256 px images.
SMALL_CONFIG = {
    "backbone": "small",
    "fpn_channels": 64,
    "anchor_sizes": (16, 32, 64, 128, 256),
    "rpn_pre_nms_topk": (1000, 500),
    "rpn_post_nms_topk": (256, 128),
    "rpn_batch_size": 128,
    "roi_batch_size": 128,
    "box_fc_dim": 256,
    "mask_channels": 64,
    "max_detections": 20,
}


def _detect(parts, image):
    """Mask R-CNN's inference graph on `image` with `parts` (an object with the layers as attributes)."""
    features = parts.fpn(parts.backbone(image))
    logits, deltas = parts.rpn_head(features)
    proposals, num_proposals = parts.proposals(logits, deltas)
    class_logits, box_deltas = parts.box_head(parts.box_align(features, proposals))
    boxes, scores, classes, num = parts.detections(proposals, num_proposals, class_logits, box_deltas)
    masks = parts.detected_masks(parts.mask_head(parts.mask_align(features, boxes)), classes, boxes)
    return features, {"boxes": boxes, "scores": scores, "classes": classes, "masks": masks, "num_detections": num}
