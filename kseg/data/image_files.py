"""Image and mask files, read the way kseg trains on them.

    images  tf.io.decode_image (PNG, JPEG, BMP, GIF): grey <-> RGB conversion by TF when
            `channels` asks for it, alpha dropped, 16-bit PNGs scaled to 8 bits
            (`read_image`; `resize_image` resizes as `folder_dataset` does).
    masks   Pillow (`read_mask`). A palette ("P") PNG stores a class index per pixel plus a
            colour table; TF's PNG decoder would return the colours, Pillow returns the
            indices, which are the class ids. Modes L, P, 1 and 16/32-bit I;16/I are read as
            they are; masks with colour channels are refused.
    other   `open_image`: any Pillow image, fully decoded, every failure a `DataError`.
"""

import os
import re
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image

from kseg.data.errors import DataError

MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
IMAGE_MODES = {"1": 1, "L": 1, "P": 3, "I": 1, "I;16": 1, "I;16L": 1, "I;16B": 1, "I;16N": 1,
               "LA": 1, "PA": 3, "RGB": 3, "RGBA": 3}  # channels after dropping alpha
_READABLE = "PNG, JPEG, BMP, GIF or TIFF"


def read_mask(path):
    """Reads a mask file as class ids, palette indices included (not colours).

    Args:
        path: str, bytes or os.PathLike of a mode 1, L, P, I;16 or I image.

    Returns:
        int32 numpy array [H, W].

    Raises:
        DataError: unreadable file, or a mask with colour channels (mode RGB, LA, ...).
    """
    return _read_mask(os.fsdecode(path))[0]


def _read_mask(path):
    """Returns (int32 [H, W] class ids, Pillow mode) of the mask file `path`."""
    img = open_image(path, "mask")
    if img.mode not in MASK_MODES:
        raise DataError(
            f"{path}: mask has mode {img.mode} ({len(img.getbands())} channels), expected one class id "
            f"per pixel (mode {', '.join(MASK_MODES)}): save masks as single-channel or palette PNGs")
    return np.asarray(img, dtype=np.int32), img.mode


def open_image(path, what="image"):
    """Opens and fully decodes an image with Pillow; any failure becomes a DataError.

    Pillow refuses images of more than 2 * `PIL.Image.MAX_IMAGE_PIXELS` pixels (a
    decompression bomb) before decoding them; that refusal is a DataError too.

    Args:
        path: str or os.PathLike of an image file.
        what: the file's role in the error message ("image", "mask", ...).

    Returns:
        the decoded `PIL.Image.Image`, in the file's own mode.
    """
    try:
        img = Image.open(path)
        img.load()
        return img
    except Exception as err:  # truncated, corrupt, not an image, decompression bomb, ...
        raise DataError(f"{path}: cannot read the {what}: {type(err).__name__}: {err}; expected a complete "
                        f"image file ({_READABLE})") from None


def read_image(path, channels=3):
    """Reads one image file exactly as `folder_dataset` does (for prediction and drawing).

    Args:
        path: str or os.PathLike of a PNG, JPEG, BMP or GIF file.
        channels: 1 or 3 (grey <-> RGB converted, alpha dropped).

    Returns:
        float32 numpy array [H, W, channels], raw pixel values in [0, 255].

    Raises:
        DataError: the file is missing, is not a PNG, JPEG, BMP or GIF, does not decode
            (empty, truncated, corrupt), or its header declares more pixels than Pillow's
            decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, checked before decoding).
    """
    if channels not in (1, 3):
        raise DataError(f"read_image: channels={channels!r}, expected 1 or 3")
    path = os.fspath(path)
    _check_pixel_count(path)
    try:
        return _decode_image(tf.io.read_file(path), channels).numpy()
    except (tf.errors.OpError, ValueError) as err:
        raise DataError(f"{path}: cannot read the image: {_op_message(err)}; expected a complete PNG, JPEG, "
                        "BMP or GIF file") from None


def _check_pixel_count(path):
    """Refuses an image whose header declares more pixels than Pillow's decompression-bomb limit."""
    limit = Image.MAX_IMAGE_PIXELS
    if not limit:
        return
    try:
        with warnings.catch_warnings():  # Pillow warns between 1x and 2x the limit; refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
    except Image.DecompressionBombError as err:  # Pillow refuses more than 2x the limit itself
        raise DataError(f"{path}: cannot read the image: {err}; expected at most {limit} pixels "
                        "(PIL.Image.MAX_IMAGE_PIXELS; raise it to read larger images)") from None
    except Exception:  # unreadable headers are reported by the decoder, with its reason
        return
    if width * height > limit:
        raise DataError(f"{path}: image is {height}x{width} (HxW) = {width * height} pixels, expected at most "
                        f"{limit} (PIL.Image.MAX_IMAGE_PIXELS; raise it to read larger images)")


def _op_message(err):
    """A TensorFlow error's message without the "{{function_node ...}}" prefix and "[Op:...]" suffix."""
    text = str(getattr(err, "message", err))
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S).strip()


def resize_image(image, image_size):
    """Resizes images exactly as `folder_dataset` does: bilinear, antialiased, clipped to [0, 255].

    Args:
        image: float [H, W, C] or [B, H, W, C] pixel values.
        image_size: (h, w), or None to return `image` unchanged.

    Returns:
        float32 [h, w, C] or [B, h, w, C].
    """
    if image_size is None:
        return image
    image = tf.image.resize(tf.cast(image, tf.float32), image_size, method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def _decode_image(data, channels):
    """PNG/JPEG/BMP/GIF bytes -> float32 [H, W, channels] (first frame of a GIF)."""
    image = tf.io.decode_image(data, channels=channels, expand_animations=False, dtype=tf.uint8)
    image = tf.cast(image, tf.float32)
    image.set_shape([None, None, channels])
    return image
