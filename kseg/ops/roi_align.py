"""ROI Align over a feature pyramid (Mask R-CNN, He et al. 2017; FPN, Lin et al. 2017).

Shape shorthand:

    B          batch size (padded)
    N          boxes per image (padded; padded boxes are all zeros)
    C          channels, the same on every level
    H, W       input image size, static Python ints
    H_l, W_l   size of level l (stride 2**l): ceil(H / 2**l), ceil(W / 2**l)
    S          output_size
    R          sampling_ratio
    n          S * R sample points per side of a box

    features   {"P{l}": [B, H_l, W_l, C]} for l in min_level..max_level (other keys ignored)
    boxes      [B, N, 4] float32 (y1, x1, y2, x2), input-image pixels (pixel i covers [i, i+1))
    levels     [B, N] int32
    output     [B, N, S, S, C] float32

Level of a box (FPN eq. 1): L = floor(canonical_level + log2(sqrt(h * w) / canonical_size)),
clipped to [min_level, max_level]; boxes of zero area (padding, inverted boxes) go to
min_level. It is computed as min_level plus the number of thresholds
(canonical_size * 2**(k - canonical_level))**2, k in (min_level, max_level], that the area
reaches, which is the same formula without a log() that could round 2**k down.

Sampling convention ("aligned" half-pixel, as Detectron2's ROIAlign(aligned=True)): on level
l with stride s, an image coordinate y maps to the feature coordinate y / s - 0.5, so feature
pixel i is centred on image coordinate (i + 0.5) * s. Along each axis the n sample points of a
box are, in float32 and in this order of operations,

    start = y1 / s - 0.5
    step  = (y2 - y1) / (s * n)
    p_j   = start + (j + 0.5) * step,   j = 0 .. n - 1

which puts R x R points in each of the S x S bins at bin_start + (i + 0.5) * bin_size / R.
A point with y or x outside [0, size - 1] of its level reads 0 (as tf.image.crop_and_resize
with extrapolation_value=0); inside, it reads the bilinear interpolation of the four
neighbouring pixels. Each output bin is the mean of its R x R points.

Two implementations follow this convention. Both place points in float32, a few ulp of the
coordinate off the exact positions (ulp = 7.6e-6 pixel at 64..128 pixels into a level), so
they differ by that much times the features' change per pixel: under 1e-5 for [0, 1) features
on maps up to 32 pixels, up to about 1e-4 for N(0, 1) noise on the 128 x 128 P2 of a 512 image.
Both are differentiable with respect to the boxes too; callers stop_gradient() proposals.

    "crop_and_resize"  tf.image.crop_and_resize on one canvas holding every level. Fast, and
                       differentiable with respect to the features: the training path. Its
                       feature gradient is kseg's own (`_crop_and_resize`), since TensorFlow's
                       CPU kernel loses updates where boxes overlap. Not a TFLite builtin
                       (needs Flex) and has no XLA kernel.
    "gather"           floor + GATHER + bilinear weights on all levels flattened into one
                       table: TFLite builtin ops only, also compiles with XLA. The export path.

Inside a function compiled by XLA (`tf.function(jit_compile=True)`, Keras'
`compile(jit_compile=True)`, or its "auto" on a GPU), "crop_and_resize" runs the "gather"
implementation (`kseg.ops.xla.compiling_with_xla`): the same values, so a model built for
training needs no other setting to be compiled. It is about 1.4x slower than
crop_and_resize for the forward and backward pass on a CPU (measured at 256 x 256, 128 boxes).
"""

import numpy as np
import tensorflow as tf

from kseg.ops.boxes import _as_float32, _check_image_size, box_areas
from kseg.ops.xla import compiling_with_xla

METHODS = ("crop_and_resize", "gather")


def assign_levels(boxes, min_level=2, max_level=5, canonical_size=224.0, canonical_level=4):
    """Returns the pyramid level each box is pooled from (FPN paper, eq. 1).

    Args:
        boxes: float32 [..., 4] (y1, x1, y2, x2) in image pixels, typically [B, N, 4].
        min_level: lowest level; boxes of zero area land here too.
        max_level: highest level.
        canonical_size: box size (sqrt of area) mapped to `canonical_level`, 224 in the paper.
        canonical_level: level of a canonical_size box, 4 in the paper.

    Returns:
        int32 [...], in [min_level, max_level].

    Example:
        >>> boxes = [[[0.0, 0.0, 224.0, 224.0], [0.0, 0.0, 112.0, 112.0], [0.0, 0.0, 0.0, 0.0]]]
        >>> assign_levels(boxes).numpy().tolist()
        [[4, 3, 2]]
    """
    if min_level > max_level:
        raise ValueError(f"min_level must be <= max_level, got {min_level} > {max_level}")
    areas = box_areas(boxes)
    levels = tf.fill(tf.shape(areas), tf.constant(min_level, tf.int32))
    for k in range(min_level + 1, max_level + 1):
        threshold = (canonical_size * 2.0 ** (k - canonical_level)) ** 2
        levels += tf.cast(areas >= threshold, tf.int32)
    return levels


def roi_align(
    features,
    boxes,
    *,
    image_size,
    output_size=7,
    sampling_ratio=2,
    min_level=2,
    max_level=5,
    canonical_size=224.0,
    canonical_level=4,
    method="crop_and_resize",
):
    """Pools a fixed-size feature patch for every box from its FPN level (ROI Align).

    See the module docstring for the level rule and the exact sampling convention.

    Args:
        features: dict {"P{l}": float [B, H_l, W_l, C]}; needs min_level..max_level, static
            spatial sizes ceil(H / 2**l) x ceil(W / 2**l).
        boxes: float32 [B, N, 4] (y1, x1, y2, x2) in image pixels; any values (outside the
            image, zero size, padding) are allowed.
        image_size: (H, W) Python ints, the input image size.
        output_size: S, the output is S x S per box.
        sampling_ratio: R, R x R bilinear samples averaged per output bin.
        min_level, max_level, canonical_size, canonical_level: see `assign_levels`.
        method: "crop_and_resize" (training; "gather" when compiled by XLA) or "gather"
            (TFLite builtins, XLA).

    Returns:
        float32 [B, N, S, S, C].

    Example:
        >>> feature = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])  # value 4y + x
        >>> box = tf.constant([[[2.0, 2.0, 14.0, 10.0]]])  # on P2: y in [0, 3], x in [0, 2]
        >>> out = roi_align({"P2": feature}, box, image_size=(16, 16), output_size=2,
        ...                 sampling_ratio=1, min_level=2, max_level=2, method="gather")
        >>> out[0, 0, :, :, 0].numpy().tolist()
        [[3.5, 4.5], [9.5, 10.5]]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if output_size < 1 or sampling_ratio < 1:
        raise ValueError(
            f"output_size and sampling_ratio must be >= 1, got {output_size} and {sampling_ratio}"
        )
    height, width = _check_image_size(image_size)
    if min_level > max_level:
        raise ValueError(f"min_level must be <= max_level, got {min_level} > {max_level}")
    level_sizes = [
        (-(-height // 2**l), -(-width // 2**l)) for l in range(min_level, max_level + 1)
    ]
    feature_list = _check_features(features, level_sizes, min_level)
    boxes = _as_float32(boxes)
    if boxes.shape.rank != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [B, N, 4], got shape {boxes.shape}")

    levels = assign_levels(boxes, min_level, max_level, canonical_size, canonical_level)
    level_index = levels - min_level  # [B, N], 0-based
    if method == "gather" or compiling_with_xla():  # XLA has no CropAndResize kernel
        return _roi_align_gather(
            feature_list, level_sizes, boxes, level_index, min_level, output_size, sampling_ratio
        )
    return _roi_align_crop_and_resize(
        feature_list, level_sizes, boxes, level_index, min_level, output_size, sampling_ratio
    )


def _check_features(features, level_sizes, min_level):
    """Returns the float32 feature maps of the used levels, after checking their shapes."""
    result = []
    channels = None
    for i, (h, w) in enumerate(level_sizes):
        key = f"P{min_level + i}"
        if key not in features:
            raise ValueError(f"features needs key {key!r}, got keys {sorted(features)}")
        feature = tf.convert_to_tensor(features[key])
        shape = feature.shape
        if shape.rank != 4 or tuple(shape[1:3]) != (h, w):
            raise ValueError(
                f"features[{key!r}] must be [B, {h}, {w}, C] (ceil of the image size / "
                f"{2 ** (min_level + i)}), got shape {shape}"
            )
        if channels is not None and shape[3] != channels:
            raise ValueError(
                f"every level needs the same channels, features[{key!r}] has {shape[3]}, "
                f"the previous ones {channels}"
            )
        channels = shape[3]
        result.append(tf.cast(feature, tf.float32))
    return result


def _level_table(values, level_index, dtype):
    """Looks up one per-level constant for every box: [B, N]."""
    return tf.gather(tf.constant(values, dtype), level_index)


def _axis_starts_and_steps(boxes, level_index, min_level, num_levels, n):
    """Returns (start, step) of the sample points along y and x, each float32 [B, N]."""
    strides = [2.0 ** (min_level + i) for i in range(num_levels)]
    stride = _level_table(strides, level_index, tf.float32)
    span = _level_table([s * n for s in strides], level_index, tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
    return (y1 / stride - 0.5, (y2 - y1) / span), (x1 / stride - 0.5, (x2 - x1) / span)


def _points(start, step, offsets):
    """Sample coordinates start + offsets * step: [B, N] x [k] -> [B, N, k]."""
    return start[..., None] + tf.constant(offsets, tf.float32) * step[..., None]


def _inside(points, size):
    """True where 0 <= point <= size - 1: points [B, N, k], size float32 [B, N]."""
    return tf.logical_and(points >= 0.0, points <= size[..., None] - 1.0)


def _roi_align_crop_and_resize(
    feature_list, level_sizes, boxes, level_index, min_level, output_size, sampling_ratio
):
    n = output_size * sampling_ratio
    offsets = np.arange(n, dtype=np.float64) + 0.5
    canvas, origins = _canvas(feature_list, level_sizes)
    canvas_h, canvas_w = canvas.shape[1], canvas.shape[2]
    (y_start, y_step), (x_start, x_step) = _axis_starts_and_steps(
        boxes, level_index, min_level, len(level_sizes), n
    )
    ys = _points(y_start, y_step, offsets)  # [B, N, n]
    xs = _points(x_start, x_step, offsets)
    valid_y = _inside(ys, _level_table([h for h, _ in level_sizes], level_index, tf.float32))
    valid_x = _inside(xs, _level_table([w for _, w in level_sizes], level_index, tf.float32))

    # crop_and_resize puts point j of a crop from normalized a to b at
    # a * (size - 1) + j * (b - a) * (size - 1) / (n - 1) (at a * (size - 1) when n == 1), so
    # (first point, last point) / (size - 1) hits every p_j, up to round-off. Which points
    # count is decided by `valid_*` (the same arithmetic as the gather path), never by
    # crop_and_resize's own range check: the canvas border keeps every valid point inside the
    # canvas, and a valid point rounded past its level's edge only blends in a round-off
    # weight of the neighbouring pixel.
    origin_y = _level_table([o[0] for o in origins], level_index, tf.float32)[..., None]
    origin_x = _level_table([o[1] for o in origins], level_index, tf.float32)[..., None]
    ends_y = (tf.gather(ys, [0, n - 1], axis=-1) + origin_y) / float(canvas_h - 1)
    ends_x = (tf.gather(xs, [0, n - 1], axis=-1) + origin_x) / float(canvas_w - 1)
    crop_boxes = tf.stack([ends_y[..., 0], ends_x[..., 0], ends_y[..., 1], ends_x[..., 1]], -1)
    crop_boxes = tf.reshape(crop_boxes, [-1, 4])  # [B * N, 4]
    box_indices = tf.range(tf.shape(boxes)[0])[:, None] + tf.zeros_like(level_index)
    box_indices = tf.reshape(box_indices, [-1])  # [B * N], each box's image
    crops = _crop_and_resize(canvas, crop_boxes, box_indices, n)  # [B * N, n, n, C]
    valid_y, valid_x = tf.cast(valid_y, tf.float32), tf.cast(valid_x, tf.float32)
    weights = tf.reshape(valid_y[..., :, None] * valid_x[..., None, :], [-1, n, n, 1])
    pooled = tf.nn.avg_pool2d(crops * weights, sampling_ratio, sampling_ratio, "VALID")
    return _unflatten_boxes(pooled, boxes, output_size)


def _crop_and_resize(canvas, crop_boxes, box_indices, n):
    """tf.image.crop_and_resize (bilinear, extrapolation 0) to n x n, with a correct gradient.

    TensorFlow's CPU kernel for the image gradient (CropAndResizeGradImage) splits the boxes
    over threads that add into the same gradient pixels without synchronisation: where boxes
    overlap, updates are lost (measured: 4000 copies of one box lose 5-18 % of the gradient
    on 2 threads, differently on every run). The image gradient here scatters the same bilinear
    weights with unsorted_segment_sum, which is exact and deterministic; the box gradient is
    TensorFlow's (a single-threaded loop).
    """

    @tf.custom_gradient
    def crop(canvas, crop_boxes):
        crops = tf.image.crop_and_resize(
            canvas, crop_boxes, box_indices, (n, n), method="bilinear", extrapolation_value=0.0
        )

        def gradient(upstream):
            box_gradient = tf.raw_ops.CropAndResizeGradBoxes(
                grads=upstream, image=canvas, boxes=crop_boxes, box_ind=box_indices
            )
            image_gradient = _crop_and_resize_image_gradient(
                upstream, canvas, crop_boxes, box_indices, n
            )
            return image_gradient, box_gradient

        return crops, gradient

    return crop(canvas, crop_boxes)


def _crop_and_resize_image_gradient(upstream, canvas, crop_boxes, box_indices, n):
    """The gradient of crop_and_resize with respect to its image: upstream [M, n, n, C] ->
    [B, Hc, Wc, C], each sample's value spread over its four pixels with its bilinear weights."""
    _, height, width, channels = canvas.shape
    y1, x1, y2, x2 = tf.unstack(crop_boxes, num=4, axis=-1)
    j = tf.range(n, dtype=tf.float32)
    scale = 1.0 / (n - 1) if n > 1 else 0.0
    # The kernel's sample positions: y1 * (H - 1) + j * (y2 - y1) * (H - 1) / (n - 1).
    ys = (y1 * (height - 1))[:, None] + j * ((y2 - y1) * (height - 1) * scale)[:, None]
    xs = (x1 * (width - 1))[:, None] + j * ((x2 - x1) * (width - 1) * scale)[:, None]
    if n == 1:
        ys = (0.5 * (y1 + y2) * (height - 1))[:, None]
        xs = (0.5 * (x1 + x2) * (width - 1))[:, None]
    rows = _canvas_neighbours(ys, height)
    cols = _canvas_neighbours(xs, width)
    image_start = box_indices[:, None, None] * (height * width)  # [M, 1, 1]
    num_segments = tf.shape(canvas)[0] * (height * width)
    gradient = None
    for row_index, row_weight in rows:
        for col_index, col_weight in cols:
            index = image_start + row_index[:, :, None] * width + col_index[:, None, :]
            weight = row_weight[:, :, None, None] * col_weight[:, None, :, None]
            term = tf.math.unsorted_segment_sum(
                tf.reshape(upstream * weight, [-1, channels]), tf.reshape(index, [-1]), num_segments
            )
            gradient = term if gradient is None else gradient + term
    return tf.reshape(gradient, tf.shape(canvas))


def _canvas_neighbours(points, size):
    """The two bilinear neighbours (index, weight) of points [M, n] on an axis of `size`
    pixels, as crop_and_resize takes them; points outside [0, size - 1] get weight 0."""
    inside = tf.logical_and(points >= 0.0, points <= size - 1.0)
    points = tf.where(inside, points, tf.zeros_like(points))
    lower = tf.floor(points)
    fraction = points - lower
    weight = tf.cast(inside, tf.float32)
    return (
        (tf.cast(lower, tf.int32), (1.0 - fraction) * weight),
        (tf.cast(tf.math.ceil(points), tf.int32), fraction * weight),
    )


def _canvas(feature_list, level_sizes):
    """Lays every level out on one zero canvas [B, Hc, Wc, C]; returns it and the (y, x)
    canvas position of each level's pixel (0, 0).

    The first (largest) level sits on the left, the others in one column to its right; a
    one-pixel zero border surrounds the canvas. This takes about 1.5x the largest level's
    memory (stacking the levels as a batch would take one largest level per level).
    """
    (h0, w0), rest = level_sizes[0], level_sizes[1:]
    column_h = sum(h for h, _ in rest)
    column_w = max([w for _, w in rest], default=0)
    inner_h = max(h0, column_h)
    parts = [tf.pad(feature_list[0], [[0, 0], [0, inner_h - h0], [0, 0], [0, 0]])]
    origins = [(1.0, 1.0)]
    if rest:
        pieces, top = [], 0
        for feature, (h, w) in zip(feature_list[1:], rest):
            pieces.append(tf.pad(feature, [[0, 0], [0, 0], [0, column_w - w], [0, 0]]))
            origins.append((1.0 + top, 1.0 + w0))
            top += h
        column = tf.concat(pieces, axis=1)
        parts.append(tf.pad(column, [[0, 0], [0, inner_h - column_h], [0, 0], [0, 0]]))
    canvas = tf.concat(parts, axis=2)
    return tf.pad(canvas, [[0, 0], [1, 1], [1, 1], [0, 0]]), origins


def _roi_align_gather(
    feature_list, level_sizes, boxes, level_index, min_level, output_size, sampling_ratio
):
    n = output_size * sampling_ratio
    channels = feature_list[0].shape[-1]
    # Every level flattened into one table of pixels [B * T, C], T = sum of H_l * W_l.
    flat = tf.concat(
        [tf.reshape(f, [-1, h * w, channels]) for f, (h, w) in zip(feature_list, level_sizes)],
        axis=1,
    )
    flat = tf.reshape(flat, [-1, channels])
    total = sum(h * w for h, w in level_sizes)
    level_starts = np.cumsum([0] + [h * w for h, w in level_sizes[:-1]])
    batch_start = tf.range(tf.shape(boxes)[0])[:, None] * total  # [B, 1]
    base = _level_table(level_starts, level_index, tf.int32) + batch_start  # [B, N]
    row_length = _level_table([w for _, w in level_sizes], level_index, tf.int32)
    (y_start, y_step), (x_start, x_step) = _axis_starts_and_steps(
        boxes, level_index, min_level, len(level_sizes), n
    )
    heights = _level_table([h for h, _ in level_sizes], level_index, tf.float32)
    widths = _level_table([w for _, w in level_sizes], level_index, tf.float32)
    # For sample i of every bin along an axis: its two bilinear neighbours, as
    # (pixel index, weight) pairs of [B, N, S] tensors.
    row_neighbours = [
        pair
        for i in range(sampling_ratio)
        for pair in _neighbours(y_start, y_step, heights, output_size, sampling_ratio, i)
    ]
    col_neighbours = [
        pair
        for i in range(sampling_ratio)
        for pair in _neighbours(x_start, x_step, widths, output_size, sampling_ratio, i)
    ]
    # One gather per (row neighbour, column neighbour): 4 R^2 gathers of [B * N * S * S, C]
    # rows each, summed with their weights. Smaller peak memory than one gather of all.
    pooled = None
    for row_index, row_weight in row_neighbours:
        row_offset = base[..., None, None] + (row_index * row_length[..., None])[..., :, None]
        for col_index, col_weight in col_neighbours:
            index = tf.reshape(row_offset + col_index[..., None, :], [-1])
            weight = tf.reshape(row_weight[..., :, None] * col_weight[..., None, :], [-1, 1])
            term = tf.gather(flat, index) * weight
            pooled = term if pooled is None else pooled + term
    pooled = pooled * (1.0 / sampling_ratio**2)  # [B * N * S * S, C]
    return _unflatten_boxes(pooled, boxes, output_size)


def _neighbours(start, step, size, output_size, sampling_ratio, i):
    """The two bilinear neighbours along one axis of sample i of every bin.

    Args:
        start, step: float32 [B, N], see `_axis_starts_and_steps`.
        size: float32 [B, N], the level's size along the axis.

    Returns:
        ((index_0, weight_0), (index_1, weight_1)): int32 [B, N, S] pixel indices, clamped
        into the level, and float32 [B, N, S] weights, 0 for points outside the level.
    """
    # Sample i of bin b is point j = b * R + i: the same arithmetic as `_points` over all j.
    offsets = np.arange(output_size, dtype=np.float64) * sampling_ratio + i + 0.5
    points = _points(start, step, offsets)  # [B, N, S]
    inside = _inside(points, size)
    # Points outside the level (also NaN) read pixel 0 with weight 0: indices stay in range.
    points = tf.where(inside, points, tf.zeros_like(points))
    lower = tf.floor(points)
    fraction = points - lower
    index_0 = tf.cast(lower, tf.int32)
    index_1 = tf.cast(tf.minimum(lower + 1.0, size[..., None] - 1.0), tf.int32)
    weight = tf.cast(inside, tf.float32)
    return (index_0, (1.0 - fraction) * weight), (index_1, fraction * weight)


def _unflatten_boxes(pooled, boxes, output_size):
    """[B * N * S * S, C] or [B * N, S, S, C] -> [B, N, S, S, C]; static where known."""
    batch = boxes.shape[0] if boxes.shape[0] is not None else -1
    num_boxes = boxes.shape[1] if boxes.shape[1] is not None else tf.shape(boxes)[1]
    return tf.reshape(pooled, [batch, num_boxes, output_size, output_size, pooled.shape[-1]])
