"""Instance masks between ROI and image coordinates.

    logits  [B, D, S, S, K]  the mask head's per-class outputs
    classes [B, D]        int, 1..K (0 = padding)
    masks   [B, D, S, S]  per-detection mask probabilities on the ROI's S x S grid
    boxes   [B, D, 4]     (y1, x1, y2, x2) pixels
    pasted  [B, D, H, W]
"""

import tensorflow as tf

from kseg.ops import nms


def class_masks(logits, classes):
    """Each ROI's mask for its own class: [B, D, S, S, K] logits, classes 1..K -> [B, D, S, S]
    (padding, class 0, reads channel 0)."""
    channel = tf.maximum(tf.cast(classes, tf.int32) - 1, 0)
    _, count, height, width, num_classes = logits.shape
    if count is None or num_classes is None:
        return tf.gather(tf.transpose(logits, (0, 1, 4, 2, 3)), channel, batch_dims=2)
    # Plane d * K + channel of [B, D * K, S, S], through rank-4 tensors only and one GATHER with
    # rank-1 indices (nms.batch_gather): LiteRT's GPU accelerator refuses 5-D RESHAPE / TRANSPOSE
    # and batched GATHERs. The plane offsets are [1, D], not [D]: its WebGPU kernel for an int32
    # ADD that broadcasts a constant vector computed wrong values.
    planes = tf.transpose(tf.reshape(logits, [-1, height, width, num_classes]), (0, 3, 1, 2))  # [B * D, K, S, S]
    planes = tf.reshape(planes, [-1, count * num_classes, height, width])
    return nms.batch_gather(planes, channel + tf.reshape(tf.range(count) * num_classes, [1, count]))


def _interpolation_matrix(start, end, size, length):
    """[..., length, size]: bilinear weights that read an S-sample row (bin centres spanning
    [start, end)) at the pixel centres 0.5 .. length - 0.5; zero outside the samples (a mask
    fades to 0 over half a bin at the box edge)."""
    centres = tf.range(length, dtype=tf.float32) + 0.5
    extent = tf.maximum(end - start, 1e-6)
    u = (centres[None] - start[..., None]) / extent[..., None] * size - 0.5  # [..., length]
    grid = tf.range(size, dtype=tf.float32)
    return tf.maximum(0.0, 1.0 - tf.abs(u[..., None] - grid))


def paste_masks(masks, boxes, image_size):
    """Pastes S x S ROI masks into the image: pasted = Ry @ mask @ Rx^T with bilinear matrices.

    Two batched matrix products and no gathers, so it converts to builtin TFLite ops and runs
    on GPU delegates.

    Args:
        masks [B, D, S, S]; boxes [B, D, 4]; image_size (H, W).

    Returns:
        [B, D, H, W] float32.
    """
    height, width = image_size
    size = masks.shape[-1]
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    rows = _interpolation_matrix(y1, y2, size, height)  # [B, D, H, S]
    cols = _interpolation_matrix(x1, x2, size, width)  # [B, D, W, S]
    return tf.matmul(tf.matmul(rows, masks), cols, transpose_b=True)


def _torchvision_paste_matrix(start, end, size, length, padding):
    """[..., length, size]: torchvision's paste weights along one axis.

    The box (start, end) is widened about its centre by (size + 2 padding) / size and truncated
    to integer pixels e1, e2; the zero-bordered mask (size + 2 padding samples) is resized
    bilinearly (align_corners=False) to the n = max(e2 - e1 + 1, 1) pixels from e1, which read
    it; other pixels read 0. The returned weights drop the border samples (they are zero).
    """
    padded = size + 2 * padding
    scale = tf.constant(padded / size, tf.float32)
    centre = (end + start) * 0.5
    half = (end - start) * 0.5 * scale
    first = tf.cast(centre - half, tf.int32)  # truncation toward zero, as torch's .to(int64)
    last = tf.cast(centre + half, tf.int32)
    count = tf.maximum(last - first + 1, 1)
    offset = tf.range(length, dtype=tf.int32) - first[..., None]  # [..., length]
    inside = tf.logical_and(offset >= 0, offset < count[..., None])
    step = float(padded) / tf.cast(count, tf.float32)  # input / output size, as torch
    source = tf.maximum(step[..., None] * (tf.cast(offset, tf.float32) + 0.5) - 0.5, 0.0)
    lower = tf.minimum(tf.floor(source), padded - 1.0)
    fraction = tf.clip_by_value(source - lower, 0.0, 1.0)
    upper = tf.minimum(lower + 1.0, padded - 1.0)
    grid = tf.range(padded, dtype=tf.float32)
    weights = ((1.0 - fraction)[..., None] * tf.cast(tf.equal(grid, lower[..., None]), tf.float32)
               + fraction[..., None] * tf.cast(tf.equal(grid, upper[..., None]), tf.float32))
    weights *= tf.cast(inside, tf.float32)[..., None]
    return weights[..., padding:padding + size]


def paste_masks_torchvision(masks, boxes, image_size, padding=1):
    """Pastes S x S ROI masks into the image exactly as torchvision's `paste_masks_in_image`.

    Each mask gets a `padding`-sample zero border, its box is widened by (S + 2 padding) / S
    about its centre and truncated to integer pixels [e1, e2], and the bordered mask is resized
    bilinearly (align_corners=False, no antialiasing) to (e2 - e1 + 1) pixels per side placed at
    e1; pixels outside read 0. Written as pasted = Ry @ mask @ Rx^T (builtin TFLite ops).

    Args:
        masks: float32 [B, D, S, S] probabilities.
        boxes: float32 [B, D, 4] (y1, x1, y2, x2) in image pixels.
        image_size: (H, W) of the image pasted into.
        padding: the zero border in mask samples (1, as torchvision).

    Returns:
        float32 [B, D, H, W].
    """
    height, width = (int(v) for v in image_size)
    size = masks.shape[-1]
    y1, x1, y2, x2 = tf.unstack(tf.cast(boxes, tf.float32), axis=-1)
    rows = _torchvision_paste_matrix(y1, y2, size, height, padding)  # [B, D, H, S]
    cols = _torchvision_paste_matrix(x1, x2, size, width, padding)  # [B, D, W, S]
    return tf.matmul(tf.matmul(rows, tf.cast(masks, tf.float32)), cols, transpose_b=True)
