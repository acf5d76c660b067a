"""Sampling an image at arbitrary (displaced) coordinates: the math of warping augmentations.

Shape shorthand:

    image   [H, W, C] or [B, H, W, C]   any real or integer dtype
    coords  [h, w, 2] or [B, h, w, 2]   float32 source position (y, x) of every output pixel
    output  [h, w, C] or [B, h, w, C]   (batched when `image` is)

Coordinate convention: pixel-index units with pixel centres on integers, so (0, 0) is the
centre of the top-left pixel and (H - 1, W - 1) the centre of the bottom-right one. Sampling
at `identity_grid(H, W)` returns the image unchanged, bit for bit.

Out-of-image samples follow `mode` (the names of scipy.ndimage.map_coordinates in brackets):

    "constant"   a neighbour outside the image reads `fill_value`; bilinear sampling blends
                 towards it within the last pixel ("grid-constant").
    "symmetric"  half-sample mirror: index -1 reads 0, -2 reads 1, H reads H - 1 ("reflect").
    "edge"       the nearest border pixel ("nearest").

Built from floor, gather and arithmetic only (no ImageProjectiveTransform), so it runs
anywhere TF runs, in a tf.data map or in a model graph.
"""

import tensorflow as tf

MODES = ("constant", "symmetric", "edge")


def identity_grid(height, width):
    """Returns the coordinates of every pixel of an `height` x `width` image.

    Args:
        height: int or scalar int tensor, H.
        width: int or scalar int tensor, W.

    Returns:
        float32 [H, W, 2], `grid[i, j] == (i, j)`.
    """
    ys = tf.range(height, dtype=tf.float32)
    xs = tf.range(width, dtype=tf.float32)
    yy, xx = tf.meshgrid(ys, xs, indexing="ij")
    return tf.stack([yy, xx], axis=-1)


def bilinear_sample(image, coords, mode="constant", fill_value=0.0):
    """Samples `image` at `coords` with bilinear interpolation.

    Args:
        image: [H, W, C] or [B, H, W, C], any real or integer dtype (computed in float32).
        coords: float [h, w, 2] or [B, h, w, 2], (y, x) per output pixel; a batched image
            with unbatched coords uses the same coords for every image.
        mode: "constant", "symmetric" or "edge" (see the module docstring).
        fill_value: value of out-of-image neighbours when `mode="constant"`.

    Returns:
        float32 [h, w, C] or [B, h, w, C].
    """
    image, coords, batched = _prepare(image, coords, mode, "bilinear_sample")
    image = tf.cast(image, tf.float32)
    fill = tf.cast(fill_value, tf.float32)
    y, x = coords[..., 0], coords[..., 1]
    y0f, x0f = tf.floor(y), tf.floor(x)
    wy, wx = (y - y0f)[..., None], (x - x0f)[..., None]
    y0, x0 = tf.cast(y0f, tf.int32), tf.cast(x0f, tf.int32)
    top = (1.0 - wx) * _read(image, y0, x0, mode, fill) + wx * _read(image, y0, x0 + 1, mode, fill)
    bottom = (1.0 - wx) * _read(image, y0 + 1, x0, mode, fill) + wx * _read(
        image, y0 + 1, x0 + 1, mode, fill
    )
    out = (1.0 - wy) * top + wy * bottom
    return out if batched else out[0]


def nearest_sample(image, coords, mode="constant", fill_value=0):
    """Samples `image` at `coords`, taking the nearest pixel (ties round up: 0.5 reads 1).

    Values are copied, never blended, so a mask of class ids stays a mask of class ids.

    Args:
        image: [H, W, C] or [B, H, W, C], any dtype.
        coords: float [h, w, 2] or [B, h, w, 2], (y, x) per output pixel.
        mode: "constant", "symmetric" or "edge" (see the module docstring).
        fill_value: value of out-of-image samples when `mode="constant"` (e.g. the ignore class).

    Returns:
        [h, w, C] or [B, h, w, C], the dtype of `image`.
    """
    image, coords, batched = _prepare(image, coords, mode, "nearest_sample")
    fill = tf.cast(fill_value, image.dtype)
    yi = tf.cast(tf.floor(coords[..., 0] + 0.5), tf.int32)
    xi = tf.cast(tf.floor(coords[..., 1] + 0.5), tf.int32)
    out = _read(image, yi, xi, mode, fill)
    return out if batched else out[0]


def _prepare(image, coords, mode, name):
    """Checks arguments; returns (image [B,H,W,C], coords float32 [B,h,w,2], batched)."""
    if mode not in MODES:
        raise ValueError(f"{name}: mode={mode!r}, expected one of {MODES}")
    image = tf.convert_to_tensor(image)
    coords = tf.cast(tf.convert_to_tensor(coords), tf.float32)
    if image.shape.rank not in (3, 4):
        raise ValueError(f"{name}: image has shape {image.shape}, expected [H, W, C] or [B, H, W, C]")
    if coords.shape.rank not in (3, 4) or coords.shape[-1] != 2:
        raise ValueError(f"{name}: coords has shape {coords.shape}, expected [h, w, 2] or [B, h, w, 2]")
    batched = image.shape.rank == 4
    if not batched:
        if coords.shape.rank != 3:
            raise ValueError(f"{name}: unbatched image {image.shape} needs coords [h, w, 2], got {coords.shape}")
        image, coords = image[None], coords[None]
    elif coords.shape.rank == 3:
        coords = tf.broadcast_to(coords[None], tf.concat([tf.shape(image)[:1], tf.shape(coords)], 0))
    return image, coords, batched


def _map_index(idx, size, mode):
    """Maps integer indices into [0, size); returns (index, inside) where `inside` is False
    only for out-of-image indices in "constant" mode."""
    if mode == "symmetric":
        period = tf.math.floormod(idx, 2 * size)
        return tf.where(period >= size, 2 * size - 1 - period, period), None
    inside = (idx >= 0) & (idx < size) if mode == "constant" else None
    return tf.clip_by_value(idx, 0, size - 1), inside


def _read(image, yi, xi, mode, fill):
    """Gathers image[b, yi, xi, :] for int32 [B, h, w] indices; returns [B, h, w, C]."""
    shape = tf.shape(image)
    height, width, channels = shape[1], shape[2], shape[3]
    yi, y_in = _map_index(yi, height, mode)
    xi, x_in = _map_index(xi, width, mode)
    flat = tf.reshape(image, [shape[0], height * width, channels])
    idx_shape = tf.shape(yi)
    flat_idx = tf.reshape(yi * width + xi, [idx_shape[0], -1])
    values = tf.gather(flat, flat_idx, batch_dims=1)
    values = tf.reshape(values, tf.concat([idx_shape, [channels]], 0))
    if mode == "constant":
        values = tf.where((y_in & x_in)[..., None], values, fill)
    return values
