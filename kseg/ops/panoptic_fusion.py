"""Panoptic fusion of instance and semantic predictions (Panoptic FPN, Kirillov et al. 2019).

    masks            [D, H, W]  float instance mask probabilities (or [B, D, H, W])
    scores           [D]        float detection scores (or [B, D])
    classes          [D]        int thing category ids 1..K; 0 pads (or [B, D])
    num_detections   []         int; entries at index >= it pad (or [B])
    semantic_logits  [H, W, S]  semantic head logits at the masks' resolution (or [B, H, W, S])
    ->
    panoptic         [H, W]     int32 segment id per pixel, 0 = void, segments 1..N
    category         [N]        int32 category id of segment n + 1 (0 past num_segments)
    is_thing         [N]        bool
    area             [N]        int32 pixels of the segment in `panoptic`
    score            [N]        float32: detection score (thing), mean softmax probability of
                                the stuff class over the segment (stuff)
    num_segments     []         int32
    (every output gains a leading B when the inputs are batched)

Algorithm (the same in `panoptic_fusion` and its NumPy reference `panoptic_fusion_numpy`):
1. an instance is a candidate if it is not padding (index < num_detections and class > 0),
   score >= score_threshold; its mask is the pixels with probability >= mask_threshold;
2. candidates are painted in descending score order (ties: lower index first). An instance
   claims only pixels not claimed before; it is kept if its visible (newly claimed) area is
   > 0 and >= overlap_threshold * mask area (float32 product) and fewer than
   `max_segments` segments exist; a dropped instance claims nothing;
3. each still unclaimed pixel takes the argmax channel of the semantic logits (ties: lowest
   channel). Pixels whose argmax is `thing_class` stay void. All unclaimed pixels of one stuff
   channel form one segment, kept if its area >= max(min_stuff_area, 1) and the table has room;
   otherwise they are void;
4. segment ids follow painting order: kept things in score order, then stuff in ascending
   channel order.

`stuff_categories` maps the semantic channels to output category ids: one entry per channel
except `thing_class`, in channel order (so len == S - 1, or S when thing_class is None).

The graph version has static shapes and uses TFLite builtin ops only: a comparison-count rank
instead of a sort, and a Python loop over the static D unrolled into the graph (the sequential
dependence of step 2). Masks and semantic logits must share H x W (resize the semantic logits
first; Panoptic FPN upsamples them to the image).
"""

import numpy as np
import tensorflow as tf

OUTPUT_KEYS = ("panoptic", "category", "is_thing", "area", "score", "num_segments")


def _stuff_table(num_channels, stuff_categories, thing_class):
    """[S] int category per channel (0 at thing_class) and [S] bool is-stuff, validated."""
    stuff_categories = [int(c) for c in stuff_categories]
    expected = num_channels - (thing_class is not None)
    if len(stuff_categories) != expected:
        raise ValueError(
            f"`stuff_categories` needs one category per semantic channel except thing_class "
            f"({expected} for S={num_channels}, thing_class={thing_class}); got {len(stuff_categories)}.")
    if thing_class is not None and not 0 <= thing_class < num_channels:
        raise ValueError(f"`thing_class` must be in [0, {num_channels}) or None; got {thing_class}.")
    table = list(stuff_categories)
    is_stuff = [True] * num_channels
    if thing_class is not None:
        table.insert(thing_class, 0)
        is_stuff[thing_class] = False
    return np.asarray(table, np.int32), np.asarray(is_stuff, bool)


def default_max_segments(num_detections_slots, num_channels, thing_class):
    """D + the number of stuff channels: enough that the table never truncates."""
    return int(num_detections_slots) + num_channels - (thing_class is not None)


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


def panoptic_fusion(masks, scores, classes, num_detections, semantic_logits, *, stuff_categories,
                    thing_class=0, score_threshold=0.5, mask_threshold=0.5, overlap_threshold=0.5,
                    min_stuff_area=4096, max_segments=None):
    """Fuses instance detections and semantic logits into a panoptic id map (Kirillov et al. 2019).

    Args:
        masks: [D, H, W] (or [B, D, H, W]) float mask probabilities, e.g. Mask R-CNN's "masks".
        scores: [D] (or [B, D]) float detection scores.
        classes: [D] (or [B, D]) int thing category ids; 0 is padding.
        num_detections: scalar (or [B]) int; entries from this index on are padding.
        semantic_logits: [H, W, S] (or [B, H, W, S]) logits over S channels: the stuff classes
            plus the "thing/other" channel `thing_class`.
        stuff_categories: output category id of each stuff channel, in channel order, skipping
            thing_class (len S - 1; S if thing_class is None).
        thing_class: the channel that means "some thing" (0, as in Panoptic FPN's semantic head);
            None if every channel is stuff.
        score_threshold: minimum detection score (0.5).
        mask_threshold: mask probability at or above which a pixel is in the mask (0.5).
        overlap_threshold: minimum visible / mask area for a painted instance (0.5).
        min_stuff_area: minimum pixels of a stuff segment (4096 = 64 x 64, the paper's value at
            full resolution; scale it with the resolution you fuse at).
        max_segments: N, the static table size (default D + number of stuff channels, which
            never truncates). When full, later things and stuff are dropped (void).

    Returns:
        dict with "panoptic" [H, W] int32 (0 void, segments 1..N), "category" [N] int32,
        "is_thing" [N] bool, "area" [N] int32, "score" [N] float32 (detection score for things,
        mean softmax probability of the class over the segment for stuff), "num_segments" []
        int32; a leading B on every entry for batched inputs. Table entries past num_segments
        are 0 / False.

    Example:
    >>> import numpy as np
    >>> masks = np.zeros([1, 4, 4], np.float32); masks[0, :2, :2] = 1.0
    >>> logits = np.zeros([4, 4, 2], np.float32); logits[..., 1] = 1.0  # channel 1: stuff
    >>> out = panoptic_fusion(masks, [0.9], [3], 1, logits, stuff_categories=[7], min_stuff_area=1)
    >>> out["panoptic"].numpy().tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2], [2, 2, 2, 2], [2, 2, 2, 2]]
    >>> out["category"].numpy().tolist(), out["area"].numpy().tolist()
    ([3, 7], [4, 12])
    """
    masks = tf.convert_to_tensor(masks, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    classes = tf.cast(tf.convert_to_tensor(classes), tf.int32)
    num_detections = tf.convert_to_tensor(num_detections)
    semantic_logits = tf.convert_to_tensor(semantic_logits, tf.float32)
    batched = masks.shape.rank == 4
    if masks.shape.rank not in (3, 4) or semantic_logits.shape.rank != masks.shape.rank:
        raise ValueError(f"Expected masks [D, H, W] with logits [H, W, S] (or both batched); got masks "
                         f"{masks.shape} and semantic_logits {semantic_logits.shape}.")
    if masks.shape[-2:] != semantic_logits.shape[-3:-1]:
        raise ValueError(f"masks and semantic_logits must share H x W (resize the logits first); got "
                         f"{masks.shape[-2:]} and {semantic_logits.shape[-3:-1]}.")
    if None in masks.shape[-3:] or semantic_logits.shape[-1] is None:
        raise ValueError(f"D, H, W and S must be static; got masks {masks.shape}, logits {semantic_logits.shape}.")
    if max_segments is None:
        max_segments = default_max_segments(masks.shape[-3], semantic_logits.shape[-1], thing_class)
    options = dict(stuff_categories=stuff_categories, thing_class=thing_class, score_threshold=score_threshold,
                   mask_threshold=mask_threshold, overlap_threshold=overlap_threshold,
                   min_stuff_area=min_stuff_area, max_segments=int(max_segments))
    if not batched:
        return _fuse_one(masks, scores, classes, num_detections, semantic_logits, **options)
    num_detections = tf.reshape(num_detections, [-1])
    if masks.shape[0] is not None:  # static batch (export: B = 1): a Python loop, no WHILE
        images = [_fuse_one(masks[b], scores[b], classes[b], num_detections[b], semantic_logits[b], **options)
                  for b in range(masks.shape[0])]
        return {k: tf.stack([image[k] for image in images]) for k in OUTPUT_KEYS}
    signature = {"panoptic": tf.TensorSpec(masks.shape[-2:], tf.int32),
                 "category": tf.TensorSpec([max_segments], tf.int32),
                 "is_thing": tf.TensorSpec([max_segments], tf.bool),
                 "area": tf.TensorSpec([max_segments], tf.int32),
                 "score": tf.TensorSpec([max_segments], tf.float32),
                 "num_segments": tf.TensorSpec([], tf.int32)}
    return tf.map_fn(lambda a: _fuse_one(*a, **options),
                     (masks, scores, classes, num_detections, semantic_logits), fn_output_signature=signature)


def panoptic_fusion_numpy(masks, scores, classes, num_detections, semantic_logits, *, stuff_categories,
                          thing_class=0, score_threshold=0.5, mask_threshold=0.5, overlap_threshold=0.5,
                          min_stuff_area=4096, max_segments=None):
    """The NumPy reference of `panoptic_fusion` (same arguments and outputs), written as plain loops."""
    masks = np.asarray(masks, np.float32)
    if masks.ndim == 4:
        images = [panoptic_fusion_numpy(
            masks[b], np.asarray(scores)[b], np.asarray(classes)[b], np.reshape(num_detections, [-1])[b],
            np.asarray(semantic_logits)[b], stuff_categories=stuff_categories, thing_class=thing_class,
            score_threshold=score_threshold, mask_threshold=mask_threshold, overlap_threshold=overlap_threshold,
            min_stuff_area=min_stuff_area, max_segments=max_segments) for b in range(masks.shape[0])]
        return {k: np.stack([image[k] for image in images]) for k in OUTPUT_KEYS}
    scores = np.asarray(scores, np.float32)
    classes = np.asarray(classes, np.int32)
    logits = np.asarray(semantic_logits, np.float32)
    num_slots, height, width = masks.shape
    num_channels = logits.shape[-1]
    category_of_channel, is_stuff = _stuff_table(num_channels, stuff_categories, thing_class)
    if max_segments is None:
        max_segments = default_max_segments(num_slots, num_channels, thing_class)
    n = int(np.reshape(num_detections, []))

    panoptic = np.zeros([height, width], np.int32)
    segments = []  # (category, is_thing, area, score)
    candidates = [i for i in range(num_slots) if i < n and classes[i] > 0 and scores[i] >= np.float32(score_threshold)]
    candidates.sort(key=lambda i: (-scores[i], i))
    for i in candidates:
        mask = masks[i] >= np.float32(mask_threshold)
        area = int(mask.sum())
        new = mask & (panoptic == 0)
        visible = int(new.sum())
        if visible == 0 or visible < np.float32(overlap_threshold) * np.float32(area) or len(segments) >= max_segments:
            continue
        segments.append((int(classes[i]), True, visible, float(scores[i])))
        panoptic[new] = len(segments)

    channel = logits.argmax(-1)
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    probability = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    unclaimed = panoptic == 0
    for c in range(num_channels):
        region = unclaimed & (channel == c)
        area = int(region.sum())
        if not is_stuff[c] or area < max(min_stuff_area, 1) or len(segments) >= max_segments:
            continue
        segments.append((int(category_of_channel[c]), False, area, float(probability[..., c][region].mean())))
        panoptic[region] = len(segments)

    table = {"category": np.zeros([max_segments], np.int32), "is_thing": np.zeros([max_segments], bool),
             "area": np.zeros([max_segments], np.int32), "score": np.zeros([max_segments], np.float32)}
    for k, (category, is_thing, area, score) in enumerate(segments):
        table["category"][k], table["is_thing"][k], table["area"][k], table["score"][k] = category, is_thing, area, score
    return {"panoptic": panoptic, **table, "num_segments": np.int32(len(segments))}
