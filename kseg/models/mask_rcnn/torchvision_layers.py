"""The weightless steps of torchvision's Mask R-CNN (v1) as Keras layers, with static shapes.

    original     [B, h0, w0, 3]  raw pixels [0, 255], the size the model is built for
    resized      (h, w)          torchvision's resize of (h0, w0): min side -> min_size unless the
                                 max side would pass max_size (`resized_size`)
    image        [B, H, W, 3]    normalized, resized, zero-padded to multiples of 32
    anchors      [A, 4]          `kseg.ops.boxes.torchvision_anchor_boxes` of the padded image
    proposals    [B, P, 4]       with num [B]; rows past num are zeros
    detections   boxes [B, D, 4] (y1, x1, y2, x2), scores [B, D], classes [B, D] (1..K, 0 pads),
                 num [B]; in resized-image pixels until `TorchvisionPostprocess`

torchvision's rules, and how they become static here:
- RPN (`RegionProposalNetwork.filter_proposals`): per level, the `pre_nms_topk` best anchors
  by objectness logit; decode (weights 1, 1, 1, 1; log-size deltas clipped at log(1000 / 16));
  clip to the resized image (not the padded one); drop boxes under `min_size` (1e-3) on a side;
  NMS (IoU 0.7) within each level on the sigmoid scores; the `post_nms_topk` best of all levels.
- Box head (`RoIHeads.postprocess_detections`): softmax; decode each class's deltas (weights
  10, 10, 5, 5); clip; drop the background, scores <= `score_threshold` and sides under 1e-2;
  NMS (IoU 0.5) within each class; the `max_detections` best. Each class runs its own NMS
  (`kseg.ops.nms.separate_nms`), like torchvision's per-class loop, with no coordinate shift.
- Postprocess (`GeneralizedRCNNTransform.postprocess`): boxes scaled by original / resized size
  per axis, masks pasted with `kseg.ops.masks.paste_masks_torchvision` into the original size.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from kseg.models.mask_rcnn.targets import BOX_WEIGHTS
from kseg.ops import boxes as box_ops
from kseg.ops import masks as mask_ops
from kseg.ops import nms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def resized_size(original_size, min_size=800, max_size=1333):
    """torchvision's resize of an (h0, w0) image: scale = min(min_size / min side, max_size / max
    side), each side floor(side * scale) (F.interpolate with recompute_scale_factor=True)."""
    h0, w0 = (int(v) for v in original_size)
    if h0 < 1 or w0 < 1:
        raise ValueError(f"image_size must be two positive ints (H, W); got {original_size!r}.")
    scale = min(float(min_size) / min(h0, w0), float(max_size) / max(h0, w0))
    return int(math.floor(h0 * scale)), int(math.floor(w0 * scale))


def padded_size(size, divisor=32):
    """(h, w) rounded up to multiples of `divisor`, torchvision's `batch_images`."""
    return tuple(int(math.ceil(v / divisor) * divisor) for v in size)


@keras.saving.register_keras_serializable(package="kseg")
class TorchvisionTransform(keras.layers.Layer):
    """Raw pixels -> torchvision's network input: (x / 255 - mean) / std, bilinear resize
    (half-pixel centres, no antialiasing), zero padding at the bottom and right.

    Args:
        resized_size: (h, w) after resizing (`resized_size`).
        padded_size: (H, W), multiples of 32, at least `resized_size`.
        mean, std: per-channel normalization of [0, 1] pixels (ImageNet's).

    Call: [B, h0, w0, 3] -> [B, H, W, 3].
    """

    def __init__(self, resized_size, padded_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.resized_size = tuple(int(v) for v in resized_size)
        self.padded_size = tuple(int(v) for v in padded_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def call(self, image):
        x = tf.cast(image, tf.float32) / 255.0
        x = (x - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)
        if tuple(image.shape[1:3]) != self.resized_size:
            x = tf.image.resize(x, self.resized_size, method="bilinear")
        pad_h = self.padded_size[0] - self.resized_size[0]
        pad_w = self.padded_size[1] - self.resized_size[1]
        return tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])

    def get_config(self):
        return {**super().get_config(), "resized_size": self.resized_size, "padded_size": self.padded_size,
                "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="kseg")
class TorchvisionProposals(keras.layers.Layer):
    """RPN outputs -> proposals, torchvision's `filter_proposals` at inference.

    Args:
        anchors: [A, 4] array, levels concatenated.
        level_counts: anchors of each level (they sum to A).
        image_size: (h, w) of the resized image, which boxes are clipped to.
        pre_nms_topk: anchors kept per level before NMS (1000).
        post_nms_topk: P, proposals kept (1000).
        iou_threshold: 0.7. min_size: boxes with a side under it are dropped (1e-3).

    Call: (objectness logits [B, A], deltas [B, A, 4]) -> (proposals [B, P, 4], num [B]).
    """

    def __init__(self, anchors, level_counts, image_size, pre_nms_topk=1000, post_nms_topk=1000, iou_threshold=0.7,
                 min_size=1e-3, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.anchors = np.asarray(anchors, np.float32)
        self.level_counts = tuple(int(c) for c in level_counts)
        if sum(self.level_counts) != len(self.anchors):
            raise ValueError(f"level_counts {self.level_counts} sum to {sum(self.level_counts)}; expected the "
                             f"{len(self.anchors)} anchors.")
        self.image_size = tuple(int(v) for v in image_size)
        self.pre_nms_topk = int(pre_nms_topk)
        self.post_nms_topk = int(post_nms_topk)
        self.iou_threshold = float(iou_threshold)
        self.min_size = float(min_size)

    def call(self, logits, deltas):
        if logits.shape[1] is not None and logits.shape[1] != len(self.anchors):
            raise ValueError(f"the RPN gave {logits.shape[1]} objectness logits; expected one per anchor "
                             f"({len(self.anchors)}).")
        groups, start = [], 0
        for count in self.level_counts:
            top, index = tf.math.top_k(logits[:, start:start + count], min(self.pre_nms_topk, count))
            anchors = tf.gather(tf.constant(self.anchors[start:start + count]), index)
            level_deltas = tf.gather(deltas[:, start:start + count], index, batch_dims=1)
            boxes = box_ops.clip_boxes(box_ops.decode_boxes(level_deltas, anchors, weights=RPN_WEIGHTS),
                                       self.image_size)
            scores = tf.where(_big_enough(boxes, self.min_size), tf.sigmoid(top), -1.0)
            groups.append((boxes, scores))
            start += count
        boxes, _, _, valid = nms.separate_nms(groups, self.post_nms_topk, self.post_nms_topk, self.iou_threshold,
                                              score_threshold=-0.5)
        return boxes, valid

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors.tolist(), "level_counts": self.level_counts,
                "image_size": self.image_size, "pre_nms_topk": self.pre_nms_topk,
                "post_nms_topk": self.post_nms_topk, "iou_threshold": self.iou_threshold, "min_size": self.min_size}


@keras.saving.register_keras_serializable(package="kseg")
class TorchvisionDetections(keras.layers.Layer):
    """Box-head outputs -> detections, torchvision's `postprocess_detections`.

    Args:
        image_size: (h, w) of the resized image, which boxes are clipped to.
        max_detections: D (100). score_threshold: scores must exceed it (0.05).
        iou_threshold: per-class NMS (0.5). min_size: boxes with a side under it are dropped (1e-2).

    Call: (proposals [B, P, 4], num_proposals [B], class logits [B, P, K + 1], deltas
    [B, P, K, 4]) -> (boxes [B, D, 4], scores [B, D], classes [B, D], num [B]).
    """

    def __init__(self, image_size, max_detections=100, score_threshold=0.05, iou_threshold=0.5, min_size=1e-2,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.image_size = tuple(int(v) for v in image_size)
        self.max_detections = int(max_detections)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.min_size = float(min_size)

    def call(self, proposals, num_proposals, logits, deltas):
        count, num_classes = deltas.shape[1], deltas.shape[2]
        probabilities = tf.nn.softmax(logits, axis=-1)[..., 1:]  # [B, P, K]
        boxes = box_ops.decode_boxes(deltas, proposals[:, :, None, :], weights=BOX_WEIGHTS)
        boxes = box_ops.clip_boxes(boxes, self.image_size)  # [B, P, K, 4]
        usable = _big_enough(boxes, self.min_size) & nms.valid_mask(num_proposals, count)[..., None]
        scores = tf.where(usable, probabilities, 0.0)
        groups = [(boxes[:, :, k], scores[:, :, k]) for k in range(num_classes)]
        out_boxes, out_scores, group, valid = nms.separate_nms(
            groups, self.max_detections, self.max_detections, self.iou_threshold, self.score_threshold)
        classes = tf.where(nms.valid_mask(valid, out_boxes.shape[1]), group + 1, 0)
        return out_boxes, out_scores, classes, valid

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "max_detections": self.max_detections,
                "score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
                "min_size": self.min_size}


@keras.saving.register_keras_serializable(package="kseg")
class TorchvisionPostprocess(keras.layers.Layer):
    """Detections in resized-image pixels -> the original image: boxes scaled per axis by
    original / resized size, ROI masks pasted (`paste_masks_torchvision`) when `paste` is True.

    Args:
        resized_size: (h, w). original_size: (h0, w0). paste: paste masks into (h0, w0).

    Call: (boxes [B, D, 4], masks [B, D, S, S]) -> (boxes [B, D, 4], masks [B, D, h0, w0] or
    [B, D, S, S]).
    """

    def __init__(self, resized_size, original_size, paste=True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.resized_size = tuple(int(v) for v in resized_size)
        self.original_size = tuple(int(v) for v in original_size)
        self.paste = bool(paste)

    def call(self, boxes, masks):
        ratio = np.float32(self.original_size) / np.float32(self.resized_size)  # (ry, rx) in float32
        boxes = boxes * tf.constant([ratio[0], ratio[1], ratio[0], ratio[1]], tf.float32)
        if self.paste:
            masks = mask_ops.paste_masks_torchvision(masks, boxes, self.original_size)
        return boxes, masks

    def get_config(self):
        return {**super().get_config(), "resized_size": self.resized_size, "original_size": self.original_size,
                "paste": self.paste}


def _big_enough(boxes, min_size):
    """[..., 4] boxes -> [...] bool, True where both sides are at least `min_size`."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.logical_and(y2 - y1 >= min_size, x2 - x1 >= min_size)
