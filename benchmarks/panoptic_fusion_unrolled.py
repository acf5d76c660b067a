"""The panoptic fusion graph as it was before the loop over slots was slimmed: the baseline of
benchmarks/panoptic_fusion_time.py, kept so the old and new graphs run side by side in one process.

It binarizes and reorders the whole [D, H*W] mask stack, unstacks it, and paints the D slots in
a loop unrolled into the graph (about six full-image ops per slot), then takes the stuff classes
from ARG_MAX / SOFTMAX / ONE_HOT over the logits; a batch is cut into images and fused one by one.
Its rules and outputs are `kseg.ops.panoptic_fusion.panoptic_fusion`'s (the benchmark checks that
both agree on every output).
"""

import numpy as np
import tensorflow as tf

from kseg.ops.panoptic_fusion import OUTPUT_KEYS, _stuff_table, fusion_inputs


def _fuse_one(masks, scores, classes, num_detections, semantic_logits, *, stuff_categories, thing_class,
              score_threshold, mask_threshold, overlap_threshold, min_stuff_area, max_segments):
    num_slots, height, width = masks.shape
    num_channels = semantic_logits.shape[-1]
    category_of_channel, is_stuff = _stuff_table(num_channels, stuff_categories, thing_class)
    pixels = height * width
    f32 = tf.float32

    # 1. candidates, and their painting order from a rank (no sort op).
    index = tf.range(num_slots)
    num_detections = tf.reshape(tf.cast(num_detections, tf.int32), [])
    candidate = (index < num_detections) & (classes > 0) & (scores >= score_threshold)
    cand_f = tf.cast(candidate, f32)
    # precedes[j, i]: j paints before i (candidates first, then score desc, then index asc).
    higher = tf.cast(scores[:, None] > scores[None, :], f32)
    tie = tf.cast((scores[:, None] == scores[None, :]) & (index[:, None] < index[None, :]), f32)
    same = cand_f[:, None] * cand_f[None, :] + (1.0 - cand_f[:, None]) * (1.0 - cand_f[None, :])
    precedes = cand_f[:, None] * (1.0 - cand_f[None, :]) + same * tf.minimum(higher + tie, 1.0)
    rank = tf.cast(tf.reduce_sum(precedes, axis=0), tf.int32)  # a permutation of 0..D-1
    order = tf.reduce_sum(tf.cast(tf.equal(rank[:, None], index[None, :]), tf.int32) * index[:, None], axis=0)

    binary = tf.cast(tf.reshape(masks, [num_slots, pixels]) >= mask_threshold, f32)
    binary = tf.gather(binary, order)
    ordered_candidate = tf.gather(cand_f, order)
    mask_area = tf.reduce_sum(binary, axis=1)  # [D], exact integers in float32
    needed = tf.constant(overlap_threshold, f32) * mask_area

    # 2. sequential painting, unrolled over the static D. `claimed` is 0/1 per pixel; sums of
    # 0/1 floats are exact integers below 2**24 pixels. `first` keeps, per pixel, the priority
    # D - t of the first kept instance covering it (max over t); ids are looked up after the loop.
    claimed = first = None  # first: priority D - t of the pixel's first kept instance, or 0
    count = tf.zeros([], f32)
    kept, segment, visible = [], [], []
    for t, row in enumerate(tf.unstack(binary) if num_slots else []):
        overlap = 0.0 if claimed is None else tf.reduce_sum(row * claimed)
        vis = mask_area[t] - overlap
        keep = (ordered_candidate[t] * tf.cast(vis > 0, f32)
                * tf.cast(vis >= needed[t], f32) * tf.cast(count < max_segments, f32))
        count = count + keep
        claimed = keep * row if claimed is None else tf.maximum(claimed, keep * row)
        first = (keep * (num_slots - t)) * row if first is None else tf.maximum(first, (keep * (num_slots - t)) * row)
        kept.append(keep)
        segment.append(count)
        visible.append(vis)
    kept = tf.stack(kept) if num_slots else tf.zeros([0], f32)
    segment = tf.stack(segment) if num_slots else tf.zeros([0], f32)
    visible = tf.stack(visible) if num_slots else tf.zeros([0], f32)
    num_things = count
    if first is None:
        first = tf.zeros([pixels], f32)
    by_priority = tf.concat([tf.zeros([1], f32), tf.reverse(segment * kept, [0])], 0)  # [D + 1]
    label = tf.gather(by_priority, tf.cast(first, tf.int32))
    free = tf.cast(tf.equal(first, 0.0), f32)

    # 3. stuff on the unclaimed pixels.
    logits = tf.reshape(tf.cast(semantic_logits, f32), [pixels, num_channels])
    channel = tf.argmax(logits, axis=-1, output_type=tf.int32)
    probability = tf.nn.softmax(logits, axis=-1)
    member = tf.cast(tf.equal(channel[:, None], tf.range(num_channels)[None, :]), f32) * free[:, None]
    stuff_area = tf.reduce_sum(member, axis=0)  # [S]
    stuff_prob = tf.reduce_sum(member * probability, axis=0)
    stuff_keep = (tf.constant(is_stuff.astype(np.float32)) * tf.cast(stuff_area >= max(min_stuff_area, 1), f32))
    position = num_things + tf.cumsum(stuff_keep)
    stuff_keep = stuff_keep * tf.cast(position <= max_segments, f32)
    stuff_segment = stuff_keep * position  # [S], 0 where dropped
    label = label + free * tf.gather(stuff_segment, channel)
    num_segments = num_things + tf.reduce_sum(stuff_keep)

    # 4. the segment table.
    slot = tf.range(1, max_segments + 1, dtype=f32)[None, :]  # [1, N]
    thing_hot = kept[:, None] * tf.cast(tf.equal(segment[:, None], slot), f32)  # [D, N]
    stuff_hot = tf.cast(tf.equal(stuff_segment[:, None], slot), f32) * stuff_keep[:, None]  # [S, N]
    ordered_classes = tf.cast(tf.gather(classes, order), f32)
    ordered_scores = tf.gather(scores, order)
    category = (tf.reduce_sum(thing_hot * ordered_classes[:, None], axis=0)
                + tf.reduce_sum(stuff_hot * tf.constant(category_of_channel.astype(np.float32))[:, None], axis=0))
    area = (tf.reduce_sum(thing_hot * visible[:, None], axis=0)
            + tf.reduce_sum(stuff_hot * stuff_area[:, None], axis=0))
    mean_prob = stuff_prob / tf.maximum(stuff_area, 1.0)
    score = (tf.reduce_sum(thing_hot * ordered_scores[:, None], axis=0)
             + tf.reduce_sum(stuff_hot * mean_prob[:, None], axis=0))
    return {
        "panoptic": tf.reshape(tf.cast(label, tf.int32), [height, width]),
        "category": tf.cast(category, tf.int32),
        "is_thing": slot[0] <= num_things,
        "area": tf.cast(area, tf.int32),
        "score": score,
        "num_segments": tf.cast(num_segments, tf.int32),
    }


def unrolled_panoptic_fusion(masks, scores, classes, num_detections, semantic_logits, *, stuff_categories,
                    thing_class=0, score_threshold=0.5, mask_threshold=0.5, overlap_threshold=0.5,
                    min_stuff_area=4096, max_segments=None):
    """The previous `panoptic_fusion` graph: same arguments, outputs and rules."""
    masks, scores, classes, num_detections, semantic_logits, options = fusion_inputs(
        masks, scores, classes, num_detections, semantic_logits, stuff_categories=stuff_categories,
        thing_class=thing_class, score_threshold=score_threshold, mask_threshold=mask_threshold,
        overlap_threshold=overlap_threshold, min_stuff_area=min_stuff_area, max_segments=max_segments)
    batched = masks.shape.rank == 4
    if not batched:
        return _fuse_one(masks, scores, classes, num_detections, semantic_logits, **options)
    num_detections = tf.reshape(num_detections, [-1])
    if masks.shape[0] is not None:  # static batch (export: B = 1): a Python loop, no WHILE
        images = [_fuse_one(masks[b], scores[b], classes[b], num_detections[b], semantic_logits[b], **options)
                  for b in range(masks.shape[0])]
        return {k: tf.stack([image[k] for image in images]) for k in OUTPUT_KEYS}
    signature = {"panoptic": tf.TensorSpec(masks.shape[-2:], tf.int32),
                 "category": tf.TensorSpec([options["max_segments"]], tf.int32),
                 "is_thing": tf.TensorSpec([options["max_segments"]], tf.bool),
                 "area": tf.TensorSpec([options["max_segments"]], tf.int32),
                 "score": tf.TensorSpec([options["max_segments"]], tf.float32),
                 "num_segments": tf.TensorSpec([], tf.int32)}
    return tf.map_fn(lambda a: _fuse_one(*a, **options),
                     (masks, scores, classes, num_detections, semantic_logits), fn_output_signature=signature)
