"""The box-selection steps of Mask R-CNN as Keras layers (no weights): proposals, detections,
the detected class's mask, and pasting masks into the image.

    anchors      [A, 4]        constants of the configuration (kseg.ops.boxes.anchor_boxes)
    proposals    [B, P, 4]     with num_proposals [B]; rows past the count are zeros
    detections   boxes [B, D, 4], scores [B, D], classes [B, D] (1..K, 0 for padding), num [B]
"""

import keras
import numpy as np
import tensorflow as tf

from kseg.models.mask_rcnn.targets import BOX_WEIGHTS
from kseg.ops import boxes as box_ops
from kseg.ops import masks as mask_ops
from kseg.ops import nms


@keras.saving.register_keras_serializable(package="kseg")
class Proposals(keras.layers.Layer):
    """RPN outputs -> the top boxes after NMS: decode, clip, keep the `pre_nms_topk` best, NMS.

    Args:
        anchors: [A, 4] array.
        image_size: (H, W).
        pre_nms_topk, post_nms_topk: boxes kept before and after NMS (P = post_nms_topk).
        iou_threshold: NMS IoU (0.7).

    Call: (objectness logits [B, A], deltas [B, A, 4]) -> (proposals [B, P, 4], num [B]).
    """

    def __init__(self, anchors, image_size, pre_nms_topk=1000, post_nms_topk=1000, iou_threshold=0.7, **kwargs):
        kwargs.setdefault("dtype", "float32")  # box decoding and NMS scores stay float32
        super().__init__(**kwargs)
        self.anchors = np.asarray(anchors, np.float32)
        self.image_size = tuple(image_size)
        self.pre_nms_topk = min(int(pre_nms_topk), len(self.anchors))
        self.post_nms_topk = int(post_nms_topk)
        self.iou_threshold = iou_threshold

    def call(self, logits, deltas):
        scores, index = tf.math.top_k(tf.stop_gradient(logits), self.pre_nms_topk)
        # Every anchor is decoded, then the top ones are picked (the same values as decoding the
        # picked ones): a GATHER from a computed tensor, not from the constant anchors, which an
        # fp16 export stores in float16 and LiteRT's GPU accelerator then refuses to gather from.
        boxes = box_ops.decode_boxes(tf.stop_gradient(deltas), tf.constant(self.anchors))
        boxes = box_ops.clip_boxes(nms.batch_gather(boxes, index), self.image_size)
        keep, valid = nms.padded_nms(boxes, scores, self.post_nms_topk, self.iou_threshold)
        proposals = nms.batch_gather(boxes, keep)
        proposals = tf.where(tf.expand_dims(nms.valid_mask(valid, self.post_nms_topk), -1), proposals, 0.0)
        return proposals, valid

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors.tolist(), "image_size": self.image_size,
                "pre_nms_topk": self.pre_nms_topk, "post_nms_topk": self.post_nms_topk,
                "iou_threshold": self.iou_threshold}


@keras.saving.register_keras_serializable(package="kseg")
class Detections(keras.layers.Layer):
    """Box-head outputs -> final detections: per-class boxes and scores, a score threshold,
    NMS within each class, the `max_detections` best.

    Call: (proposals [B, P, 4], num_proposals [B], class logits [B, P, K + 1],
    deltas [B, P, K, 4]) -> (boxes [B, D, 4], scores [B, D], classes [B, D], num [B]).
    """

    def __init__(self, image_size, max_detections=100, score_threshold=0.05, iou_threshold=0.5,
                 pre_nms_topk=1000, **kwargs):
        kwargs.setdefault("dtype", "float32")  # softmax, box decoding and NMS stay float32
        super().__init__(**kwargs)
        self.image_size = tuple(image_size)
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.pre_nms_topk = pre_nms_topk

    def call(self, proposals, num_proposals, logits, deltas):
        num_classes = deltas.shape[2]
        count = proposals.shape[1]
        probabilities = tf.nn.softmax(logits, axis=-1)[..., 1:]  # [B, P, K]
        probabilities *= tf.cast(nms.valid_mask(num_proposals, count), tf.float32)[..., None]
        boxes = box_ops.decode_boxes(deltas, proposals[:, :, None, :], weights=BOX_WEIGHTS)
        boxes = box_ops.clip_boxes(boxes, self.image_size)
        batch = tf.shape(proposals)[0]
        flat_scores = tf.reshape(probabilities, (batch, count * num_classes))
        flat_boxes = tf.reshape(boxes, (batch, count * num_classes, 4))
        classes = tf.tile(tf.range(1, num_classes + 1, dtype=tf.int32)[None], [count, 1])
        flat_classes = tf.reshape(classes, (1, count * num_classes))
        scores, index = tf.math.top_k(flat_scores, min(self.pre_nms_topk, count * num_classes))
        candidates = nms.batch_gather(flat_boxes, index)
        candidate_classes = tf.reshape(tf.gather(flat_classes[0], tf.reshape(index, [-1])), tf.shape(index))
        keep, valid = nms.batched_class_nms(
            candidates, scores, candidate_classes, self.max_detections, self.iou_threshold, self.score_threshold,
            coordinate_limit=max(self.image_size) + 1.0,
        )
        mask = nms.valid_mask(valid, self.max_detections)
        out_boxes = tf.where(tf.expand_dims(mask, -1), nms.batch_gather(candidates, keep), 0.0)
        out_scores = tf.where(mask, nms.batch_gather(scores, keep), 0.0)
        out_classes = tf.where(mask, nms.batch_gather(candidate_classes, keep), 0)
        return out_boxes, out_scores, out_classes, valid

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "max_detections": self.max_detections,
                "score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
                "pre_nms_topk": self.pre_nms_topk}


@keras.saving.register_keras_serializable(package="kseg")
class DetectedMasks(keras.layers.Layer):
    """Per-class mask logits -> the detected class's mask probabilities, optionally pasted into
    the image.

    Args:
        image_size: (H, W), used when `paste` is True.
        paste: True: [B, D, H, W] in image coordinates; False: [B, D, S, S] on each box.

    Call: (mask logits [B, D, S, S, K], classes [B, D], boxes [B, D, 4]) -> masks.
    """

    def __init__(self, image_size, paste=True, **kwargs):
        kwargs.setdefault("dtype", "float32")  # mask probabilities and pasting stay float32
        super().__init__(**kwargs)
        self.image_size = tuple(image_size)
        self.paste = paste

    def call(self, logits, classes, boxes):
        probabilities = tf.sigmoid(mask_ops.class_masks(logits, classes)) * tf.cast(classes > 0, tf.float32)[..., None, None]
        if not self.paste:
            return probabilities
        return mask_ops.paste_masks(probabilities, boxes, self.image_size)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "paste": self.paste}
