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

Algorithm (the same in `panoptic_fusion` and its NumPy reference,
`kseg.ops.panoptic_fusion_reference.panoptic_fusion_numpy`):
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

The graph has static D, H, W, S (any batch size, also unknown) and uses TFLite builtin ops
only. The painting order is a comparison-count rank (no sort op). Step 2 is sequential (whether
an instance is kept depends on the union of the kept masks before it, which pairwise overlaps
do not give when three masks meet), but its decisions only need, per pixel, which masks hold it.
The masks are thresholded once, into a bool stack (`mask >= mask_threshold`, exact: a pixel is
in a mask iff that holds; 1 byte a pixel, the only copy of the stack). The slots are then taken in
painting order in blocks of BLOCK = b <= 7 (one GATHER of b bool masks each). Per block every
pixel gets a one-byte code, bit t set where the block's t-th mask holds it: the b masks, cast to
bytes and read 8 pixels to an int64 word, are weighted by 2**t and summed (no carry crosses a
byte), and the word is read back as 8 codes. A pixel's state is its thing segment id s so far
(0: unclaimed) as s * 2**BLOCK plus its image's offset in the batch, so code + state numbers
the (state, code) pairs, and one UNSORTED_SEGMENT_SUM counts the pixels of each pair. The b
decisions of the block are made on those counts alone: a mask's area is the count over the
codes with its bit, its visible part the count over the unclaimed codes with its bit and no bit
of a mask kept before it in the block. A table over the pairs (claimed pixels keep their state,
unclaimed ones take the segment id of the first kept mask of their code) gives the next state
with one GATHER. A block runs in an IF op only when some image has a candidate in it
(candidates are painted first), so the slots past the last candidate cost nothing. Per block
this leaves one pass over its b bool masks and four over the image (the code, its sum with the
state, the count, the table):

    pair = sum_t 2**t [mask_t >= mask_threshold] + 2**BLOCK * (segment id so far)

LiteRT's GPU accelerator takes neither UNSORTED_SEGMENT_SUM nor these GATHERs: on that path
step 2 runs on the CPU. Step 3 works on the S channel planes: the argmax with ties to the lowest channel is
`relu(available + floor(logit - max logit))` taken channel by channel, and the stuff score is
the mean of 1 / sum(exp(logit - max logit)), the argmax channel's softmax probability. Every
count is a float32 sum of 0/1 values (exact below 2**24 pixels) and every pair an int32. Masks
and semantic logits must share H x W (resize the semantic logits first; Panoptic FPN upsamples them to the image).
"""

import functools

import numpy as np
import tensorflow as tf

OUTPUT_KEYS = ("panoptic", "category", "is_thing", "area", "score", "num_segments")
BLOCK = 7  # slots per pixel histogram in step 2 (a block's code is one byte)


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


def _painting_order(scores, classes, num_detections, score_threshold):
    """The order of step 2 as a one-hot permutation, without a sort op.

    Args:
        scores: [B, D] float32. classes: [B, D] int32. num_detections: [B] (or [B, 1]) int.

    Returns:
        (perm [B, D, D] float32 with perm[b, t, j] = 1 where slot j is painted t-th: candidates
        by descending score, ties by lower index, then the other slots; candidate [B, D] 0/1).
    """
    num_slots = scores.shape[-1]
    f32 = tf.float32
    num = tf.reshape(tf.cast(num_detections, tf.int32), [-1, 1])
    candidate = tf.cast((tf.range(num_slots)[None] < num) & (classes > 0) & (scores >= score_threshold), f32)
    before, after = [-1, num_slots, 1], [-1, 1, num_slots]  # axis 1: j, axis 2: i
    s_j, s_i = tf.reshape(scores, before), tf.reshape(scores, after)
    c_j, c_i = tf.reshape(candidate, before), tf.reshape(candidate, after)
    lower_index = tf.constant(np.tri(num_slots, k=-1, dtype=np.float32).T[None])  # [1, j, i]: j < i
    higher = tf.cast(s_j > s_i, f32)
    tie = tf.cast(tf.equal(s_j, s_i), f32) * lower_index
    same = c_j * c_i + (1.0 - c_j) * (1.0 - c_i)
    precedes = c_j * (1.0 - c_i) + same * tf.minimum(higher + tie, 1.0)  # [B, j, i]: j paints before i
    rank = tf.reshape(tf.reduce_sum(precedes, axis=1), after)  # a permutation of 0..D-1
    step = tf.constant(np.arange(num_slots, dtype=np.float32).reshape(1, num_slots, 1))
    return tf.cast(tf.equal(rank, step), f32), candidate


def _in_order(perm, values):
    """values [B, D] -> [B, D] in painting order (a product and a sum: exact, unlike a matmul
    that a GPU may run in reduced precision)."""
    return tf.reduce_sum(perm * tf.expand_dims(values, 1), axis=2)


def _total(x):
    """[B, C, H, W] -> [B, C, 1, 1] sums over the pixels."""
    return tf.reduce_sum(x, axis=[2, 3], keepdims=True)


def _paint_things(masks, order, cut, *, mask_threshold, overlap_threshold, max_segments):
    """Step 2 in blocks of BLOCK slots in painting order, one pixel histogram per block.

    Args:
        masks: [B, D, H, W] float32. order: [B, D] int32 slot painted t-th.
        cut: [B, D] float32 in painting order: the least visible area that may be kept before the
            overlap rule (1 for candidates, H * W + 1 for the other slots).

    Returns:
        (label [B, H * W] float32: the thing segment id per pixel, 0 where unclaimed (None when
        D = 0); kept, segment (the thing count after the step), visible: [B, D] in painting order,
        visible 0 in a skipped block; num_things [B, 1]).
    """
    num_slots, height, width = masks.shape[1:]
    pixels = height * width
    f32 = tf.float32
    if not num_slots:
        return None, cut, cut, cut, tf.reduce_sum(cut, axis=1, keepdims=True)  # cut is [B, 0]: zeros
    if not 1 <= BLOCK <= 7:
        raise ValueError(f"BLOCK must be in [1, 7] (a block's code is one byte); got {BLOCK}.")
    batch = masks.shape[0] if masks.shape[0] is not None else tf.shape(masks)[0]
    inside = masks >= tf.constant(mask_threshold, f32)  # [B, D, H, W] bool: one pass, 1 byte a pixel
    # Candidates come first in painting order: a block past every image's last candidate keeps
    # nothing, so an IF op skips it and its slots cost nothing.
    num_candidates = tf.reduce_max(tf.reduce_sum(tf.cast(cut < 1.5, f32), axis=1))
    size = (num_slots + 1) * 2 ** BLOCK  # the (state, code) pairs of one image
    offset = size * tf.reshape(tf.range(batch), [-1, 1])  # [B, 1] the image's pairs in the batch
    state = offset + tf.zeros([1, pixels], tf.int32)  # [B, H W]: nothing claimed
    ones = tf.ones_like(state, f32)
    count = tf.zeros_like(cut[:, :1])  # [B, 1] things so far
    # The next state of a claimed pixel's pairs: its own (segment ids 1..D times 2**BLOCK).
    claimed = tf.constant(np.repeat(np.arange(1, num_slots + 1, dtype=np.float32)[None, :, None], 2 ** BLOCK, axis=2))
    kept, segment, visible = [], [], []
    for start in range(0, num_slots, BLOCK):
        bits = min(BLOCK, num_slots - start)
        paint = functools.partial(
            _paint_block, inside, order[:, start:start + bits], cut[:, start:start + bits], ones, offset, claimed,
            size=size, overlap_threshold=overlap_threshold,
            max_segments=max_segments if max_segments < num_slots else None)
        state, count, keep, after, shown = tf.cond(
            num_candidates > start, lambda paint=paint, state=state, count=count: paint(state, count),
            lambda state=state, count=count, bits=bits: _skip_block(state, count, bits))
        kept.append(keep)
        segment.append(after)
        visible.append(shown)
    label = tf.cast(state - offset, f32) * (1.0 / 2 ** BLOCK)  # exact: a multiple of a power of two
    flat = [tf.reshape(tf.concat(x, axis=1), [-1, num_slots]) for x in (kept, segment, visible)]
    return (label, *flat, tf.reshape(count, [-1, 1]))


def _skip_block(state, count, bits):
    """A block without candidates: nothing kept, nothing claimed (`_paint_block`'s outputs)."""
    zeros = tf.zeros_like(count) + tf.zeros([1, bits])
    return state, count, zeros, count + zeros, zeros


def _block_code(inside, order):
    """[B, D, H, W] bool, [B, b] int32 (b <= 7) -> [B, H W] int32 code: bit t where the block's
    t-th mask holds the pixel."""
    bits, (height, width) = order.shape[1], inside.shape[2:]
    pixels = height * width
    members = tf.cast(tf.gather(inside, order, axis=1, batch_dims=1), tf.uint8)  # [B, b, H, W]
    weight = (2 ** np.arange(bits)).reshape(1, bits, 1)
    if pixels % 8:
        members = tf.cast(tf.reshape(members, [-1, bits, pixels]), tf.int32)
        return tf.reduce_sum(members * tf.constant(weight, tf.int32), axis=1)
    # 8 pixels a word, one byte each: the weighted sum adds up each byte's code (< 2**b <= 128:
    # no carry crosses bytes, no product overflows) in one pass over 1/8 of the pixels.
    words = tf.bitcast(tf.reshape(members, [-1, bits, pixels // 8, 8]), tf.int64)  # [B, b, H W / 8]
    packed = tf.reduce_sum(words * tf.constant(weight, tf.int64), axis=1)
    return tf.cast(tf.reshape(tf.bitcast(packed, tf.uint8), [-1, pixels]), tf.int32)


def _paint_block(inside, order, cut, ones, offset, claimed, state, count, *, size, overlap_threshold, max_segments):
    """Step 2 for one block of b slots on one histogram of (state, code) pairs.

    Args:
        inside: [B, D, H, W] bool stack. order: [B, b] int32 the block's slots in painting order.
        cut: [B, b] float32 (see `_paint_things`). ones: [B, H W] float32. offset: [B, 1] int32.
        claimed: [1, D, 2**BLOCK] float32, segment id s on row s - 1. state: [B, H W] int32,
        s * 2**BLOCK + offset for a pixel of thing segment s (0: unclaimed). count: [B, 1]
        float32 things so far. size: pairs of an image. max_segments: None if it never binds.

    Returns:
        (state, count, kept [B, b], segment [B, b] (the thing count after each slot), visible [B, b]).
    """
    f32 = tf.float32
    bits = order.shape[1]
    bins, stride = 2 ** bits, 2 ** BLOCK  # codes of this block; code values a state step spans
    ids = _block_code(inside, order) + state  # [B, H W]
    histogram = tf.math.unsorted_segment_sum(ones, ids, size * tf.shape(ones)[0])
    histogram = tf.reshape(histogram, [-1, size // stride, stride])[:, :, :bins]  # [B, states, bins]
    free = histogram[:, 0]  # [B, bins] unclaimed pixels per code
    has = tf.constant(((np.arange(bins)[None] >> np.arange(bits)[:, None]) & 1).astype(np.float32))
    area = tf.reduce_sum(tf.expand_dims(tf.reduce_sum(histogram, axis=1), 1) * has[None], axis=2)  # [B, b]
    least = tf.maximum(tf.constant(overlap_threshold, f32) * area, cut)
    open_codes = tf.ones_like(free)  # 1 on the codes no kept mask of this block holds yet
    table = tf.zeros_like(free)  # the segment id an unclaimed pixel of each code takes
    kept, segment, visible = [], [], []
    for t in range(bits):
        claim = open_codes * has[t]  # codes the step would claim
        shown = tf.reduce_sum(free * claim, axis=1, keepdims=True)  # [B, 1]
        keep = tf.cast(shown >= least[:, t:t + 1], f32)
        if max_segments is not None:
            keep = keep * tf.cast(count < max_segments, f32)
        count = count + keep
        table = table + claim * (keep * count)
        open_codes = open_codes - claim * keep
        kept.append(keep)
        segment.append(count)
        visible.append(shown)
    # The next state of each pair: claimed pixels keep theirs, unclaimed ones take the table's.
    unclaimed = tf.pad(table, [[0, 0], [0, stride - bins]])[:, None]  # [B, 1, stride]
    lookup = tf.concat([unclaimed, claimed + tf.zeros_like(unclaimed)], axis=1)  # [B, states, stride]
    lookup = tf.cast(lookup * stride, tf.int32) + offset[:, :, None]
    state = tf.gather(tf.reshape(lookup, [-1]), ids)
    return (state, count, *(tf.concat(x, axis=1) for x in (kept, segment, visible)))


def _paint_stuff(semantic_logits, free, is_stuff):
    """Step 3's per-channel members: the argmax channel of each unclaimed pixel.

    Args:
        semantic_logits: [B, H, W, S] float32. free: [B, 1, H, W] from `_paint_things`.
        is_stuff: [S] bool.

    Returns:
        (members: S x [B, 1, H, W] 0/1, the unclaimed pixels whose argmax is that channel;
        area [B, S]; probability [B, S]: sum over the members of the channel's softmax).
    """
    num_channels = semantic_logits.shape[-1]
    planes = tf.split(tf.transpose(semantic_logits, [0, 3, 1, 2]), num_channels, axis=1)
    top = planes[0]
    for plane in planes[1:]:
        top = tf.maximum(top, plane)
    available = tf.nn.relu(free) if free is not None else tf.ones_like(top)  # 1 on unclaimed pixels
    members, exps = [], []
    for plane in planes:
        gap = plane - top  # <= 0; floor(gap) is 0 only where the plane holds the maximum
        member = tf.nn.relu(available + tf.math.floor(gap))
        available = available - member  # later channels lose ties
        members.append(member)
        exps.append(tf.exp(gap))
    denominator = exps[0]
    for e in exps[1:]:  # ADDs: LiteRT's GPU accelerator does not take ADD_N
        denominator = denominator + e
    inverse = 1.0 / denominator  # the argmax channel's softmax probability
    area = tf.concat([_total(m) for m in members], axis=1)
    probability = tf.concat([_total(m * inverse) if stuff else tf.zeros_like(_total(m))
                             for m, stuff in zip(members, is_stuff)], axis=1)
    return members, tf.reshape(area, [-1, num_channels]), tf.reshape(probability, [-1, num_channels])


def _fuse(masks, scores, classes, num_detections, semantic_logits, *, stuff_categories, thing_class,
          score_threshold, mask_threshold, overlap_threshold, min_stuff_area, max_segments):
    """Batched fusion: [B, D, H, W], [B, D], [B, D], [B], [B, H, W, S] -> the output dict."""
    num_slots, height, width = masks.shape[1:]
    num_channels = semantic_logits.shape[-1]
    category_of_channel, is_stuff = _stuff_table(num_channels, stuff_categories, thing_class)
    f32 = tf.float32

    # 1. candidates and the painting order.
    perm, candidate = _painting_order(scores, classes, num_detections, score_threshold)
    index = tf.constant(np.arange(num_slots, dtype=np.float32)[None])
    order = tf.cast(_in_order(perm, index + tf.zeros_like(scores)), tf.int32)
    cut = 1.0 + (1.0 - _in_order(perm, candidate)) * float(height * width + 1)

    # 2. things.
    label, kept, segment, visible, num_things = _paint_things(
        masks, order, cut, mask_threshold=mask_threshold, overlap_threshold=overlap_threshold,
        max_segments=max_segments)
    free = None if label is None else tf.reshape(1.0 - label, [-1, 1, height, width])

    # 3. stuff on the unclaimed pixels.
    members, stuff_area, stuff_prob = _paint_stuff(semantic_logits, free, is_stuff)
    stuff_keep = tf.constant(is_stuff.astype(np.float32)) * tf.cast(stuff_area >= max(min_stuff_area, 1), f32)
    inclusive = tf.constant(np.tri(num_channels, dtype=np.float32)[None])  # [1, c, c']: c' <= c
    position = num_things + tf.reduce_sum(inclusive * tf.expand_dims(stuff_keep, 1), axis=2)
    stuff_keep = stuff_keep * tf.cast(position <= max_segments, f32)
    stuff_segment = stuff_keep * position  # [B, S], 0 where dropped
    label = 1.0 - free if free is not None else tf.zeros_like(members[0])  # thing ids, 0 where unclaimed
    ids = tf.split(tf.reshape(stuff_segment, [-1, num_channels, 1, 1]), num_channels, axis=1)
    for member, segment_id, stuff in zip(members, ids, is_stuff):
        if stuff:
            label = label + member * segment_id
    num_segments = tf.reshape(num_things, [-1]) + tf.reduce_sum(stuff_keep, axis=1)

    # 4. the segment table.
    slot = tf.constant(np.arange(1, max_segments + 1, dtype=np.float32)[None, None])  # [1, 1, N]
    thing_hot = tf.expand_dims(kept, 2) * tf.cast(tf.equal(tf.expand_dims(segment, 2), slot), f32)  # [B, D, N]
    stuff_hot = tf.cast(tf.equal(tf.expand_dims(stuff_segment, 2), slot), f32) * tf.expand_dims(stuff_keep, 2)

    def table(thing_values, stuff_values):
        return (tf.reduce_sum(thing_hot * tf.expand_dims(thing_values, 2), axis=1)
                + tf.reduce_sum(stuff_hot * tf.expand_dims(stuff_values, 2), axis=1))

    channel_category = tf.constant(category_of_channel.astype(np.float32)[None]) + tf.zeros_like(stuff_area)
    category = table(_in_order(perm, tf.cast(classes, f32)), channel_category)
    area = table(visible, stuff_area)
    score = table(_in_order(perm, scores), stuff_prob / tf.maximum(stuff_area, 1.0))
    return {
        "panoptic": tf.cast(tf.reshape(label, [-1, height, width]), tf.int32),
        "category": tf.cast(category, tf.int32),
        "is_thing": slot[0] <= num_things,
        "area": tf.cast(area, tf.int32),
        "score": score,
        "num_segments": tf.cast(num_segments, tf.int32),
    }


def fusion_inputs(masks, scores, classes, num_detections, semantic_logits, *, stuff_categories, thing_class,
                  score_threshold, mask_threshold, overlap_threshold, min_stuff_area, max_segments):
    """`panoptic_fusion`'s arguments as tensors, checked (ranks, shared H x W, static D, H, W, S).

    Returns:
        (masks, scores, classes, num_detections, semantic_logits, options): float32/int32 tensors
        and the keyword options of the painting code, with `max_segments` resolved.

    Raises:
        ValueError: naming the argument, the shape seen and the shape expected.
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
    return masks, scores, classes, num_detections, semantic_logits, options


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
    masks, scores, classes, num_detections, semantic_logits, options = fusion_inputs(
        masks, scores, classes, num_detections, semantic_logits, stuff_categories=stuff_categories,
        thing_class=thing_class, score_threshold=score_threshold, mask_threshold=mask_threshold,
        overlap_threshold=overlap_threshold, min_stuff_area=min_stuff_area, max_segments=max_segments)
    batched = masks.shape.rank == 4
    if batched:
        return _fuse(masks, scores, classes, tf.reshape(num_detections, [-1]), semantic_logits, **options)
    out = _fuse(masks[None], scores[None], classes[None], tf.reshape(num_detections, [1]), semantic_logits[None],
                **options)
    return {k: v[0] for k, v in out.items()}
