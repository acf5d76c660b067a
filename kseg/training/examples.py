"""Sequences of detection examples read when indexed: subsets, held-out splits and resizing.

Shape shorthand (the `kseg.data.instances` contract):

    example   image [H, W, 3], boxes float [N, 4] (y1, x1, y2, x2) px, classes int [N] 1..K,
              masks uint8 [N, H, W], optional iscrowd [N], image_id; panoptic examples add
              semantic int32 [H, W], panoptic int32 [H, W] and segments {id: {...}}
"""

import collections.abc

import numpy as np
import tensorflow as tf

from kseg import data as kdata


class LazyExamples(collections.abc.Sequence):
    """`count` examples, example i computed by `read(i)` when indexed (none held in memory)."""

    def __init__(self, count, read):
        self.count, self.read = count, read

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        if not -self.count <= i < self.count:
            raise IndexError(f"example {i} of {self.count}")
        return self.read(i % self.count)


def subset(examples, indices):
    """The examples `indices` of a sequence, read when indexed."""
    return LazyExamples(len(indices), lambda i: examples[indices[i]])


def resized(examples, image_size):
    """The examples resized to `image_size` when indexed (`resize_example`)."""
    return LazyExamples(len(examples), lambda i: resize_example(examples[i], tuple(image_size)))


def held_out_split(examples, names, spec):
    """(train, val) subsets of `examples`, held out by `kdata.split_pairs` over their `names`
    with the spec's val_fraction and split_seed."""
    pairs = [(name, str(i)) for i, name in enumerate(names)]
    index = {pair: i for i, pair in enumerate(pairs)}
    train, val = kdata.split_pairs(pairs, val_fraction=spec.val_fraction, seed=spec.split_seed)
    return subset(examples, [index[p] for p in train]), subset(examples, [index[p] for p in val])


def resize_example(example, image_size):
    """An example at (h, w) = `image_size`, read as in training.

    Returns a new dict: image float32 [h, w, 3] (bilinear antialiased, `kdata.resize_image`),
    masks uint8 [N, h, w] (nearest), boxes scaled, "semantic" and "panoptic" maps (when
    present) nearest, "segments" without the ids that vanished, the other keys as they are.
    """
    image = np.asarray(example["image"])
    height, width = image.shape[:2]
    out = dict(example)
    if (height, width) == tuple(image_size):
        out["image"] = image.astype(np.float32)
        return out
    out["image"] = kdata.resize_image(image, image_size).numpy()
    masks = np.asarray(example["masks"], np.uint8)
    if len(masks):
        nearest = tf.image.resize(masks.transpose(1, 2, 0), image_size, method="nearest")
        out["masks"] = np.asarray(nearest).transpose(2, 0, 1).astype(np.uint8)
    else:
        out["masks"] = np.zeros((0, *image_size), np.uint8)
    scale = np.array([image_size[0] / height, image_size[1] / width] * 2, np.float32)
    out["boxes"] = np.asarray(example["boxes"], np.float32).reshape(-1, 4) * scale
    for key in ("semantic", "panoptic"):
        if key in example:
            out[key] = _resize_nearest(example[key], image_size)
    if "segments" in example and "panoptic" in example:  # a segment can vanish at the smaller size
        present = set(np.unique(out["panoptic"]).tolist())
        out["segments"] = {sid: info for sid, info in example["segments"].items() if sid in present}
    return out


def _resize_nearest(label_map, image_size):
    """An int [H, W] map resized nearest to `image_size`, int32 (ids up to 2^24 stay exact)."""
    resized_map = tf.image.resize(np.asarray(label_map, np.int32)[..., None], image_size, method="nearest")
    return np.asarray(resized_map)[..., 0].astype(np.int32)
