"""ROI Align over a feature pyramid (Mask R-CNN, He et al. 2017; FPN, Lin et al. 2017).

Shape shorthand:

    B          batch size (padded)
    N          boxes per image (padded; padded boxes are all zeros)
    C          channels, the same on every level
    H, W       input image size, static Python ints
    H_l, W_l   size of level l (stride s = 2**l): ceil(H / 2**l), ceil(W / 2**l)
    S          output_size
    R          sampling ratio, R x R sample points per bin (R = K at most when adaptive)
    n          S * R sample points per side of a box

    features   {"P{l}": [B, H_l, W_l, C]} for l in min_level..max_level (other keys ignored)
    boxes      [B, N, 4] float32 (y1, x1, y2, x2), input-image pixels (pixel i covers [i, i+1))
    levels     [B, N] int32
    output     [B, N, S, S, C] float32

Level of a box (FPN eq. 1): L = floor(canonical_level + log2(sqrt(h * w) / canonical_size)),
clipped to [min_level, max_level]; boxes of zero area (padding, inverted boxes) go to
min_level. It is computed as min_level plus the number of thresholds
(canonical_size * 2**(k - canonical_level))**2, k in (min_level, max_level], that the area
reaches, which is the same formula without a log() that could round 2**k down. (torchvision's
LevelMapper adds 1e-6 to the log: it differs only for areas within 1.4e-6 relative of a
threshold; pass `levels=` to use another rule.)

Sampling convention, the one of Detectron2 and torchvision.ops.roi_align: on level l a box
is scaled by 1 / s and, with `aligned=True` (Detectron2, kseg's Mask R-CNN), shifted by -0.5,
so feature pixel i is centred on image coordinate (i + 0.5) * s; with `aligned=False`
(torchvision's Mask R-CNN, the original paper's code) it is not shifted and each side of the
scaled box is at least 1. Along each axis, in float32 and in this order of operations,

    start  = y1 / s - 0.5            (aligned=False: y1 / s)
    extent = (y2 - y1) / s           (aligned=False: max((y2 - y1) / s, 1))
    step   = extent / (S * R)
    p_j    = start + (j + 0.5) * step,   j = 0 .. S * R - 1

which puts R x R points in each of the S x S bins at bin_start + (i + 0.5) * bin_size / R.
A point reads 0 when y < -1 or y > H_l (or x < -1 or x > W_l). Otherwise y is clamped to
[0, H_l - 1] (and x to [0, W_l - 1]), so points in the band within one pixel outside the map
read its border pixels, and the point reads the bilinear interpolation of the four
neighbouring pixels. Each output bin is the mean of its R x R points.

Sampling ratio: `sampling_ratio=R >= 1` samples R x R points in every bin. `sampling_ratio <=
0` is torchvision's adaptive ratio: per box and axis R = ceil(extent / S), data dependent.
For static shapes it needs `max_sampling_ratio=K`: every box is computed with K x K point
slots, the slots past its own R weigh 0 and a bin is the mean of its R_y * R_x points (0 for
a box whose extent is 0). A box whose R exceeds K is sampled with K (torchvision would use
more points): choose K >= ceil(longest box side on its level / S). It costs K**2 / 4 times
the memory and time of R = 2.

Two implementations follow this convention. Both place points in float32, a few ulp of the
coordinate off the exact positions (ulp = 7.6e-6 pixel at 64..128 pixels into a level), so
they differ by that much times the features' change per pixel: under 1e-5 for [0, 1) features
on maps up to 32 pixels, up to about 1e-4 for N(0, 1) noise on the 128 x 128 P2 of a 512 image.
Both are differentiable with respect to the boxes too; callers stop_gradient() proposals.

    "crop_and_resize"  tf.image.crop_and_resize on one canvas holding every level, each with
                       a one-pixel copy of its border around it (this is the clamping).
                       Fast, and differentiable with respect to the features: the training
                       path. Its feature gradient is kseg's own (kseg.ops.crop_and_resize),
                       since TensorFlow's CPU kernel loses updates where boxes overlap. Not a
                       TFLite builtin (needs Flex) and has no XLA kernel. With the adaptive
                       ratio it runs the "gather" implementation.
    "gather"           floor + GATHER + bilinear weights on all levels flattened into one
                       table: TFLite builtin ops only, also compiles with XLA. The export path.

Inside a function compiled by XLA (`tf.function(jit_compile=True)`, Keras'
`compile(jit_compile=True)`, or its "auto" on a GPU), "crop_and_resize" runs the "gather"
implementation (`kseg.ops.xla.compiling_with_xla`): the same values, so a model built for
training needs no other setting to be compiled. It is about 1.4x slower than
crop_and_resize for the forward and backward pass on a CPU (measured at 256 x 256, 128 boxes).

Both are tested against torchvision.ops.roi_align (tests/ops/test_roi_align.py, fixtures written by
tests/reference/make_roi_align_fixtures.py): outputs and feature gradients within 1e-5.
"""

import numpy as np
import tensorflow as tf

from kseg.ops.boxes import _as_float32, _check_image_size, box_areas
from kseg.ops.checks import check_choice
from kseg.ops.crop_and_resize import crop_and_resize as _crop_and_resize
from kseg.ops.crop_and_resize import level_canvas
from kseg.ops.xla import compiling_with_xla

METHODS = ("crop_and_resize", "gather")  # the two implementations (roi_align); also ROIAlign's

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
    aligned=True,
    max_sampling_ratio=None,
    levels=None,
    min_level=2,
    max_level=5,
    canonical_size=224.0,
    canonical_level=4,
    method="crop_and_resize",
):
    """Pools a fixed-size feature patch for every box from its FPN level (ROI Align).

    See the module docstring for the level rule and the exact sampling convention. On level l
    this is torchvision.ops.roi_align(feature, boxes, S, spatial_scale=1 / 2**l,
    sampling_ratio, aligned) with boxes in (y1, x1, y2, x2) order; torchvision's Mask R-CNN
    pools with `aligned=False, sampling_ratio=2`, Detectron2's with `aligned=True`.

    Args:
        features: dict {"P{l}": float [B, H_l, W_l, C]}; needs min_level..max_level, static
            spatial sizes ceil(H / 2**l) x ceil(W / 2**l).
        boxes: float32 [B, N, 4] (y1, x1, y2, x2) in image pixels; any values (outside the
            image, zero size, padding) are allowed.
        image_size: (H, W) Python ints, the input image size (padded size, if padded).
        output_size: S, the output is S x S per box.
        sampling_ratio: R >= 1, R x R bilinear samples averaged per output bin; <= 0 for the
            adaptive ratio ceil(extent / S), which needs `max_sampling_ratio`.
        aligned: True (default): half-pixel shift of Detectron2's ROIAlign(aligned=True);
            False: no shift and box sides of at least one level pixel (torchvision's Mask
            R-CNN, `aligned=False`).
        max_sampling_ratio: K >= 1, the most samples per bin side of the adaptive ratio
            (static shapes); ignored when sampling_ratio >= 1.
        levels: optional int [B, N], the pyramid level of every box (e.g. another level
            rule); values are clipped into [min_level, max_level]. Default: `assign_levels`.
        min_level, max_level, canonical_size, canonical_level: see `assign_levels`.
        method: "crop_and_resize" (training; "gather" when compiled by XLA or with the
            adaptive ratio) or "gather" (TFLite builtins, XLA).

    Returns:
        float32 [B, N, S, S, C].

    Example:
        >>> feature = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])  # value 4y + x
        >>> box = tf.constant([[[2.0, 2.0, 14.0, 10.0]]])  # on P2: y in [0, 3], x in [0, 2]
        >>> out = roi_align({"P2": feature}, box, image_size=(16, 16), output_size=2,
        ...                 sampling_ratio=1, min_level=2, max_level=2, method="gather")
        >>> out[0, 0, :, :, 0].numpy().tolist()
        [[3.5, 4.5], [9.5, 10.5]]
        >>> out = roi_align({"P2": feature}, box, image_size=(16, 16), output_size=2,
        ...                 sampling_ratio=1, aligned=False, min_level=2, max_level=2)
        >>> out[0, 0, :, :, 0].numpy().tolist()  # points y in {1.25, 2.75}, x in {1, 2}
        [[6.0, 7.0], [12.0, 13.0]]
    """
    check_choice("method", method, METHODS)
    if not isinstance(output_size, (int, np.integer)) or output_size < 1:
        raise ValueError(f"output_size must be an int >= 1, got {output_size!r}")
    if not isinstance(sampling_ratio, (int, np.integer)):
        raise ValueError(f"sampling_ratio must be an int (>= 1, or <= 0 for adaptive), got {sampling_ratio!r}")
    if not isinstance(aligned, (bool, np.bool_)):
        raise ValueError(f"aligned must be True or False, got {aligned!r}")
    adaptive = sampling_ratio <= 0
    if adaptive and (not isinstance(max_sampling_ratio, (int, np.integer)) or max_sampling_ratio < 1):
        raise ValueError(
            f"sampling_ratio={sampling_ratio} (adaptive, ceil(extent / output_size) per box) needs "
            f"max_sampling_ratio, an int >= 1 bounding it for static shapes; got {max_sampling_ratio!r}"
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
    if levels is None:
        levels = assign_levels(boxes, min_level, max_level, canonical_size, canonical_level)
    else:
        levels = tf.cast(tf.convert_to_tensor(levels), tf.int32)
        if levels.shape.rank != 2:
            raise ValueError(f"levels must be [B, N] like boxes {boxes.shape}, got shape {levels.shape}")
        levels = tf.clip_by_value(levels, min_level, max_level)
    level_index = levels - min_level  # [B, N], 0-based
    strides = [2.0**l for l in range(min_level, max_level + 1)]
    axes = _box_axes(boxes, _level_table(strides, level_index, tf.float32), aligned)
    if adaptive:
        grid = [_adaptive_grid(extent, output_size, max_sampling_ratio) for _, extent in axes]
        return _roi_align_gather(feature_list, level_sizes, boxes, level_index, axes, output_size,
                                 grid, max_sampling_ratio)
    if method == "gather" or compiling_with_xla():  # XLA has no CropAndResize kernel
        return _roi_align_gather(feature_list, level_sizes, boxes, level_index, axes, output_size,
                                 None, int(sampling_ratio))
    return _roi_align_crop_and_resize(feature_list, level_sizes, boxes, level_index, axes,
                                      output_size, int(sampling_ratio))


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
    """Looks up one per-level constant (an integer: a size, stride or offset) for every box:
    [B, N]. For LiteRT's GPU accelerator, the GATHER reads rank-1 indices from an int32 table
    (a float table is stored in float16 by an fp16 export, and the GPU does not gather from it)."""
    table = np.asarray(values, np.float64)
    if not np.array_equal(table, np.round(table)) or np.abs(table).max(initial=0) >= 2**24:
        raise ValueError(f"level tables hold integers below 2**24 (exact in float32), got {values!r}")
    found = tf.gather(tf.constant(table.astype(np.int32)), tf.reshape(level_index, [-1]))
    return tf.cast(tf.reshape(found, tf.shape(level_index)), dtype)


def _box_axes(boxes, stride, aligned):
    """Returns ((start, extent) along y, (start, extent) along x) on each box's level, float32
    [B, N] each: the first edge in level pixels and the length sampled (module docstring)."""
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
    offset = 0.5 if aligned else 0.0
    axes = []
    for low, high in ((y1, y2), (x1, x2)):
        extent = (high - low) / stride
        if not aligned:
            extent = tf.maximum(extent, 1.0)
        axes.append((low / stride - offset, extent))
    return axes


def _adaptive_grid(extent, output_size, max_sampling_ratio):
    """torchvision's adaptive sampling ratio ceil(extent / S), capped at K: float32 [B, N]
    in {0, .., K}; 0 for empty or inverted boxes (and NaN)."""
    ratio = tf.math.ceil(extent / float(output_size))
    ratio = tf.where(ratio > 0.0, ratio, tf.zeros_like(ratio))  # also NaN -> 0
    return tf.minimum(ratio, float(max_sampling_ratio))


def _points(start, step, offsets):
    """Sample coordinates start + offsets * step: [B, N] x [k] -> [B, N, k]."""
    return start[..., None] + tf.constant(offsets, tf.float32) * step[..., None]


def _inside(points, size):
    """True where a point is read at all, -1 <= point <= size: points [B, N, k], size [B, N]."""
    return tf.logical_and(points >= -1.0, points <= size[..., None])


def _roi_align_crop_and_resize(
    feature_list, level_sizes, boxes, level_index, axes, output_size, sampling_ratio
):
    n = output_size * sampling_ratio
    offsets = np.arange(n, dtype=np.float64) + 0.5
    canvas, origins = level_canvas(feature_list, level_sizes)
    canvas_h, canvas_w = canvas.shape[1], canvas.shape[2]
    (y_start, y_extent), (x_start, x_extent) = axes
    ys = _points(y_start, y_extent / float(n), offsets)  # [B, N, n]
    xs = _points(x_start, x_extent / float(n), offsets)
    valid_y = _inside(ys, _level_table([h for h, _ in level_sizes], level_index, tf.float32))
    valid_x = _inside(xs, _level_table([w for _, w in level_sizes], level_index, tf.float32))

    # crop_and_resize puts point j of a crop from normalized a to b at
    # a * (size - 1) + j * (b - a) * (size - 1) / (n - 1) (at a * (size - 1) when n == 1), so
    # (first point, last point) / (size - 1) hits every p_j, up to round-off. Which points
    # count is decided by `valid_*` (the same arithmetic as the gather path), never by
    # crop_and_resize's own range check. A point in the band [-1, 0] or [size - 1, size]
    # interpolates between a border pixel and its copy around the level on the canvas, which
    # reads the border pixel: the clamping. The canvas's zero border keeps every valid point
    # inside the canvas, and a valid point rounded past the copies only blends in a
    # round-off weight of the neighbouring pixel.
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


def _roi_align_gather(
    feature_list, level_sizes, boxes, level_index, axes, output_size, grid, sampling_ratio
):
    """The gather implementation; `grid` is None for a fixed sampling_ratio R, else the
    adaptive ratio (float32 [B, N] along y, along x) and `sampling_ratio` its cap K."""
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
    heights = _level_table([h for h, _ in level_sizes], level_index, tf.float32)
    widths = _level_table([w for _, w in level_sizes], level_index, tf.float32)
    grid_y, grid_x = (None, None) if grid is None else grid
    # For sample i of every bin along an axis: its two bilinear neighbours, as
    # (pixel index, weight) pairs of [B, N, S] tensors.
    row_neighbours = [
        pair
        for i in range(sampling_ratio)
        for pair in _neighbours(*axes[0], heights, output_size, sampling_ratio, grid_y, i)
    ]
    col_neighbours = [
        pair
        for i in range(sampling_ratio)
        for pair in _neighbours(*axes[1], widths, output_size, sampling_ratio, grid_x, i)
    ]
    if grid is None:
        scale = tf.fill(tf.shape(level_index), 1.0 / sampling_ratio**2)
    else:  # the mean over the box's own R_y x R_x points (torchvision: count >= 1)
        scale = 1.0 / tf.maximum(grid_y * grid_x, 1.0)
    # One gather per (row neighbour, column neighbour): 4 R^2 gathers of [B * N * S * S, C]
    # rows each, summed with their weights. Smaller peak memory than one gather of all.
    pooled = None
    # Integer tensors get new axes from expand_dims, not [..., None]: the STRIDED_SLICE that
    # indexing writes is not taken by LiteRT's GPU accelerator for int32 (RESHAPE is).
    base = tf.expand_dims(tf.expand_dims(base, -1), -1)  # [B, N, 1, 1]
    row_length = tf.expand_dims(row_length, -1)  # [B, N, 1]
    for row_index, row_weight in row_neighbours:
        row_offset = base + tf.expand_dims(row_index * row_length, -1)  # [B, N, S, 1]
        row_weight = row_weight * scale[..., None]
        for col_index, col_weight in col_neighbours:
            index = tf.reshape(row_offset + tf.expand_dims(col_index, -2), [-1])
            weight = tf.reshape(row_weight[..., :, None] * col_weight[..., None, :], [-1, 1])
            term = tf.gather(flat, index) * weight
            pooled = term if pooled is None else pooled + term
    return _unflatten_boxes(pooled, boxes, output_size)  # pooled: [B * N * S * S, C]


def _neighbours(start, extent, size, output_size, sampling_ratio, grid, i):
    """The two bilinear neighbours along one axis of sample i of every bin.

    Args:
        start, extent: float32 [B, N], see `_box_axes`.
        size: float32 [B, N], the level's size along the axis.
        sampling_ratio: R, or the cap K of the adaptive ratio.
        grid: None, or float32 [B, N], the adaptive ratio of each box (samples i >= it
            weigh 0).

    Returns:
        ((index_0, weight_0), (index_1, weight_1)): int32 [B, N, S] pixel indices, clamped
        into the level, and float32 [B, N, S] weights, 0 for points not read (|module|).
    """
    bins = np.arange(output_size, dtype=np.float64)
    if grid is None:
        # Sample i of bin b is point j = b * R + i: the same arithmetic as `_points` over all j.
        points = _points(start, extent / float(output_size * sampling_ratio), bins * sampling_ratio + i + 0.5)
        used = 1.0
    else:
        ratio = tf.maximum(grid, 1.0)[..., None]  # [B, N, 1]
        offsets = tf.constant(bins, tf.float32) * ratio + (i + 0.5)  # point b * R + i
        points = start[..., None] + offsets * (extent[..., None] / (output_size * ratio))
        used = tf.cast(float(i) < grid, tf.float32)[..., None]
    inside = _inside(points, size)
    # Points not read (also NaN) read pixel 0 with weight 0: indices stay in range.
    points = tf.where(inside, points, tf.zeros_like(points))
    points = tf.minimum(tf.maximum(points, 0.0), size[..., None] - 1.0)  # the border band
    lower = tf.floor(points)
    fraction = points - lower
    index_0 = tf.cast(lower, tf.int32)
    index_1 = tf.cast(tf.minimum(lower + 1.0, size[..., None] - 1.0), tf.int32)
    weight = tf.cast(inside, tf.float32) * used
    return (index_0, (1.0 - fraction) * weight), (index_1, fraction * weight)


def _unflatten_boxes(pooled, boxes, output_size):
    """[B * N * S * S, C] or [B * N, S, S, C] -> [B, N, S, S, C]; static where known."""
    batch = boxes.shape[0] if boxes.shape[0] is not None else -1
    num_boxes = boxes.shape[1] if boxes.shape[1] is not None else tf.shape(boxes)[1]
    return tf.reshape(pooled, [batch, num_boxes, output_size, output_size, pooled.shape[-1]])
