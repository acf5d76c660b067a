"""torchvision's Mask R-CNN (`maskrcnn_resnet50_fpn`, v1) built from kseg parts, static shapes.

    image        [B, h0, w0, 3]  raw pixels [0, 255]; the model is built for one (h0, w0)
    outputs      "boxes" [B, D, 4] (y1, x1, y2, x2) original-image pixels, "scores" [B, D],
                 "classes" [B, D] (torchvision's labels 1..K, 0 pads), "masks" [B, D, h0, w0]
                 probabilities (or [B, D, 28, 28] with paste_masks=False), "num_detections" [B]

The network is torchvision's layer for layer, so torchvision checkpoints load into it
(`kseg.weights.mask_rcnn_torchvision`): the input transform (normalize, resize so the short
side is `min_size` unless the long side passes `max_size`, zero padding to multiples of 32),
ResNet-50 v1.5 with frozen batch norm (`kseg.backbones.torchvision_resnet50`), the FPN with a
max-pooled P6 (`kseg.layers.FPN`), torchvision's anchors (`torchvision_anchor_boxes`: corner
centred, rounded), the RPN head, proposals and detections with torchvision's rules
(`torchvision_layers`), ROI Align with `aligned=False` (7 x 7 boxes, 14 x 14 masks, sampling
ratio 2, levels P2..P5 by FPN's rule with canonical size 224 at level 4), the two-layer MLP box
head and the four-conv mask head (`BoxHead`, `MaskHead`), and the mask pasting of
`paste_masks_in_image`. Everything is fixed once (h0, w0) is: a TFLite graph takes exactly
that image size.

Fine-tuning. The functional graph above is the inference path, torchvision's; `fit` trains the
same layers with kseg's Mask R-CNN training (`LossDictTraining`, the targets and samplers of
`kseg.models.mask_rcnn.targets`, the five losses of `MaskRCNN`) on the batches of
`kseg.data.instance_pipeline.instance_dataset` (ground truth in original-image pixels):

    batch        "image" [B, h0, w0, 3], "boxes" [B, M, 4] (y1, x1, y2, x2) pixels, "classes"
                 [B, M] (1..K, 0 pads), "masks" [B, M, h0, w0], optional "seed" [B, 2]

Boxes are scaled into the resized image (per axis, as torchvision's transform); the frozen
batch norms and, with `trainable_stages=3`, the stem and layer1 never train, as in torchvision.
Where the training differs from torchvision's (`RoIHeads`, `RegionProposalNetwork` in training
mode): the box regression loss is smooth L1 with beta 1 (torchvision 1 / 9); the box head's
sample keeps round(roi_batch_size x roi_positive_fraction) slots for foreground ROIs and leaves
them empty when there are fewer (torchvision fills them with background ROIs); the mask targets
are read bilinearly at the 28 x 28 bin centres of the full-resolution mask and binarized at 0.5
(torchvision: `roi_align`, aligned=False, of the mask resized by nearest neighbour); sampling
draws from each example's own seed. The RPN's sampling (256 anchors, half positive, IoU 0.7 /
0.3 with each box's best anchors positive), its losses (logistic, smooth L1 with beta 1 / 9 over
the sampled anchors), the ROI foreground IoU (0.5) and the training proposals (2000 per level
before NMS, 2000 after) are torchvision's.
"""

import keras
import numpy as np
import tensorflow as tf

from kseg.backbones.torchvision_resnet import torchvision_resnet50
from kseg.layers import FPN, ROIAlign
from kseg.models.base import LossDictTraining, SegmentationModel, detector_input_shape, legacy_detector_config
from kseg.models.mask_rcnn import losses
from kseg.models.mask_rcnn.heads import BoxHead, MaskHead, RPNHead
from kseg.models.mask_rcnn.layers import DetectedMasks
from kseg.models.mask_rcnn.losses import LOSSES
from kseg.models.mask_rcnn.torchvision_layers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TorchvisionDetections,
    TorchvisionPostprocess,
    TorchvisionProposals,
    TorchvisionTransform,
    padded_size,
    resized_size,
)
from kseg.ops import boxes as box_ops

COCO_CLASSES = 90  # torchvision's 91 outputs less the background


@keras.saving.register_keras_serializable(package="kseg")
class TorchvisionMaskRCNN(LossDictTraining, SegmentationModel):
    """Mask R-CNN exactly as torchvision's `maskrcnn_resnet50_fpn` (inference), for one image size.

    Args:
        input_shape: (h0, w0, 3), the size of the images the model takes.
        num_classes: K object classes (torchvision's `num_classes` - 1; 90 for COCO).
        min_size, max_size: torchvision's resize (800, 1333).
        image_mean, image_std: normalization of [0, 1] pixels (ImageNet's).
        anchor_sizes: one per level P2..P6 (32..512). aspect_ratios: h / w (0.5, 1, 2).
        rpn_pre_nms_topk: anchors per level before NMS (1000, torchvision's test setting).
        rpn_post_nms_topk: proposals (1000). rpn_nms_iou: 0.7.
        box_score_threshold, box_nms_iou, max_detections: 0.05, 0.5, 100.
        roi_align_method: "crop_and_resize" or "gather" (builtin TFLite ops, for export).
        paste_masks: masks in original-image pixels (True) or on each box's 28 x 28 grid.
        trainable_stages: ResNet stages that train when fine-tuning (3, as torchvision: the
            stem and layer1 stay frozen).
        rpn_pre_nms_topk_train, rpn_post_nms_topk_train: the proposals of training (2000, 2000).
        rpn_batch_size, rpn_positive_fraction: anchors sampled per image for the RPN loss (256, 0.5).
        roi_batch_size, roi_positive_fraction: ROIs sampled per image for the heads (512, 0.25);
            the background part needs as many training proposals.

    Example:
        >>> model = TorchvisionMaskRCNN((64, 96, 3), num_classes=3, min_size=64, max_size=96,
        ...                             rpn_pre_nms_topk=50, rpn_post_nms_topk=20)  # doctest: +SKIP
    """

    def __init__(self, input_shape=None, num_classes=COCO_CLASSES, min_size=800, max_size=1333, image_mean=IMAGENET_MEAN,
                 image_std=IMAGENET_STD, anchor_sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0),
                 rpn_pre_nms_topk=1000, rpn_post_nms_topk=1000, rpn_nms_iou=0.7, box_score_threshold=0.05,
                 box_nms_iou=0.5, max_detections=100, roi_align_method="crop_and_resize", paste_masks=True,
                 trainable_stages=3, rpn_pre_nms_topk_train=2000, rpn_post_nms_topk_train=2000, rpn_batch_size=256,
                 rpn_positive_fraction=0.5, roi_batch_size=512, roi_positive_fraction=0.25,
                 name="torchvision_mask_rcnn", **kwargs):
        input_shape = detector_input_shape(input_shape)
        image_size = input_shape[:2]
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int (object classes, no background); "
                             f"got {num_classes!r}.")
        if len(anchor_sizes) != 5:
            raise ValueError(f"`anchor_sizes` needs one size per level P2..P6; got {anchor_sizes!r}.")
        resized = resized_size(image_size, min_size, max_size)
        padded = padded_size(resized)
        # P2..P5 divide the padded size; P6 max-pools P5 with stride 2: ceil(P5 / 2). As in
        # torchvision, a level's anchor stride is padded size // grid size (P6 of an 800-pixel
        # side: 13 cells 61 pixels apart).
        grids = [(padded[0] // 2**n, padded[1] // 2**n) for n in range(2, 6)]
        grids.append((-(-grids[-1][0] // 2), -(-grids[-1][1] // 2)))
        strides = [(padded[0] // h, padded[1] // w) for h, w in grids]
        anchors = box_ops.torchvision_anchor_boxes(grids, strides, anchor_sizes, aspect_ratios)
        counts = [h * w * len(aspect_ratios) for h, w in grids]

        transform = TorchvisionTransform(resized, padded, image_mean, image_std, name="transform")
        body = torchvision_resnet50(padded + (3,), trainable_stages=trainable_stages)
        fpn = FPN(256, name="fpn")
        rpn_head = RPNHead(len(aspect_ratios), 256, name="rpn_head")
        proposals_layer = TorchvisionProposals(anchors, counts, resized, rpn_pre_nms_topk, rpn_post_nms_topk,
                                               rpn_nms_iou, name="proposals")
        box_align = ROIAlign(7, padded, sampling_ratio=2, method=roi_align_method, aligned=False,
                             name="box_roi_align")
        mask_align = ROIAlign(14, padded, sampling_ratio=2, method=roi_align_method, aligned=False,
                              name="mask_roi_align")
        box_head = BoxHead(num_classes, 1024, name="box_head")
        mask_head = MaskHead(num_classes, 256, name="mask_head")
        detections_layer = TorchvisionDetections(resized, max_detections, box_score_threshold, box_nms_iou,
                                                 name="detections")
        detected_masks = DetectedMasks(padded, paste=False, name="masks")
        postprocess = TorchvisionPostprocess(resized, image_size, paste=paste_masks, name="postprocess")

        image = keras.Input(image_size + (3,), name="image")
        features = fpn(body(transform(image)))
        logits, deltas = rpn_head(features)
        proposals, num_proposals = proposals_layer(logits, deltas)
        class_logits, box_deltas = box_head(box_align(features, proposals))
        boxes, scores, classes, num = detections_layer(proposals, num_proposals, class_logits, box_deltas)
        masks = detected_masks(mask_head(mask_align(features, boxes)), classes, boxes)
        boxes, masks = postprocess(boxes, masks)
        outputs = {"boxes": boxes, "scores": scores, "classes": classes, "masks": masks, "num_detections": num}
        super().__init__(inputs=image, outputs=outputs, name=name, **kwargs)

        self.image_shape = input_shape  # keras.Model's `input_shape` is the graph's, with the batch
        self.image_size = image_size  # (h0, w0)
        self.num_classes = num_classes
        self.min_size = min_size
        self.max_size = max_size
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.anchor_sizes = tuple(anchor_sizes)
        self.aspect_ratios = tuple(aspect_ratios)
        self.rpn_pre_nms_topk = rpn_pre_nms_topk
        self.rpn_post_nms_topk = rpn_post_nms_topk
        self.rpn_nms_iou = rpn_nms_iou
        self.box_score_threshold = box_score_threshold
        self.box_nms_iou = box_nms_iou
        self.max_detections = max_detections
        self.roi_align_method = roi_align_method
        self.paste_masks = paste_masks
        self.trainable_stages = trainable_stages
        self.rpn_pre_nms_topk_train = rpn_pre_nms_topk_train
        self.rpn_post_nms_topk_train = rpn_post_nms_topk_train
        self.rpn_batch_size = rpn_batch_size
        self.rpn_positive_fraction = rpn_positive_fraction
        self.roi_batch_size = roi_batch_size
        self.roi_positive_fraction = roi_positive_fraction
        # The parts, for the weight converter and for stage-by-stage checks.
        self.resized_size, self.padded_size, self.anchors, self.level_counts = resized, padded, anchors, counts
        self.transform, self.body, self.fpn, self.rpn_head = transform, body, fpn, rpn_head
        self.proposals_layer, self.detections_layer = proposals_layer, detections_layer
        self.box_align, self.mask_align, self.box_head, self.mask_head = box_align, mask_align, box_head, mask_head
        # Training only (weightless): torchvision's training proposals.
        self.proposals_train = TorchvisionProposals(anchors, counts, resized, rpn_pre_nms_topk_train,
                                                    rpn_post_nms_topk_train, rpn_nms_iou, name="proposals_train")
        self._init_loss_trackers()

    def pyramid_features(self, images, training=False):
        """Raw images [B, h0, w0, 3] -> the FPN levels {"P2": ..., "P6": ...}."""
        return self.fpn(self.body(self.transform(images), training=training), training=training)

    def proposals(self, images):
        """Raw images -> (proposals [B, P, 4] in resized-image pixels, num [B])."""
        return self.proposals_layer(*self.rpn_head(self.pyramid_features(images)))

    @classmethod
    def loss_names(cls):
        return LOSSES

    def compute_losses(self, batch, training=True):
        """The five Mask R-CNN losses (`MaskRCNN`'s, module docstring) on a padded ground-truth
        batch in original-image pixels: {name: scalar}."""
        check_training_sizes(self.level_counts, self.rpn_pre_nms_topk_train, self.rpn_post_nms_topk_train,
                             self.rpn_batch_size, self.rpn_positive_fraction, self.roi_batch_size,
                             self.roi_positive_fraction)
        features = {k: tf.cast(v, tf.float32) for k, v in self.pyramid_features(batch["image"], training).items()}
        to_resized = np.float32(self.resized_size) / np.float32(self.image_size)  # (sy, sx)
        box_scale = tf.constant(np.tile(to_resized, 2), tf.float32)
        # Boxes in the resized image (the anchors'); the masks stay in original-image pixels.
        return losses.detection_losses(self, features, tf.cast(batch["boxes"], tf.float32) * box_scale,
                                       batch["classes"], batch["masks"], seeds=batch.get("seed"),
                                       mask_scale=box_scale, stop_proposal_gradient=True)

    def get_config(self):
        return {
            "input_shape": list(self.image_shape), "num_classes": self.num_classes, "min_size": self.min_size,
            "max_size": self.max_size, "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "anchor_sizes": list(self.anchor_sizes), "aspect_ratios": list(self.aspect_ratios),
            "rpn_pre_nms_topk": self.rpn_pre_nms_topk, "rpn_post_nms_topk": self.rpn_post_nms_topk,
            "rpn_nms_iou": self.rpn_nms_iou, "box_score_threshold": self.box_score_threshold,
            "box_nms_iou": self.box_nms_iou, "max_detections": self.max_detections,
            "roi_align_method": self.roi_align_method, "paste_masks": self.paste_masks,
            "trainable_stages": self.trainable_stages, "rpn_pre_nms_topk_train": self.rpn_pre_nms_topk_train,
            "rpn_post_nms_topk_train": self.rpn_post_nms_topk_train, "rpn_batch_size": self.rpn_batch_size,
            "rpn_positive_fraction": self.rpn_positive_fraction, "roi_batch_size": self.roi_batch_size,
            "roi_positive_fraction": self.roi_positive_fraction, **self.base_config(),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**legacy_detector_config(config))


def check_training_sizes(level_counts, pre_nms_topk, post_nms_topk, rpn_batch_size, rpn_positive_fraction,
                         roi_batch_size, roi_positive_fraction):
    """Raises ValueError, naming the argument, when the samples of training do not fit the anchors.

    Checked when training starts, not when the model is built: an inference-only model of a
    small image size keeps the defaults.

    Args:
        level_counts: anchors per level P2..P6.
        pre_nms_topk, post_nms_topk: the training proposals (per level before NMS, after).
        rpn_batch_size, rpn_positive_fraction: the RPN's anchor sample.
        roi_batch_size, roi_positive_fraction: the heads' ROI sample; its background part is
            drawn from the training proposals, which are fewer than `post_nms_topk` when the
            levels have fewer anchors.
    """
    proposals = min(post_nms_topk, sum(min(pre_nms_topk, c) for c in level_counts))
    background = roi_batch_size - int(round(roi_batch_size * roi_positive_fraction))
    if background > proposals:
        raise ValueError(f"`roi_batch_size` {roi_batch_size} samples {background} background ROIs, more than the "
                         f"{proposals} training proposals (`rpn_post_nms_topk_train` {post_nms_topk}, "
                         f"`rpn_pre_nms_topk_train` {pre_nms_topk} per level of {list(level_counts)} anchors); "
                         f"expected at most {proposals}")
    if int(round(rpn_batch_size * rpn_positive_fraction)) < 1 or rpn_batch_size > sum(level_counts):
        raise ValueError(f"`rpn_batch_size` {rpn_batch_size} (positive fraction {rpn_positive_fraction}): expected "
                         f"1 to {sum(level_counts)} anchors with at least one positive")
