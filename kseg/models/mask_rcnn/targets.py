"""Training targets of Mask R-CNN, computed in the graph from padded ground truth.

    anchors      [A, 4]        (y1, x1, y2, x2) pixels, kseg.ops.boxes.anchor_boxes order
    gt_boxes     [B, M, 4]     padded to M = max_instances; padding rows are zeros
    gt_classes   [B, M]        int32, 1..K; 0 marks padding
    gt_masks     [B, M, H, W]  uint8 {0, 1}
    proposals    [B, P, 4]     with proposal_valid [B, P] bool

Sampling is random but shape-static: every tensor has a fixed size whatever the number of
objects, so the step runs under `fit`, tf.distribute and XLA.
"""

import tensorflow as tf

from kseg.ops import boxes as box_ops

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # box-head delta weights (Fast R-CNN)


def _matches(candidates, gt_boxes, gt_valid):
    """IoU of every candidate with every real ground-truth box: (iou [B, N, M] with -1 for
    padding columns, best IoU [B, N], index of the best box [B, N])."""
    iou = box_ops.iou_matrix(candidates, gt_boxes)
    iou = tf.where(gt_valid[:, None, :], iou, -1.0)
    return iou, tf.reduce_max(iou, axis=-1), tf.argmax(iou, axis=-1, output_type=tf.int32)


def _kth_largest(values, k):
    """[B, N] -> [B, 1], the k-th largest value of each row (k static, 1-based)."""
    return tf.math.top_k(values, k).values[:, k - 1 : k]


def sampling_noise(shape, seeds=None, stream=0):
    """Uniform [0, 1) noise of `shape` [B, N] for random sampling.

    With `seeds` int [B, 2] (each example's own stateless seed, `instance_dataset`'s "seed"),
    row b depends on seeds[b] and `stream` only: an example is sampled the same way on any
    replica and in any batch, so N replicas train like one device and a resumed run like an
    uninterrupted one. Without seeds, TensorFlow's stateful random stream.
    """
    if seeds is None:
        return tf.random.uniform(shape)
    seeds = tf.cast(seeds, tf.int64)
    noise = tf.map_fn(lambda seed: tf.random.stateless_uniform(
        shape[1:], tf.random.experimental.stateless_fold_in(seed, stream)), seeds,
        fn_output_signature=tf.TensorSpec([None], tf.float32))
    return tf.reshape(noise, shape)


def sample_anchors(positive, negative, num_samples, positive_fraction, seeds=None):
    """Random balanced sample over anchors, as masks: (sampled positives [B, A], negatives [B, A]).

    At most num_samples * positive_fraction positives; negatives fill the rest up to num_samples.
    `seeds`: see `sampling_noise`.
    """
    noise = sampling_noise(tf.shape(positive), seeds, stream=0)
    max_positive = int(round(num_samples * positive_fraction))
    pos_score = tf.where(positive, noise, -1.0)
    take_pos = positive & (pos_score >= _kth_largest(pos_score, max_positive))
    num_pos = tf.reduce_sum(tf.cast(take_pos, tf.int32), axis=1)
    neg_score = tf.where(negative, noise, -1.0)
    ranked = tf.math.top_k(neg_score, num_samples).values  # [B, num_samples], descending
    # The (num_samples - num_pos)-th largest score is the last negative taken.
    cut = tf.gather(ranked, tf.maximum(num_samples - num_pos - 1, 0), batch_dims=1)[:, None]
    take_neg = negative & (neg_score >= cut) & ((num_samples - num_pos) > 0)[:, None]
    return take_pos, take_neg


def rpn_targets(anchors, gt_boxes, gt_classes, *, positive_iou=0.7, negative_iou=0.3, num_samples=256,
                positive_fraction=0.5, seeds=None):
    """Anchor labels for the RPN (Ren et al. 2015).

    An anchor is positive at IoU >= positive_iou with some box, or when it is a box's best
    anchor (IoU > 0); negative below negative_iou; in between it is ignored.

    Returns:
        dict: "positive", "negative" [B, A] bool (the sampled ones), "deltas" [B, A, 4] targets
        (weights 1, 1, 1, 1; meaningful where positive).
    """
    gt_valid = gt_classes > 0
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    batch = tf.shape(gt_boxes)[0]
    tiled = tf.tile(anchors[None], [batch, 1, 1])
    iou, best, match = _matches(tiled, gt_boxes, gt_valid)
    gt_best = tf.reduce_max(iou, axis=1, keepdims=True)  # [B, 1, M]
    is_best = tf.reduce_any((iou >= gt_best) & (gt_best > 0.0) & gt_valid[:, None, :], axis=-1)
    positive = (best >= positive_iou) | is_best
    negative = (best < negative_iou) & ~positive
    take_pos, take_neg = sample_anchors(positive, negative, num_samples, positive_fraction, seeds)
    matched = tf.gather(gt_boxes, match, batch_dims=1)
    return {"positive": take_pos, "negative": take_neg, "deltas": box_ops.encode_boxes(matched, tiled)}


def roi_targets(proposals, proposal_valid, gt_boxes, gt_classes, *, num_samples=512, positive_fraction=0.25,
                foreground_iou=0.5, seeds=None):
    """Samples the ROIs the box and mask heads train on (the ground-truth boxes join the proposals).

    The first round(num_samples * positive_fraction) slots hold foreground ROIs (IoU >=
    foreground_iou), the rest background ones; a slot with nothing to hold has valid = False.

    Returns:
        dict: "rois" [B, S, 4], "valid" [B, S] bool, "foreground" [B, S] bool, "classes" [B, S]
        (0 for background), "matched" [B, S] index of the ground-truth box, "deltas" [B, S, 4]
        box targets (BOX_WEIGHTS), "num_foreground_slots" (a Python int).
    """
    gt_valid = gt_classes > 0
    rois = tf.concat([proposals, gt_boxes], axis=1)
    valid = tf.concat([proposal_valid, gt_valid], axis=1)
    _, best, match = _matches(rois, gt_boxes, gt_valid)
    foreground = valid & (best >= foreground_iou)
    background = valid & ~foreground
    noise = sampling_noise(tf.shape(best), seeds, stream=1)
    slots_fg = int(round(num_samples * positive_fraction))
    fg_value, fg_index = tf.math.top_k(tf.where(foreground, noise, -1.0), slots_fg)
    bg_value, bg_index = tf.math.top_k(tf.where(background, noise, -1.0), num_samples - slots_fg)
    index = tf.concat([fg_index, bg_index], axis=1)
    is_fg = tf.concat([fg_value >= 0.0, tf.zeros_like(bg_value, tf.bool)], axis=1)
    ok = tf.concat([fg_value >= 0.0, bg_value >= 0.0], axis=1)
    sampled = tf.gather(rois, index, batch_dims=1)
    matched = tf.gather(match, index, batch_dims=1)
    classes = tf.where(is_fg, tf.gather(gt_classes, matched, batch_dims=1), 0)
    targets = box_ops.encode_boxes(tf.gather(gt_boxes, matched, batch_dims=1), sampled, weights=BOX_WEIGHTS)
    return {"rois": tf.stop_gradient(sampled), "valid": ok, "foreground": is_fg, "classes": classes,
            "matched": matched, "deltas": targets, "num_foreground_slots": slots_fg}


def mask_targets(gt_masks, rois, matched, size=28):
    """Each ROI's ground-truth mask cropped and resized to size x size, binarized at 0.5.

    Samples sit at the centres of the size x size bins of the ROI (the half-pixel convention
    of ROI Align: pixel i covers [i, i + 1), so bin centre c reads the mask at c - 0.5), read
    bilinearly from the full-resolution mask; a sample outside the mask's pixel centres reads
    0 (as crop_and_resize with extrapolation 0). Written with gathers, so it compiles with XLA.

    Args:
        gt_masks [B, M, H, W]; rois [B, F, 4] (y1, x1, y2, x2) pixels; matched [B, F] index into M.

    Returns:
        float32 [B, F, size, size] in {0, 1}.
    """
    height, width = gt_masks.shape[2], gt_masks.shape[3]
    count = tf.shape(gt_masks)[1]
    flat = tf.reshape(tf.cast(gt_masks, tf.float32), [-1])  # [B * M * H * W]
    batch_index = tf.range(tf.shape(rois)[0])[:, None]
    start = (batch_index * count + tf.cast(matched, tf.int32)) * (height * width)  # [B, F]
    y1, x1, y2, x2 = tf.unstack(tf.cast(rois, tf.float32), axis=-1)
    centres = tf.range(size, dtype=tf.float32) + 0.5
    rows = _bilinear_taps(y1[..., None] + centres * ((y2 - y1) / size)[..., None] - 0.5, height)
    cols = _bilinear_taps(x1[..., None] + centres * ((x2 - x1) / size)[..., None] - 0.5, width)
    crops = 0.0
    for row, row_weight in rows:  # [B, F, size] each
        for col, col_weight in cols:
            index = start[..., None, None] + row[..., :, None] * width + col[..., None, :]
            crops += tf.gather(flat, index) * row_weight[..., :, None] * col_weight[..., None, :]
    return tf.cast(crops >= 0.5, tf.float32)


def _bilinear_taps(points, size):
    """The two bilinear neighbours (index int32, weight) of sample points on an axis of `size`
    pixels; points outside [0, size - 1] (or NaN) read pixel 0 with weight 0."""
    inside = (points >= 0.0) & (points <= size - 1.0)
    points = tf.where(inside, points, 0.0)
    lower = tf.floor(points)
    fraction = points - lower
    weight = tf.cast(inside, tf.float32)
    upper = tf.minimum(lower + 1.0, size - 1.0)
    return ((tf.cast(lower, tf.int32), (1.0 - fraction) * weight), (tf.cast(upper, tf.int32), fraction * weight))
