"""The tf.data reader of instance examples: padding to a fixed count, resize, flip, batches.

Examples follow the contract of `kseg.data.instances` (image uint8 [H, W, 3], boxes float32
[N, 4] (y1, x1, y2, x2) pixels, classes int32 [N] 1..K, masks uint8 [N, H, W], optional
iscrowd [N], image_id). Padded to M = `max_instances` (`pad_instances`, one example;
`instance_dataset`, batches of B):

    boxes          float32 [M, 4]     zeros past num_instances
    classes        int32   [M]        0 = padding
    masks          uint8   [M, H, W]  zeros past num_instances
    num_instances  int32   []         the number of real instances (first rows)

`instance_dataset` batches: "image" float32 [B, H, W, 3] raw pixels in [0, 255], the rest
as above with a leading B. Every shape is static (drop_remainder=True).
"""

import collections.abc
import warnings

import numpy as np
import tensorflow as tf

from kseg.data.errors import DataError, is_int
from kseg.data.image_files import resize_image
from kseg.data.sharding import check_shard, select_elements

_GENERATOR_SHUFFLE = 64  # shuffle buffer (examples) when `examples` is a callable


def pad_instances(example, max_instances):
    """Pads (or cuts) an example's instances to exactly `max_instances` rows.

    Crowd instances (iscrowd = 1) are dropped: they are regions to ignore, not objects. With
    more than M instances left, the M largest by mask area are kept (ties: the first ones),
    in their original order, and a UserWarning names the image and the counts.

    Args:
        example: an example dict (`kseg.data.instances`), N instances.
        max_instances: int M >= 1.

    Returns:
        a new dict: image and image_id as given; boxes float32 [M, 4], classes int32 [M]
        (0 = padding), masks uint8 [M, H, W], num_instances int32 scalar; no "iscrowd".

    Raises:
        DataError: missing keys or inconsistent shapes.
    """
    if not is_int(max_instances) or max_instances < 1:
        raise DataError(f"pad_instances: max_instances={max_instances!r}, expected an int >= 1")
    _check_example(example)
    masks, classes, boxes = example["masks"], example["classes"], example["boxes"]
    keep = np.arange(len(classes))
    if "iscrowd" in example:
        keep = keep[np.asarray(example["iscrowd"]) == 0]
    if len(keep) > max_instances:
        areas = masks[keep].reshape(len(keep), -1).sum(axis=1, dtype=np.int64)
        largest = np.sort(np.argsort(-areas, kind="stable")[:max_instances])
        warnings.warn(f"image {example.get('image_id')}: {len(keep)} instances, max_instances={max_instances}: "
                      f"kept the {max_instances} largest by area, dropped {len(keep) - max_instances}", stacklevel=2)
        keep = keep[largest]
    n, (h, w) = len(keep), masks.shape[1:]
    out = {k: v for k, v in example.items() if k not in ("boxes", "classes", "masks", "iscrowd")}
    out["boxes"] = np.zeros((max_instances, 4), np.float32)
    out["boxes"][:n] = boxes[keep]
    out["classes"] = np.zeros(max_instances, np.int32)
    out["classes"][:n] = classes[keep]
    out["masks"] = np.zeros((max_instances, h, w), np.uint8)
    out["masks"][:n] = masks[keep] != 0
    out["num_instances"] = np.int32(n)
    return out


def _check_example(example):
    """Raises a DataError unless `example` follows the module's example contract."""
    where = f"example image_id {example.get('image_id')!r}" if isinstance(example, dict) else "example"
    missing = [k for k in ("image", "boxes", "classes", "masks") if not isinstance(example, dict) or k not in example]
    if missing:
        seen = sorted(example) if isinstance(example, dict) else type(example).__name__
        raise DataError(f"{where}: lacks {', '.join(missing)} (has {seen}), expected a dict with image, boxes, "
                        "classes, masks")
    image, boxes, classes, masks = (np.asarray(example[k]) for k in ("image", "boxes", "classes", "masks"))
    h, w = image.shape[:2]
    n = len(classes)
    for name, value, shape in [("image", image, (h, w, 3)), ("boxes", boxes, (n, 4)), ("classes", classes, (n,)),
                               ("masks", masks, (n, h, w))]:
        if value.shape != shape:
            raise DataError(f"{where}: {name} has shape {list(value.shape)}, expected {list(shape)} "
                            f"(H={h}, W={w} from the image, N={n} from classes)")
    if "iscrowd" in example and np.shape(example["iscrowd"]) != (n,):
        raise DataError(f"{where}: iscrowd has shape {list(np.shape(example['iscrowd']))}, expected [{n}]")
    if n and classes.min() < 1:
        raise DataError(f"{where}: classes contain {classes.min()}, expected ids >= 1 (0 is background)")


# ---------------------------------------------------------------------------------- tf.data


def instance_dataset(examples, *, image_size, max_instances, batch_size, shuffle=True, flip=True, seed=0,
                     repeat=True, semantic=False, shard=None, skip=0):
    """A tf.data pipeline of padded instance batches with static shapes.

    Order: shuffle -> repeat -> shard/skip -> pad (`pad_instances`: crowds dropped, the
    largest M kept) -> resize -> flip -> batch (drop_remainder) -> prefetch. An example of another size than
    `image_size` is resized (no aspect ratio kept): the image bilinear antialiased (as
    `folder_dataset`), masks nearest, boxes scaled (exact in continuous coordinates; an
    instance whose resized mask vanishes keeps its box). The horizontal flip (p = 0.5)
    mirrors image, masks and boxes together. Randomness is reproducible given `seed`.

    With `semantic=True` (Panoptic FPN's batches) every example also needs "semantic" int
    [H, W] (0 = thing, 1..S stuff, 255 void), resized nearest and flipped with the rest.

    Args:
        examples: a sequence of example dicts (a list, `CocoInstances`), indexed lazily and
            shuffled whole; or a callable returning an iterator of them (read through
            `Dataset.from_generator`, shuffled in a buffer of 64 examples).
        image_size: (H, W) of the output.
        max_instances: int M >= 1.
        batch_size: int B >= 1.
        shuffle: shuffle each epoch.
        flip: random horizontal flips.
        seed: int, for shuffle and flips.
        repeat: repeat forever.
        semantic: add each example's "semantic" map.
        shard: None, or (index, count, block): this input pipeline's rows of every global
            batch (`kseg.data.sharding.select_elements`); with a sequence of examples they
            are chosen before any example is read.
        skip: elements of this pipeline's stream to drop first (a resumed run).

    Returns:
        tf.data.Dataset of dicts: image float32 [B, H, W, 3] in [0, 255], boxes float32
        [B, M, 4], classes int32 [B, M], masks uint8 [B, M, H, W], num_instances int32 [B],
        seed int64 [B, 2] (each example's own stateless seed: the detectors draw their anchor
        and ROI samples from it, so an example trains the same way on any replica); with
        `semantic`, also semantic int32 [B, H, W].

    Example:
        >>> from kseg.data.shapes import shapes_dataset_examples
        >>> ds = instance_dataset(shapes_dataset_examples(4), image_size=(64, 64), max_instances=8,
        ...                       batch_size=2, repeat=False)
        >>> next(iter(ds))["masks"].shape
        TensorShape([2, 8, 64, 64])
    """
    ok_size = isinstance(image_size, (list, tuple)) and len(image_size) == 2 and all(
        is_int(v) and v > 0 for v in image_size)
    for name, value, ok, expected in [
        ("image_size", image_size, ok_size, "(H, W) positive ints"),
        ("max_instances", max_instances, is_int(max_instances) and max_instances >= 1, "an int >= 1"),
        ("batch_size", batch_size, is_int(batch_size) and batch_size >= 1, "an int >= 1"),
        ("examples", type(examples).__name__, isinstance(examples, collections.abc.Sequence) or callable(examples),
         "a list of example dicts or a callable returning an iterator of them"),
        ("seed", seed, is_int(seed), "an int"),
    ]:
        if not ok:
            raise DataError(f"instance_dataset: {name}={value!r}, expected {expected}")
    shard = check_shard(shard, "instance_dataset")
    height, width = int(image_size[0]), int(image_size[1])
    m = int(max_instances)
    spec = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([m, 4], tf.float32),
            tf.TensorSpec([m], tf.int32), tf.TensorSpec([m, None, None], tf.uint8), tf.TensorSpec([], tf.int32))
    if semantic:
        spec += (tf.TensorSpec([None, None], tf.int32),)

    def padded(example):
        out = pad_instances(example, m)
        values = (np.asarray(out["image"], np.uint8), out["boxes"], out["classes"], out["masks"], out["num_instances"])
        return values + (_semantic_map(example),) if semantic else values

    def load(index):
        values = tf.numpy_function(lambda i: padded(examples[int(i)]), [index], [s.dtype for s in spec],
                                   stateful=False)
        for value, s in zip(values, spec):
            value.set_shape(s.shape)
        return tuple(values)

    # The stream is (example or its index, flip seed) pairs; a sequence is read after the
    # pipeline's shard is chosen, so each pipeline reads only its own examples.
    indexed = isinstance(examples, collections.abc.Sequence)
    if indexed:
        if len(examples) == 0:
            raise DataError("instance_dataset: examples is empty, expected at least one example")
        ds = tf.data.Dataset.range(len(examples))
        if shuffle:
            ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    else:
        ds = tf.data.Dataset.from_generator(lambda: (padded(e) for e in examples()), output_signature=spec)
        if shuffle:
            ds = ds.shuffle(_GENERATOR_SHUFFLE, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True)
    ds = select_elements(tf.data.Dataset.zip((ds, seeds)), shard, skip)

    def transform(example, pair_seed):
        if indexed:
            example = load(example)
        image, boxes, classes, masks, num = example[:5]
        if semantic:  # one more mask, resized and flipped with the instance masks
            masks = tf.concat([masks, tf.cast(example[5], tf.uint8)[None]], axis=0)
        image, boxes, masks = _resize(image, boxes, masks, (height, width))
        if flip:
            image, boxes, masks = _random_flip(image, boxes, classes, masks, pair_seed)
        image.set_shape([height, width, 3])
        out = {"image": image, "boxes": boxes, "classes": classes, "masks": masks[:m], "num_instances": num,
               "seed": tf.random.experimental.stateless_split(pair_seed, 2)[1]}
        out["masks"].set_shape([m, height, width])
        if semantic:
            out["semantic"] = tf.cast(masks[m], tf.int32)
            out["semantic"].set_shape([height, width])
        return out

    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _semantic_map(example):
    """The example's "semantic" map as int32 [H, W] in 0..255, checked against its image."""
    where = f"example image_id {example.get('image_id')!r}"
    if "semantic" not in example:
        raise DataError(f"{where}: no 'semantic' map (has {sorted(example)}), expected int [H, W] (0 = thing, "
                        "1..S stuff, 255 void) for a panoptic dataset")
    semantic = np.asarray(example["semantic"])
    shape = np.shape(example["image"])[:2]
    if semantic.shape != shape or not np.issubdtype(semantic.dtype, np.integer):
        raise DataError(f"{where}: semantic has shape {list(semantic.shape)} and dtype {semantic.dtype}, expected "
                        f"int {list(shape)} (the image's size)")
    if semantic.size and (semantic.min() < 0 or semantic.max() > 255):
        raise DataError(f"{where}: semantic holds {semantic.min()}..{semantic.max()}, expected 0..255")
    return semantic.astype(np.int32)


def _resize(image, boxes, masks, size):
    """image uint8 [h, w, 3], boxes [M, 4], masks [M, h, w] -> float32 image, boxes, masks at `size`."""
    shape = tf.shape(image)[:2]

    def resized():
        scale = tf.cast(tf.constant(size), tf.float32) / tf.cast(shape, tf.float32)
        new_masks = tf.image.resize(tf.transpose(masks, [1, 2, 0]), size, method="nearest")
        return (resize_image(image, size), boxes * tf.tile(scale, [2])[None],
                tf.transpose(new_masks, [2, 0, 1]))

    same = tf.reduce_all(tf.equal(shape, size))
    return tf.cond(same, lambda: (tf.cast(image, tf.float32), boxes, masks), resized)


def _random_flip(image, boxes, classes, masks, seed):
    """Mirrors image [H, W, 3], boxes [M, 4], masks [M, H, W] left-right with probability 0.5."""
    width = tf.cast(tf.shape(image)[1], tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    flipped = tf.where((classes > 0)[:, None], tf.stack([y1, width - x2, y2, width - x1], axis=-1), boxes)
    do = tf.random.stateless_uniform([], seed) < 0.5
    return (tf.where(do, image[:, ::-1], image), tf.where(do, flipped, boxes),
            tf.where(do, masks[:, :, ::-1], masks))
