"""MaskFormer's targets and set-prediction loss (Cheng et al. 2021, section 3.2).

    batch            instance_dataset(..., semantic=True): image [B, H, W, 3], classes [B, M]
                     (thing categories 1..K_things, 0 pads), masks uint8 [B, M, H, W], semantic
                     int32 [B, H, W] (0 thing, 1..S stuff, IGNORE void)
    targets          T = M + S slots per image: "classes" [B, T] int32 class index 0..K-1
                     (K = K_things + S; stuff s is class K_things + s - 1, category
                     K_things + s), K on padding; "masks" [B, P, T] float {0, 1} at 1/4 scale;
                     "valid" [B, T] bool; "weights" [B, P] float {0, 1}, 0 on void pixels
    class_logits     [B, N, K + 1]  per query, last class "no object"
    mask_logits      [B, P, N]      at 1/4 scale, P = H / 4 x W / 4

Each image's valid targets are matched one-to-one to queries by the Hungarian algorithm on
    cost = -class_weight p_n(c_t) + mask_weight focal(m_n, t) + dice_weight dice(m_n, t)
(focal and dice as means over the non-void pixels). The loss is the cross-entropy of every
query against its matched class or "no object" (weighted no_object_weight) plus, over the
matched pairs, mask_weight x sigmoid focal loss and dice_weight x dice loss, each averaged over
the valid targets of the batch.
"""

import tensorflow as tf

from kseg.ops import matching
from kseg.ops.replicas import global_count

IGNORE = 255


def panoptic_targets(batch, num_thing_classes, num_stuff_classes, stride=4):
    """The padded per-image target segments of a panoptic batch (module docstring).

    Thing instance m is target m; stuff class s present in the semantic map is target M + s - 1.
    Masks are average-pooled by `stride` and thresholded at 0.5; so are the non-void pixels.

    Args:
        batch: dict with "classes" [B, M], "masks" [B, M, H, W] and, when num_stuff_classes >
            0, "semantic" [B, H, W].
        num_thing_classes: K_things; num_stuff_classes: S.
        stride: downsampling to the mask logits (4).

    Returns:
        dict "classes" [B, T], "masks" [B, P, T], "valid" [B, T], "weights" [B, P].
    """
    classes = tf.cast(batch["classes"], tf.int32)
    masks = tf.transpose(tf.cast(batch["masks"], tf.float32), [0, 2, 3, 1])  # [B, H, W, M]
    height, width = masks.shape[1], masks.shape[2]
    valid = [classes > 0]
    target_classes = [classes - 1]
    if num_stuff_classes:
        if "semantic" not in batch:
            raise ValueError(f"MaskFormer with num_stuff_classes={num_stuff_classes} needs the batch's 'semantic' "
                             f"map (instance_dataset(..., semantic=True)); the batch has {sorted(batch)}.")
        semantic = tf.cast(batch["semantic"], tf.int32)
        stuff = tf.one_hot(semantic, num_stuff_classes + 1, dtype=tf.float32)[..., 1:]  # IGNORE -> all zero
        masks = tf.concat([masks, stuff], axis=-1)
        valid.append(tf.reduce_max(stuff, axis=[1, 2]) > 0)
        offsets = tf.range(num_thing_classes, num_thing_classes + num_stuff_classes)
        target_classes.append(tf.ones_like(valid[-1], tf.int32) * offsets)
        counted = tf.cast(tf.not_equal(semantic, IGNORE), tf.float32)
    else:
        counted = tf.ones_like(masks[..., 0])
    valid = tf.concat(valid, axis=1)
    num_classes = num_thing_classes + num_stuff_classes
    target_classes = tf.where(valid, tf.clip_by_value(tf.concat(target_classes, axis=1), 0, num_classes - 1),
                              num_classes)
    pool = lambda x: tf.cast(tf.nn.avg_pool2d(x, stride, stride, "VALID") >= 0.5, tf.float32)  # noqa: E731
    pixels = (height // stride) * (width // stride)
    weights = tf.reshape(pool(counted[..., None]), [-1, pixels])
    masks = tf.reshape(pool(masks), [-1, pixels, masks.shape[-1]]) * weights[..., None]
    return {"classes": target_classes, "masks": masks, "valid": valid, "weights": weights}


def match_cost(class_logits, mask_logits, targets, class_weight=1.0, mask_weight=20.0, dice_weight=1.0):
    """The matching cost [B, N, T] between queries and targets (module docstring)."""
    probs = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)
    mask_logits = tf.cast(mask_logits, tf.float32)
    return (class_weight * matching.pairwise_class_cost(probs, targets["classes"])
            + mask_weight * matching.pairwise_focal_cost(mask_logits, targets["masks"], targets["weights"])
            + dice_weight * matching.pairwise_dice_cost(mask_logits, targets["masks"], targets["weights"]))


def set_prediction_losses(class_logits, mask_logits, targets, class_weight=1.0, mask_weight=20.0, dice_weight=1.0,
                          no_object_weight=0.1):
    """Hungarian-matched classification, focal and dice losses of one set of predictions.

    Args:
        class_logits: [B, N, K + 1]; mask_logits: [B, P, N]; targets: `panoptic_targets`.
        class_weight, mask_weight, dice_weight: the loss (and matching cost) weights (1, 20, 1).
        no_object_weight: cross-entropy weight of queries matched to nothing (0.1).

    Returns:
        ({"class", "mask", "dice": weighted scalars}, matched [B, T] int32 query per target, -1
        for padding).
    """
    class_logits = tf.cast(class_logits, tf.float32)
    mask_logits = tf.cast(mask_logits, tf.float32)
    num_queries, num_outputs = class_logits.shape[1], class_logits.shape[2]
    cost = match_cost(class_logits, mask_logits, targets, class_weight, mask_weight, dice_weight)
    matched = matching.hungarian_match(cost, targets["valid"])
    pairs = tf.cast(tf.equal(matched[..., None], tf.range(num_queries)), tf.float32)  # [B, T, N]

    # Classification: each query's matched class, "no object" (index K) if it has no target.
    no_object = num_outputs - 1
    target = tf.cast(tf.reduce_sum(pairs * tf.cast(targets["classes"] - no_object, tf.float32)[..., None], axis=1),
                     tf.int32) + no_object  # [B, N]
    entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=class_logits)
    weight = tf.where(tf.equal(target, no_object), no_object_weight, 1.0)
    class_loss = tf.reduce_sum(entropy * weight) / global_count(tf.reduce_sum(weight))

    # Masks of the matched pairs: [B, P, T], the prediction of target t's query.
    is_matched = tf.reduce_sum(pairs, axis=2)  # [B, T]
    count = tf.maximum(global_count(tf.reduce_sum(is_matched)), 1.0)
    predicted = tf.matmul(mask_logits, pairs, transpose_b=True)
    truth, counted = targets["masks"], targets["weights"][..., None]
    positive, negative = matching.sigmoid_focal_terms(predicted)
    focal = tf.reduce_sum((truth * positive + (1.0 - truth) * negative) * counted, axis=1)
    focal = focal / tf.maximum(tf.reduce_sum(counted, axis=1), 1.0)
    prob = tf.sigmoid(predicted) * counted
    dice = 1.0 - (2.0 * tf.reduce_sum(prob * truth, axis=1) + 1.0) / (
        tf.reduce_sum(prob, axis=1) + tf.reduce_sum(truth * counted, axis=1) + 1.0)
    losses = {"class": class_weight * class_loss,
              "mask": mask_weight * tf.reduce_sum(focal * is_matched) / count,
              "dice": dice_weight * tf.reduce_sum(dice * is_matched) / count}
    return losses, matched
