"""The five Mask R-CNN losses, one function for kseg's MaskRCNN and the torchvision-built one.

    features     {"P2": ..., "P6": ...} FPN levels, float32
    gt_boxes     [B, M, 4] (y1, x1, y2, x2) in the pixels of the image the anchors cover
    gt_classes   [B, M] 1..K, 0 pads
    gt_masks     [B, M, h, w] the instances' masks (any size; `mask_scale` maps boxes onto it)
    losses       {"rpn_objectness", "rpn_box", "box_class", "box_regression", "mask"}: scalars

RPN: logistic loss over the sampled anchors and smooth L1 (beta 1 / 9) over the positive ones,
both divided by B x rpn_batch_size. Box head: softmax cross-entropy over the valid ROIs and
smooth L1 (beta 1) of the ground-truth class's deltas over the foreground ones, divided by the
valid ROIs of all replicas. Mask head: per-pixel binary cross-entropy of the ground-truth class's
28 x 28 mask, averaged over the foreground ROIs of all replicas.
"""

import tensorflow as tf

from kseg.models.mask_rcnn import targets
from kseg.ops import masks as mask_ops
from kseg.ops import nms
from kseg.ops.replicas import global_count

LOSSES = ("rpn_objectness", "rpn_box", "box_class", "box_regression", "mask")


def detection_losses(model, features, gt_boxes, gt_classes, gt_masks, seeds=None, mask_scale=None,
                     stop_proposal_gradient=False):
    """The Mask R-CNN losses of `model`'s heads on `features` and padded ground truth.

    Args:
        model: a detector with `anchors`, `rpn_head`, `proposals_train`, `box_align`, `box_head`,
            `mask_align`, `mask_head` and the sample sizes `rpn_batch_size`,
            `rpn_positive_fraction`, `roi_batch_size`, `roi_positive_fraction`.
        features, gt_boxes, gt_classes, gt_masks: module docstring.
        seeds: None or [B, 2], each example's own sampling seed (targets.sampling_noise).
        mask_scale: None, or [4] per-coordinate factors from the boxes' pixels to the pixels of
            `gt_masks` (TorchvisionMaskRCNN: resized image -> original image).
        stop_proposal_gradient: the training proposals carry no gradient (torchvision's rule).

    Returns:
        {name: scalar} for the names of LOSSES.
    """
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_classes = tf.cast(gt_classes, tf.int32)
    logits, deltas = (tf.cast(t, tf.float32) for t in model.rpn_head(features))

    rpn = targets.rpn_targets(model.anchors, gt_boxes, gt_classes, num_samples=model.rpn_batch_size,
                              positive_fraction=model.rpn_positive_fraction, seeds=seeds)
    sampled = tf.cast(rpn["positive"] | rpn["negative"], tf.float32)
    positive = tf.cast(rpn["positive"], tf.float32)
    normalizer = tf.cast(tf.shape(gt_boxes)[0] * model.rpn_batch_size, tf.float32)
    objectness = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=logits)
    rpn_box = smooth_l1(deltas - tf.stop_gradient(rpn["deltas"]), beta=1.0 / 9.0)

    if stop_proposal_gradient:
        proposals, num_proposals = model.proposals_train(tf.stop_gradient(logits), tf.stop_gradient(deltas))
    else:
        proposals, num_proposals = model.proposals_train(logits, deltas)
    valid = nms.valid_mask(num_proposals, proposals.shape[1])
    rois = targets.roi_targets(proposals, valid, gt_boxes, gt_classes, num_samples=model.roi_batch_size,
                               positive_fraction=model.roi_positive_fraction, seeds=seeds)
    class_logits, box_deltas = (tf.cast(t, tf.float32) for t in model.box_head(model.box_align(features, rois["rois"])))
    roi_valid = tf.cast(rois["valid"], tf.float32)
    roi_count = tf.maximum(global_count(tf.reduce_sum(roi_valid)), 1.0)
    box_class = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=rois["classes"], logits=class_logits)
    own = tf.gather(box_deltas, tf.maximum(rois["classes"] - 1, 0), batch_dims=2)  # [B, S, 4]
    foreground = tf.cast(rois["foreground"], tf.float32)
    box_regression = smooth_l1(own - rois["deltas"], beta=1.0)

    slots = rois["num_foreground_slots"]
    fg_rois, fg_classes = rois["rois"][:, :slots], rois["classes"][:, :slots]
    mask_logits = tf.cast(model.mask_head(model.mask_align(features, fg_rois)), tf.float32)
    own_mask = mask_ops.class_masks(mask_logits, fg_classes)
    mask_boxes = fg_rois if mask_scale is None else fg_rois / mask_scale
    mask_target = targets.mask_targets(gt_masks, mask_boxes, rois["matched"][:, :slots], own_mask.shape[-1])
    mask_bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=mask_target, logits=own_mask), [2, 3])
    fg_slots = foreground[:, :slots]
    return {
        "rpn_objectness": tf.reduce_sum(objectness * sampled) / normalizer,
        "rpn_box": tf.reduce_sum(rpn_box * positive[..., None]) / normalizer,
        "box_class": tf.reduce_sum(box_class * roi_valid) / roi_count,
        "box_regression": tf.reduce_sum(box_regression * foreground[..., None]) / roi_count,
        "mask": tf.reduce_sum(mask_bce * fg_slots) / tf.maximum(global_count(tf.reduce_sum(fg_slots)), 1.0),
    }


def smooth_l1(diff, beta):
    """Elementwise smooth L1 (Huber / beta): 0.5 x^2 / beta below beta, |x| - beta / 2 above."""
    absolute = tf.abs(diff)
    return tf.where(absolute < beta, 0.5 * diff * diff / beta, absolute - 0.5 * beta)
