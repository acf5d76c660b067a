"""Box math for detection heads: anchors, box <-> delta coding, IoU, clipping.

Shape shorthand:

    A        anchors (all pyramid levels, flattened)
    N, M     boxes in the two sets compared by `iou_matrix`
    ...      leading (batch) dimensions; they broadcast

    boxes    [..., 4]  float32 (y1, x1, y2, x2) in input-image pixels
    anchors  [A, 4]    same layout, a NumPy constant
    deltas   [..., 4]  float32 (dy, dx, dh, dw)

Coordinates are continuous: pixel i covers [i, i + 1), so a box over a whole H x W image is
(0, 0, H, W) and its height is y2 - y1. Padded boxes are all zeros; every function here keeps
them finite (zero-area boxes have IoU 0 with everything, their deltas are finite).

Box coding follows Faster R-CNN (Ren et al. 2015) as in Mask R-CNN (He et al. 2017):

    dy = wy * (cy - cay) / ha      dh = wh * log(h / ha)
    dx = wx * (cx - cax) / wa      dw = ww * log(w / wa)

with (cy, cx, h, w) a box's centre and size and (cay, cax, ha, wa) its anchor's. The RPN uses
weights (1, 1, 1, 1), the box head (10, 10, 5, 5).

Every TF function is made of element-wise arithmetic, comparisons and selects only, so it runs
in a Keras layer, under XLA and in a TFLite model with builtin ops.
"""

import math

import numpy as np
import tensorflow as tf

# Floor for box sizes inside log() and divisions: degenerate boxes stay finite.
_EPSILON = 1e-6

BOX_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
DEFAULT_DELTA_CLIP = math.log(1000.0 / 16.0)


def _check_image_size(image_size):
    if (
        len(image_size) != 2
        or not all(isinstance(v, (int, np.integer)) and v > 0 for v in image_size)
    ):
        raise ValueError(f"image_size must be two positive Python ints (H, W), got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _as_float32(x):
    """Any tensor-like (lists, float16 or int tensors) as a float32 tensor."""
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _ceil_div(a, b):
    return -(-a // b)


def anchor_counts(
    image_size,
    strides=(4, 8, 16, 32, 64),
    aspect_ratios=(0.5, 1.0, 2.0),
    scales=(1.0,),
):
    """Returns the number of anchors on every pyramid level, in `anchor_boxes` order.

    Args:
        image_size: (H, W) Python ints.
        strides: stride of each level, P2..P6 by default.
        aspect_ratios: h / w ratios of the anchors of every cell.
        scales: size multipliers of the anchors of every cell.

    Returns:
        list of ints, ceil(H / stride) * ceil(W / stride) * len(scales) * len(aspect_ratios)
        per level.

    Example:
        >>> anchor_counts((64, 64), strides=(4, 8))
        [768, 192]
    """
    height, width = _check_image_size(image_size)
    per_cell = len(scales) * len(aspect_ratios)
    return [_ceil_div(height, s) * _ceil_div(width, s) * per_cell for s in strides]


def anchor_boxes(
    image_size,
    strides=(4, 8, 16, 32, 64),
    sizes=(32, 64, 128, 256, 512),
    aspect_ratios=(0.5, 1.0, 2.0),
    scales=(1.0,),
):
    """Returns the anchors of a feature pyramid (FPN, Lin et al. 2017, section 4.1).

    Order: level (as `strides`), then feature-map cell row-major over (y, x), then anchor
    (scale-major, then aspect ratio). Level l has a ceil(H / stride) x ceil(W / stride) map; the
    anchors of cell (y, x) are centred at ((y + 0.5) * stride, (x + 0.5) * stride) with, for
    ratio r = h / w, h = size * scale * sqrt(r) and w = size * scale / sqrt(r).

    Args:
        image_size: (H, W) Python ints.
        strides: stride of each level, P2..P6 by default.
        sizes: base anchor size (sqrt of its area at scale 1) of each level.
        aspect_ratios: h / w ratios.
        scales: size multipliers.

    Returns:
        np.ndarray float32 [A, 4], (y1, x1, y2, x2) in pixels, A = sum(anchor_counts(...)).

    Example:
        >>> anchor_boxes((8, 8), strides=(8,), sizes=(4,), aspect_ratios=(1.0,)).tolist()
        [[2.0, 2.0, 6.0, 6.0]]
    """
    height, width = _check_image_size(image_size)
    if len(strides) != len(sizes):
        raise ValueError(
            f"strides and sizes need one entry per level, got {len(strides)} strides "
            f"{tuple(strides)} and {len(sizes)} sizes {tuple(sizes)}"
        )
    root_ratios = np.sqrt(np.asarray(aspect_ratios, np.float64))
    scales = np.asarray(scales, np.float64)
    levels = []
    for stride, size in zip(strides, sizes):
        heights = (size * scales[:, None] * root_ratios[None, :]).reshape(-1)  # [K]
        widths = (size * scales[:, None] / root_ratios[None, :]).reshape(-1)
        cy = (np.arange(_ceil_div(height, stride)) + 0.5) * stride
        cx = (np.arange(_ceil_div(width, stride)) + 0.5) * stride
        cy, cx = np.meshgrid(cy, cx, indexing="ij")
        cy, cx = cy[..., None], cx[..., None]  # [h, w, 1]
        level = np.stack(
            [cy - heights / 2, cx - widths / 2, cy + heights / 2, cx + widths / 2], axis=-1
        )  # [h, w, K, 4]
        levels.append(level.reshape(-1, 4))
    return np.concatenate(levels, axis=0).astype(np.float32)


def _centres_and_sizes(boxes):
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
    return (y1 + y2) * 0.5, (x1 + x2) * 0.5, y2 - y1, x2 - x1


def encode_boxes(boxes, anchors, weights=RPN_WEIGHTS):
    """Returns the regression targets that move `anchors` onto `boxes`.

    Sizes below 1e-6 pixels (degenerate or padded boxes) are raised to 1e-6 inside log() and
    divisions, so every delta is finite.

    Args:
        boxes: float32 [..., 4] (y1, x1, y2, x2).
        anchors: float32 [..., 4], broadcastable against `boxes` (typically [A, 4]).
        weights: (wy, wx, wh, ww) multipliers; (10, 10, 5, 5) for the box head.

    Returns:
        float32 [..., 4] (dy, dx, dh, dw), the broadcast shape of the inputs.

    Example:
        >>> encode_boxes([[0.0, 0.0, 20.0, 10.0]], [[0.0, 0.0, 10.0, 10.0]]).numpy().round(4)
        array([[0.5   , 0.    , 0.6931, 0.    ]], dtype=float32)
    """
    boxes = _as_float32(boxes)
    anchors = _as_float32(anchors)
    wy, wx, wh, ww = (float(w) for w in weights)
    cy, cx, h, w = _centres_and_sizes(boxes)
    cay, cax, ha, wa = _centres_and_sizes(anchors)
    ha = tf.maximum(ha, _EPSILON)
    wa = tf.maximum(wa, _EPSILON)
    h = tf.maximum(h, _EPSILON)
    w = tf.maximum(w, _EPSILON)
    return tf.stack(
        [
            wy * (cy - cay) / ha,
            wx * (cx - cax) / wa,
            wh * tf.math.log(h / ha),
            ww * tf.math.log(w / wa),
        ],
        axis=-1,
    )


def decode_boxes(deltas, anchors, weights=RPN_WEIGHTS, clip=DEFAULT_DELTA_CLIP):
    """Applies regression deltas to anchors: the inverse of `encode_boxes`.

    dh / wh and dw / ww are clipped at `clip` before exp() (Detectron2's scale clamp), so a box
    grows at most exp(clip) = 62.5 times its anchor by default and never overflows.

    Args:
        deltas: float32 [..., 4] (dy, dx, dh, dw).
        anchors: float32 [..., 4], broadcastable against `deltas` (typically [A, 4]).
        weights: the (wy, wx, wh, ww) used to encode.
        clip: upper bound of the unweighted log-size deltas.

    Returns:
        float32 [..., 4] (y1, x1, y2, x2), not clipped to the image (see `clip_boxes`).

    Example:
        >>> decode_boxes([[0.5, 0.0, 0.6931472, 0.0]], [[0.0, 0.0, 10.0, 10.0]]).numpy().round(3)
        array([[ 0.,  0., 20., 10.]], dtype=float32)
    """
    deltas = _as_float32(deltas)
    anchors = _as_float32(anchors)
    wy, wx, wh, ww = (float(w) for w in weights)
    cay, cax, ha, wa = _centres_and_sizes(anchors)
    dy, dx, dh, dw = tf.unstack(deltas, num=4, axis=-1)
    cy = dy / wy * ha + cay
    cx = dx / wx * wa + cax
    h = tf.exp(tf.minimum(dh / wh, clip)) * ha
    w = tf.exp(tf.minimum(dw / ww, clip)) * wa
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip_boxes(boxes, image_size):
    """Clips boxes to the image: y to [0, H], x to [0, W].

    Args:
        boxes: float32 [..., 4] (y1, x1, y2, x2).
        image_size: (H, W) Python ints.

    Returns:
        float32 [..., 4], same shape.

    Example:
        >>> clip_boxes([[-5.0, 3.0, 40.0, 90.0]], (32, 64)).numpy().tolist()
        [[0.0, 3.0, 32.0, 64.0]]
    """
    height, width = _check_image_size(image_size)
    boxes = _as_float32(boxes)
    upper = tf.constant([height, width, height, width], tf.float32)
    return tf.minimum(tf.maximum(boxes, 0.0), upper)


def box_areas(boxes):
    """Returns box areas; inverted boxes (y2 < y1 or x2 < x1) have area 0.

    Args:
        boxes: float32 [..., 4] (y1, x1, y2, x2).

    Returns:
        float32 [...].

    Example:
        >>> box_areas([[0.0, 0.0, 2.0, 3.0], [5.0, 5.0, 4.0, 9.0]]).numpy().tolist()
        [6.0, 0.0]
    """
    boxes = _as_float32(boxes)
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def iou_matrix(boxes_a, boxes_b):
    """Returns the intersection over union of every pair of boxes.

    A pair whose union is empty (both boxes of zero area, e.g. padding) has IoU 0, never NaN;
    a zero-area box has IoU 0 with every box.

    Args:
        boxes_a: float32 [..., N, 4].
        boxes_b: float32 [..., M, 4]; the leading dimensions broadcast against `boxes_a`'s
            ([B, N, 4] with [M, 4] gives [B, N, M]).

    Returns:
        float32 [..., N, M] in [0, 1].

    Example:
        >>> iou_matrix([[0.0, 0.0, 2.0, 2.0]], [[1.0, 0.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]]).numpy()
        array([[0.33333334, 0.        ]], dtype=float32)
    """
    boxes_a = _as_float32(boxes_a)
    boxes_b = _as_float32(boxes_b)
    ay1, ax1, ay2, ax2 = (c[..., :, None] for c in tf.unstack(boxes_a, num=4, axis=-1))
    by1, bx1, by2, bx2 = (c[..., None, :] for c in tf.unstack(boxes_b, num=4, axis=-1))
    inter_h = tf.maximum(tf.minimum(ay2, by2) - tf.maximum(ay1, by1), 0.0)
    inter_w = tf.maximum(tf.minimum(ax2, bx2) - tf.maximum(ax1, bx1), 0.0)
    intersection = inter_h * inter_w  # [..., N, M]
    area_a = tf.maximum(ay2 - ay1, 0.0) * tf.maximum(ax2 - ax1, 0.0)  # [..., N, 1]
    area_b = tf.maximum(by2 - by1, 0.0) * tf.maximum(bx2 - bx1, 0.0)  # [..., 1, M]
    union = area_a + area_b - intersection
    positive = union > 0.0
    safe_union = tf.where(positive, union, tf.ones_like(union))
    return tf.where(positive, intersection / safe_union, tf.zeros_like(union))


def torchvision_anchor_boxes(grid_sizes, strides, sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0)):
    """Returns the anchors of torchvision's `AnchorGenerator` (Faster/Mask R-CNN v1), in kseg's layout.

    Differences from `anchor_boxes`: a cell's anchors are centred on its top-left corner
    (x * stride, y * stride), not on its centre, and the half sizes are rounded to integers
    (half-to-even) in float32, as torchvision rounds its base anchors. For ratio r = h / w,
    half height = round(size * sqrt(r) / 2), half width = round(size / sqrt(r) / 2).

    Args:
        grid_sizes: ((h, w), ...) the feature-map size of each level.
        strides: the stride of each level (the padded image size // the grid size), an int or
            (stride_y, stride_x).
        sizes: one anchor size per level.
        aspect_ratios: h / w ratios, the anchors of a cell in this order.

    Returns:
        np.ndarray float32 [A, 4] (y1, x1, y2, x2), levels in order, then cells row-major, then
        ratios.

    Example:
        >>> torchvision_anchor_boxes([(1, 2)], [32], sizes=[32], aspect_ratios=[0.5]).tolist()
        [[-11.0, -23.0, 11.0, 23.0], [-11.0, 9.0, 11.0, 55.0]]
    """
    if not len(grid_sizes) == len(strides) == len(sizes):
        raise ValueError(f"grid_sizes, strides and sizes need one entry per level; got {len(grid_sizes)}, "
                         f"{len(strides)} and {len(sizes)}")
    root = np.sqrt(np.asarray(aspect_ratios, np.float32))
    levels = []
    for (grid_h, grid_w), stride, size in zip(grid_sizes, strides, sizes):
        stride_y, stride_x = (stride, stride) if np.isscalar(stride) else stride
        half_h = np.round(root * np.float32(size) / np.float32(2.0)).astype(np.float32)
        half_w = np.round((np.float32(1.0) / root) * np.float32(size) / np.float32(2.0)).astype(np.float32)
        y = (np.arange(grid_h) * stride_y).astype(np.float32)[:, None, None]
        x = (np.arange(grid_w) * stride_x).astype(np.float32)[None, :, None]
        zeros = np.zeros((grid_h, grid_w, len(root)), np.float32)
        level = np.stack([y - half_h + zeros, x - half_w + zeros, y + half_h + zeros, x + half_w + zeros], -1)
        levels.append(level.reshape(-1, 4))
    return np.concatenate(levels, axis=0)
