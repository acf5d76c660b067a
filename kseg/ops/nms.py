"""Non-maximum suppression with static shapes, for training, XLA and TFLite.

    boxes    [B, N, 4]  (y1, x1, y2, x2) pixels
    scores   [B, N]
    indices  [B, K]     int32 into N; entries past `valid` are 0 (padding)
    valid    [B]        int32, how many of the K are real

Each image runs TensorFlow's NonMaxSuppressionV4 with `pad_to_max_output_size`: greedy NMS in
descending score order, which converts to TFLite's builtin NON_MAX_SUPPRESSION_V4 (one op; the
Python `non_max_suppression_padded` becomes a WHILE loop of small ops instead).

In a graph exported with a static batch of one, the tensors around the NMS op are reshaped,
never indexed (`x[0]`, `x[None]`), and rows are picked by `batch_gather`'s rank-1 GATHER: LiteRT's
GPU accelerator takes RESHAPE and that GATHER, not the STRIDED_SLICE or batched GATHER the other
spellings convert to, so only the NMS op itself has to run on the CPU.
"""

import tensorflow as tf


def _nms_one(boxes, scores, max_output, iou_threshold, score_threshold):
    indices, valid = tf.raw_ops.NonMaxSuppressionV4(
        boxes=boxes, scores=scores, max_output_size=max_output, iou_threshold=iou_threshold,
        score_threshold=score_threshold, pad_to_max_output_size=True,
    )
    return tf.cast(indices, tf.int32), tf.cast(valid, tf.int32)


def padded_nms(boxes, scores, max_output, iou_threshold, score_threshold=float("-inf")):
    """Greedy NMS per image, padded to `max_output`: (indices [B, K], valid [B])."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    if boxes.shape[0] == 1 and boxes.shape[1] is not None:  # a static batch of one (the exported graph): no loop
        count = boxes.shape[1]
        indices, valid = _nms_one(tf.reshape(boxes, [count, 4]), tf.reshape(scores, [count]), max_output,
                                  iou_threshold, score_threshold)
        return tf.reshape(indices, [1, max_output]), tf.reshape(valid, [1])
    return tf.map_fn(
        lambda args: _nms_one(args[0], args[1], max_output, iou_threshold, score_threshold),
        (boxes, scores), fn_output_signature=(tf.TensorSpec((max_output,), tf.int32), tf.TensorSpec((), tf.int32)),
    )


def valid_mask(valid, size):
    """[B] counts -> [B, size] bool, True for the first `valid` entries."""
    return tf.reshape(tf.range(size), [1, size]) < tf.reshape(tf.cast(valid, tf.int32), [-1, 1])


def batch_gather(params, indices):
    """Rows of each image: `tf.gather(params, indices, batch_dims=1)`, as one GATHER with
    rank-1 indices into the flattened rows (the form LiteRT's GPU accelerator takes).

    Args:
        params: [B, N, ...] with static N and trailing dimensions.
        indices: int [B, K] into N.

    Returns:
        [B, K, ...]: params[b, indices[b, k]].
    """
    params = tf.convert_to_tensor(params)
    indices = tf.cast(indices, tf.int32)
    count, picks, tail = params.shape[1], indices.shape[1], params.shape[2:]
    if count is None or picks is None or not tail.is_fully_defined():
        return tf.gather(params, indices, batch_dims=1)
    tail = tail.as_list()
    flat = tf.reshape(params, [-1, *tail])  # [B * N, ...]
    if params.shape[0] == 1:
        index = tf.reshape(indices, [picks])
    else:
        index = tf.reshape(indices + tf.expand_dims(tf.range(tf.shape(params)[0]) * count, -1), [-1])
    batch = params.shape[0] if params.shape[0] is not None else -1
    return tf.reshape(tf.gather(flat, index), [batch, picks, *tail])


def batched_class_nms(boxes, scores, classes, max_output, iou_threshold, score_threshold, coordinate_limit):
    """NMS within each class at once: boxes of class c are shifted by c * `coordinate_limit`, so
    boxes of different classes never overlap (one NMS call instead of one per class).

    Args:
        boxes [B, N, 4], scores [B, N], classes [B, N] (int); coordinate_limit: larger than any
        coordinate (e.g. max(H, W) + 1).

    Returns:
        (indices [B, max_output], valid [B]) as `padded_nms`.
    """
    shift = tf.expand_dims(tf.cast(classes, tf.float32), -1) * float(coordinate_limit)
    return padded_nms(boxes + shift, scores, max_output, iou_threshold, score_threshold)


def separate_nms(groups, max_per_group, max_output, iou_threshold, score_threshold=float("-inf")):
    """NMS within each group separately (one NMS call per group, no coordinate shift), then the
    `max_output` best of all kept boxes: torchvision's `batched_nms` done group by group.

    Unlike `batched_class_nms`, no coordinates are shifted, so IoUs are computed exactly as
    within one group. Kept boxes are ordered by descending score.

    Args:
        groups: list of (boxes [B, N_g, 4], scores [B, N_g]) pairs, one per group.
        max_per_group: boxes kept at most per group.
        max_output: K, boxes kept in all.
        iou_threshold, score_threshold: as `padded_nms` (a box scoring <= score_threshold is dropped).

    Returns:
        (boxes [B, K, 4], scores [B, K], group [B, K] int32, valid [B]); rows past `valid` are
        zero boxes with score 0 and group 0.
    """
    kept_boxes, kept_scores, kept_groups = [], [], []
    for g, (boxes, scores) in enumerate(groups):
        count = min(int(max_per_group), int(boxes.shape[1]))
        keep, valid = padded_nms(boxes, scores, count, iou_threshold, score_threshold)
        mask = valid_mask(valid, count)
        kept_boxes.append(tf.gather(boxes, keep, batch_dims=1))
        kept_scores.append(tf.where(mask, tf.gather(scores, keep, batch_dims=1), float("-inf")))
        kept_groups.append(tf.fill(tf.shape(keep), g))
    boxes, scores, groups = (tf.concat(x, axis=1) for x in (kept_boxes, kept_scores, kept_groups))
    count = min(int(max_output), int(scores.shape[1]))
    top, index = tf.math.top_k(scores, count)
    valid = tf.reduce_sum(tf.cast(top > float("-inf"), tf.int32), axis=1)
    mask = valid_mask(valid, count)
    out_boxes = tf.where(mask[..., None], tf.gather(boxes, index, batch_dims=1), 0.0)
    out_scores = tf.where(mask, top, 0.0)
    out_groups = tf.where(mask, tf.gather(groups, index, batch_dims=1), 0)
    return out_boxes, out_scores, out_groups, valid
