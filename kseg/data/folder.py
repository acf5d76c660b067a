"""Folders of image + mask pairs: validation and the tf.data reader.

Pairing files by stem (`find_pairs`) and the train/validation split live in
`kseg.data.split`, which needs neither TF nor Pillow; reading one file lives in
`kseg.data.image_files` (`read_image`, `read_mask`, `open_image`, `resize_image`, also
importable from here).

Shape shorthand (`folder_dataset` output):

    images  float32 [B, H, W, C]  raw pixel values in [0, 255], C = `channels` (1 or 3)
    masks   int32   [B, H, W]     class ids after `remap`; `ignore_class` where padded

Images are decoded by TensorFlow and masks by Pillow, through tf.numpy_function, exactly as
`read_image` and `read_mask` read them. `remap` ({source_id: target_id}, unmapped values kept)
becomes a lookup table (`remap_table`) applied in the graph by `apply_remap` and in NumPy by
`validate_pairs`.
"""

import os

import numpy as np
import tensorflow as tf

from kseg.data.errors import DataError, is_int
from kseg.data.image_files import (  # noqa: F401  (read_mask and _op_message: importable from here as before)
    IMAGE_MODES,
    _decode_image,
    _op_message,
    _read_mask,
    open_image,
    read_image,
    read_mask,
    resize_image,
)
from kseg.data.sharding import check_shard, select_elements
from kseg.utils.progress import progress

_MAX_REMAP_KEY = 2**16 - 1
_SHOW = 5  # how many offending files an error message lists


def remap_table(remap):
    """Builds the lookup table of `remap`.

    Args:
        remap: dict {source_id: target_id} of ints, source ids in [0, 65535]; or None.

    Returns:
        int32 numpy array [N], `table[v]` the new value of v (identity where unmapped;
        values >= N are unmapped), or None when `remap` is None.
    """
    if remap is None:
        return None
    if not isinstance(remap, dict) or not remap:
        raise DataError(f"remap={remap!r}, expected a non-empty dict {{source_id: target_id}}")
    for key, value in remap.items():
        if not (is_int(key) and 0 <= key <= _MAX_REMAP_KEY and is_int(value) and value >= 0):
            raise DataError(f"remap entry {key!r}: {value!r}, expected ints with 0 <= source <= "
                            f"{_MAX_REMAP_KEY} and target >= 0")
    table = np.arange(max(remap) + 1, dtype=np.int32)
    for key, value in remap.items():
        table[key] = value
    return table


def apply_remap(mask, table):
    """Applies a `remap_table` to an int mask (tensor or numpy); `table=None` is the identity."""
    if table is None:
        return mask
    size = len(table)
    inside = (mask >= 0) & (mask < size)
    if isinstance(mask, np.ndarray):
        return np.where(inside, table[np.clip(mask, 0, size - 1)], mask).astype(mask.dtype)
    mapped = tf.gather(tf.constant(table, mask.dtype), tf.clip_by_value(mask, 0, size - 1))
    return tf.where(inside, mapped, mask)


def validate_pairs(pairs, num_classes, ignore_class=None, remap=None, channels=None):
    """Reads every pair with Pillow and checks it can be trained on; returns a summary.

    Checks: both files decode (truncated/corrupt files are named), images also with the
    TensorFlow decoder `folder_dataset` uses (it refuses some files Pillow reads: TIFF,
    corrupt PNG chunks); image mode is grey, RGB,
    palette (+ alpha) and converts to `channels`; the mask has one id per pixel; image and
    mask sizes agree; after `remap` every mask value is in [0, num_classes) or is
    `ignore_class`. All pairs are checked; one DataError then lists the first problems.

    Args:
        pairs: list of (image_path, mask_path), e.g. from `find_pairs`.
        num_classes: int >= 1, number of trained classes.
        ignore_class: int or None, the label counted in nothing (CamVid void 11, or 255).
        remap: dict {source_id: target_id} or None, applied before the range check.
        channels: 1, 3 or None, the channels the images will be read with.

    Returns:
        dict: "count" pairs, "image_sizes" sorted [H, W] pairs, "channels" sorted channel
        counts of the files (alpha excluded), "image_modes" and "mask_modes" (Pillow modes),
        "class_pixels" [num_classes] pixel counts, "class_image_pixels" [num_classes] counted
        pixels of the images where each class appears (for median-frequency weights),
        "ignore_pixels" int.

    Raises:
        DataError: naming each offending file with the value seen and the value expected.
    """
    _check_pairs(pairs, "validate_pairs")
    if not is_int(num_classes) or num_classes < 1:
        raise DataError(f"validate_pairs: num_classes={num_classes!r}, expected an int >= 1")
    if ignore_class is not None and (not is_int(ignore_class) or ignore_class < 0):
        raise DataError(f"validate_pairs: ignore_class={ignore_class!r}, expected an int >= 0 or None")
    if channels not in (None, 1, 3):
        raise DataError(f"validate_pairs: channels={channels!r}, expected 1, 3 or None")
    table = remap_table(remap)
    sizes, chans, image_modes, mask_modes = set(), set(), set(), set()
    class_pixels = np.zeros(num_classes, np.int64)
    class_image_pixels = np.zeros(num_classes, np.int64)
    ignore_pixels, problems = 0, []
    for image_path, mask_path in progress(pairs, total=len(pairs), desc="validate"):
        try:
            image_path = os.fspath(image_path)
            image = open_image(image_path, "image")
            if image.mode not in IMAGE_MODES:
                raise DataError(f"{image_path}: image mode {image.mode} ({len(image.getbands())} channels), "
                                f"expected grey, RGB or palette, +alpha (modes {', '.join(IMAGE_MODES)}) "
                                f"to read with channels={channels or '1 or 3'}")
            decoded = read_image(image_path, channels or 3)  # the decoder folder_dataset uses (Pillow is laxer)
            if decoded.shape[:2] != (image.height, image.width):
                raise DataError(f"{image_path}: TensorFlow decodes it as {decoded.shape[0]}x{decoded.shape[1]} (HxW) "
                                f"and Pillow as {image.height}x{image.width}, expected one size")
            mask, mask_mode = _read_mask(os.fspath(mask_path))
            mask = apply_remap(mask, table)
            if mask.shape != (image.height, image.width):
                raise DataError(f"{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW), expected the "
                                f"size of its image {image_path}: {image.height}x{image.width}")
            valid = (mask >= 0) & (mask < num_classes)
            ignored = mask == ignore_class if ignore_class is not None else np.zeros_like(valid)
            bad = np.unique(mask[~(valid | ignored)])
            if bad.size:
                shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
                after = " after remap" if remap else ""
                raise DataError(f"{mask_path}: label values {shown} out of range{after}: "
                                f"expected 0..{num_classes - 1} (num_classes={num_classes}) or "
                                f"ignore_class={ignore_class}")
        except DataError as err:
            problems.append(str(err))
            continue
        sizes.add((image.height, image.width))
        chans.add(IMAGE_MODES[image.mode])
        image_modes.add(image.mode)
        mask_modes.add(mask_mode)
        counts = np.bincount(mask[valid & ~ignored], minlength=num_classes)[:num_classes]
        class_pixels += counts
        class_image_pixels += np.where(counts > 0, counts.sum(), 0)
        ignore_pixels += int(ignored.sum())
    if problems:
        raise DataError(f"validate_pairs: {len(problems)} of {len(pairs)} pairs have problems "
                        f"(showing up to {_SHOW}):\n  " + "\n  ".join(problems[:_SHOW]))
    return {"count": len(pairs), "image_sizes": sorted(list(s) for s in sizes),
            "channels": sorted(chans), "image_modes": sorted(image_modes), "mask_modes": sorted(mask_modes),
            "class_pixels": class_pixels.tolist(), "class_image_pixels": class_image_pixels.tolist(),
            "ignore_pixels": ignore_pixels}


def _check_pairs(pairs, where):
    ok = isinstance(pairs, (list, tuple)) and len(pairs) > 0 and all(
        isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs)
    if not ok:
        raise DataError(f"{where}: pairs has {type(pairs).__name__} {str(pairs)[:80]!r}, expected a "
                        "non-empty list of (image_path, mask_path) tuples (see find_pairs)")


def folder_dataset(pairs, *, image_size=None, channels=3, batch_size=1, augment=None, shuffle=False,
                   repeat=False, cache=True, remap=None, ignore_class=None, pad_to_multiple=None,
                   seed=None, drop_remainder=False, crop_size=None, shard=None, skip=0):
    """A tf.data pipeline of (images, masks) batches from (image_path, mask_path) pairs.

    Order: decode -> remap -> resize -> cache -> shuffle -> repeat -> shard/skip -> crop ->
    augment -> pad -> batch -> prefetch. Element order is always deterministic (maps keep order); randomness
    (shuffle, augmentation seeds) is reproducible when `seed` is given, and differs from
    epoch to epoch either way. Run `validate_pairs` first: a bad file met here stops the
    iteration with a TF error carrying the DataError text.

    Args:
        pairs: list of (image_path, mask_path).
        image_size: (H, W) to resize to (bilinear, antialiased, for images; nearest for
            masks), or None to keep file sizes. Set it for static shapes.
        channels: 1 or 3, image channels (grey <-> RGB converted, alpha dropped).
        batch_size: int >= 1.
        augment: None or a callable `(image [H,W,C], mask [H,W], seed int64 [2]) ->
            (image, mask)` such as `Augment(...)`; runs after cache, per element.
        shuffle: shuffle the whole (cached) set each epoch.
        repeat: repeat forever (after shuffle, so each epoch is reshuffled).
        cache: True (memory), False, or a file path prefix for `Dataset.cache`.
        remap: dict {source_id: target_id} or None, e.g. ISBI {0: 0, 255: 1}.
        ignore_class: int or None, the mask value of padded pixels.
        pad_to_multiple: int or None, pad bottom/right so H and W are multiples of it
            (images with 0, masks with `ignore_class`, which must then be set).
        seed: int or None.
        drop_remainder: drop the last partial batch (static batch size).
        crop_size: (h, w) or None: a random window of this size is cut from each (image,
            mask) pair before augmentation, so training sees full-resolution patches (as the
            U-Net paper's tiles) instead of downsampled images. Images must be at least
            that large.
        shard: None, or (index, count, block): this input pipeline's rows of every global
            batch (`kseg.data.sharding.select_elements`), taken before cropping and
            augmentation, with the seeds of the full stream.
        skip: elements of this pipeline's stream to drop first (a resumed run).

    Returns:
        tf.data.Dataset of (float32 [B, H, W, C] in [0, 255], int32 [B, H, W]).

    Example:
        >>> ds = folder_dataset(find_pairs("camvid/val", "camvid/valannot"), image_size=(360, 480),
        ...                     batch_size=8, ignore_class=11)  # doctest: +SKIP
    """
    _check_pairs(pairs, "folder_dataset")
    shard = check_shard(shard, "folder_dataset")
    opt_int = lambda v, low: v is None or (is_int(v) and v >= low)  # noqa: E731
    for name, value, ok, expected in [
        ("image_size", image_size, image_size is None or (isinstance(image_size, (list, tuple)) and len(
            image_size) == 2 and all(is_int(v) and v > 0 for v in image_size)), "(H, W) positive ints or None"),
        ("channels", channels, channels in (1, 3), "1 or 3"),
        ("batch_size", batch_size, batch_size is not None and opt_int(batch_size, 1), "an int >= 1"),
        ("augment", augment, augment is None or callable(augment), "None or a callable (image, mask, seed)"),
        ("ignore_class", ignore_class, opt_int(ignore_class, 0), "None or an int >= 0"),
        ("pad_to_multiple", pad_to_multiple, opt_int(pad_to_multiple, 1), "None or an int >= 1"),
        ("seed", seed, opt_int(seed, -(2**63)), "None or an int"),
        ("cache", cache, isinstance(cache, (bool, str, os.PathLike)), "True, False or a file path"),
        ("crop_size", crop_size, crop_size is None or (isinstance(crop_size, (list, tuple)) and len(
            crop_size) == 2 and all(is_int(v) and v > 0 for v in crop_size)), "(h, w) positive ints or None"),
    ]:
        if not ok:
            raise DataError(f"folder_dataset: {name}={value!r}, expected {expected}")
    image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    table = remap_table(remap)
    size = (None, None) if image_size is None else image_size

    def load(image_path, mask_path):
        image = _decode_image(tf.io.read_file(image_path), channels)
        mask = tf.numpy_function(read_mask, [mask_path], tf.int32, stateful=False)
        mask.set_shape([None, None])
        mask = apply_remap(mask, table)
        same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(mask)))
        check = tf.debugging.Assert(same, ["folder_dataset: image and mask sizes differ:", image_path,
                                           tf.shape(image)[:2], mask_path, tf.shape(mask)])
        with tf.control_dependencies([check]):
            image = tf.identity(image)
        if image_size is not None:
            image = resize_image(image, image_size)
            mask = tf.image.resize(mask[..., None], image_size, method="nearest")[..., 0]
        image.set_shape([*size, channels])
        mask.set_shape(size)
        return image, mask

    paths = ([os.fspath(p[0]) for p in pairs], [os.fspath(p[1]) for p in pairs])
    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache is not False:
        ds = ds.cache("" if cache is True else os.fspath(cache))
    if shuffle:
        ds = ds.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if augment is not None or crop_size is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(
            2, drop_remainder=True)
        if crop_size is not None:
            size = tuple(int(v) for v in crop_size)

        def crop_and_augment(example, pair_seed):
            image, mask = example
            crop_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(pair_seed, 2))
            if crop_size is not None:
                image, mask = random_crop(image, mask, size, crop_seed)
            if augment is not None:
                image, mask = augment(image, mask, augment_seed)
            image, mask = tf.cast(image, tf.float32), tf.cast(mask, tf.int32)
            image.set_shape([*size, channels])
            mask.set_shape(size)
            return image, mask

        ds = select_elements(tf.data.Dataset.zip((ds, seeds)), shard, skip)
        ds = ds.map(crop_and_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = select_elements(ds, shard, skip)
    if pad_to_multiple is not None:
        ds = ds.map(_padder(pad_to_multiple, ignore_class, image_size), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def random_crop(image, mask, crop_size, seed):
    """The same random (h, w) window of image [H, W, C] and mask [H, W] (stateless `seed` [2])."""
    channels = image.shape[-1]
    stacked = tf.concat([image, tf.cast(mask[..., None], image.dtype)], axis=-1)
    stacked = tf.image.stateless_random_crop(stacked, [crop_size[0], crop_size[1], channels + 1], seed)
    return stacked[..., :channels], tf.cast(tf.round(stacked[..., channels]), mask.dtype)


def _padder(multiple, ignore_class, image_size):
    """Returns a map fn padding bottom/right to multiples of `multiple` (image 0, mask ignore)."""
    if image_size is not None:
        padded = [-(-v // multiple) * multiple for v in image_size]
        if ignore_class is None and list(image_size) != padded:
            raise DataError(f"folder_dataset: pad_to_multiple={multiple} pads image_size={image_size} to "
                            f"{tuple(padded)}, but ignore_class is None: set ignore_class (the mask value of "
                            "padded pixels), or pick an image_size that is a multiple")
    fill = 0 if ignore_class is None else ignore_class

    def pad(image, mask):
        shape = tf.shape(mask)
        pad_h, pad_w = (-shape[0]) % multiple, (-shape[1]) % multiple
        if ignore_class is None:
            check = tf.debugging.Assert(
                tf.equal(pad_h + pad_w, 0),
                [f"folder_dataset: pad_to_multiple={multiple} must pad an image of size (H, W)", shape,
                 "but ignore_class is None: set ignore_class, the mask value of padded pixels"])
            with tf.control_dependencies([check]):
                mask = tf.identity(mask)
        image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
        mask = tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=fill)
        if image_size is not None:
            image.set_shape([*padded, image.shape[-1]])
            mask.set_shape(padded)
        return image, mask

    return pad
