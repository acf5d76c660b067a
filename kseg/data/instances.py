"""Instance segmentation examples: COCO JSON and label-map readers, padding, the tf.data reader.

Shape shorthand (one example, a dict of NumPy arrays, N instances):

    image     uint8   [H, W, 3]
    boxes     float32 [N, 4]     (y1, x1, y2, x2) absolute pixels, continuous: pixel i covers
                                 [i, i+1), so a mask on rows 3..7 has y1 = 3, y2 = 8
    classes   int32   [N]        contiguous ids 1..K (0 = background, never an instance)
    masks     uint8   [N, H, W]  in {0, 1}
    iscrowd   uint8   [N]        optional: 1 = a COCO crowd region (a region to ignore)
    image_id  int

Categories: a list of {"id": 1..K, "name": str, "coco_id": original id or None}.

Padded to M = `max_instances` (`pad_instances`, one example; `instance_dataset`, batches of B):

    boxes          float32 [M, 4]     zeros past num_instances
    classes        int32   [M]        0 = padding
    masks          uint8   [M, H, W]  zeros past num_instances
    num_instances  int32   []         the number of real instances (first rows)

`instance_dataset` batches: "image" float32 [B, H, W, 3] raw pixels in [0, 255], the rest
as above with a leading B. Every shape is static (drop_remainder=True).
"""

import collections.abc
import json
import math
import os
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils

from kseg.data.coco_checks import check_image_record, clip_far_polygon, compressed_rle_total
from kseg.data.errors import DataError
from kseg.data.folder import _is_int, _open, read_mask, resize_image
from kseg.data.sharding import check_shard, select_elements
from kseg.utils.progress import progress

_SHOW = 5  # how many ids an error message lists
_PERCENTILES = (1.0, 99.8)  # intensity scaling of > 8-bit images (the usual fluorescence choice)
_GENERATOR_SHUFFLE = 64  # shuffle buffer (examples) when `examples` is a callable


def masks_to_boxes(masks):
    """Tight boxes of binary masks, in continuous pixel coordinates.

    Args:
        masks: [N, H, W] array, nonzero = inside.

    Returns:
        float32 [N, 4] (y1, x1, y2, x2) with y2 = last row + 1; all zeros for an empty mask.
    """
    masks = np.asarray(masks) != 0
    boxes = np.zeros((masks.shape[0], 4), np.float32)
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [N, H], [N, W]
    for i in np.flatnonzero(rows.any(axis=1)):
        r, c = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        boxes[i] = (r[0], c[0], r[-1] + 1, c[-1] + 1)
    return boxes


# ---------------------------------------------------------------------------------- COCO JSON


def read_coco_instances(json_path, image_dir, *, category_names=None, include_crowd=False):
    """Reads a COCO instances (detection) JSON and its images.

    Everything that can be checked without decoding pixels is checked here, for the whole
    file, before anything is returned: the top-level fields; every image record (id an int
    or string, file_name a non-empty string, height and width ints >= 1), that its file
    exists and that the file's size is the JSON's; every annotation's image_id, category_id
    and iscrowd (0 or 1, 0 when absent); polygons (an even count of >= 6 finite
    coordinates); bboxes (4 finite numbers); RLE sizes (must be the image's) and RLE counts,
    uncompressed or compressed (non-negative runs summing to H * W).

    Polygons may reach outside the image: pycocotools rasterizes the part inside (a polygon
    wholly outside, or one too thin to cover a pixel centre, gives an empty mask). Polygons
    reaching more than 8 image sizes outside are first clipped to that distance.

    Masks come from `segmentation` (polygons, or RLE compressed or not) through
    pycocotools.mask; boxes are the masks' tight boxes. An annotation whose mask is empty
    (no segmentation, or a polygon too thin to cover a pixel center) keeps its JSON `bbox`
    and an all-zero mask; one with neither mask pixels nor a bbox of positive area is
    skipped, and the skipped count is reported with one `warnings.warn` (UserWarning).
    Images with no (kept) annotation are kept, with N = 0: they are valid training
    examples (only background). A JSON with no images gives an empty sequence.

    Args:
        json_path: path of the JSON (keys "images", "annotations", "categories").
        image_dir: folder holding the images' `file_name`s.
        category_names: None to keep every category of the JSON (contiguous ids 1..K in
            order of COCO id), or a list of names to keep, in the order that gives them ids
            1..K; annotations of the other categories are left out.
        include_crowd: keep `iscrowd` = 1 annotations (needed for COCO-style evaluation,
            where detections on crowds are ignored); False leaves them out (training).

    Returns:
        (examples, categories): `examples` a `CocoInstances` sequence, one example dict per
        JSON image in file order (keys image, boxes, classes, masks, iscrowd, image_id),
        decoded when indexed; `categories` [K] dicts {"id", "name", "coco_id"}.

    Raises:
        DataError: naming the file, the field, the value seen and the value expected.

    Example:
        >>> examples, categories = read_coco_instances(
        ...     "instances_val2017.json", "val2017")  # doctest: +SKIP
        >>> examples[0]["masks"].shape  # doctest: +SKIP
        (N, H, W)
    """
    json_path, image_dir = os.fspath(json_path), os.fspath(image_dir)
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: nested deeper than Python's stack
        raise DataError(f"{json_path}: cannot read the COCO JSON: {type(err).__name__}: {err}") from None
    fields = ("images", "annotations", "categories")
    missing = [k for k in fields if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        seen = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{json_path}: top-level field(s) {', '.join(missing)} missing or not a list (keys seen: "
                        f"{seen}), expected a COCO instances JSON with lists 'images', 'annotations', 'categories'")
    categories, coco_to_class = _coco_categories(json_path, data["categories"], category_names)
    images = _coco_images(json_path, image_dir, data["images"])
    skipped = []
    for j, ann in enumerate(data["annotations"]):
        where = f"{json_path}: annotation id {ann.get('id', '?') if isinstance(ann, dict) else '?'} (annotations[{j}])"
        if not isinstance(ann, dict):
            raise DataError(f"{where}: has type {type(ann).__name__}, expected a dict")
        image = images.get(ann.get("image_id")) if _hashable(ann.get("image_id")) else None
        if image is None:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not the id of any of the "
                            f"{len(images)} images, expected one of {_some(images)}")
        if not _hashable(ann.get("category_id")) or ann.get("category_id") not in coco_to_class:
            raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories', expected one "
                            f"of {_some(c['id'] for c in data['categories'])}")
        class_id = coco_to_class[ann["category_id"]]
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):  # True and False compare equal to 1 and 0
            raise DataError(f"{where}: iscrowd {crowd!r}, expected 0 or 1")
        crowd = int(crowd)
        if class_id is None or (crowd and not include_crowd):
            continue
        rle = _annotation_rle(where, ann.get("segmentation"), image["height"], image["width"])
        area = 0 if rle is None else int(mask_utils.area(rle))
        if area > 0:
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        else:
            x, y, w, h = _annotation_bbox(where, ann.get("bbox"))
            if w <= 0 or h <= 0:
                skipped.append(ann.get("id", f"annotations[{j}]"))
                continue
        image["instances"].append((rle, class_id, crowd, (y, x, y + h, x + w)))
    if skipped:
        warnings.warn(f"{json_path}: skipped {len(skipped)} zero-area annotation(s) (empty mask and no bbox of "
                      f"positive area), ids {_some(skipped)}", stacklevel=2)
    return CocoInstances(list(images.values())), categories


class CocoInstances(collections.abc.Sequence):
    """The examples of a COCO JSON (`read_coco_instances`), decoded when indexed.

    Holds the RLEs only; `examples[i]` reads the image and decodes the masks each time, so a
    large set costs little memory. `list(examples)` decodes everything at once.

    Attributes:
        image_ids: list of the images' COCO ids, in file order.
        paths: list of the image files, in the same order.
    """

    def __init__(self, images):
        self._images = images
        self.image_ids = [record["id"] for record in images]
        self.paths = [record["path"] for record in images]

    def __len__(self):
        return len(self._images)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        record = self._images[index]
        image = np.asarray(_open(record["path"], "image").convert("RGB"), dtype=np.uint8)
        h, w, instances = record["height"], record["width"], record["instances"]
        if image.shape[:2] != (h, w):
            raise DataError(f"{record['path']}: image is {image.shape[0]}x{image.shape[1]} (HxW), expected "
                            f"{h}x{w} as its JSON record says")
        masks = np.zeros((len(instances), h, w), np.uint8)
        drawn = [i for i, inst in enumerate(instances) if inst[0] is not None]
        if drawn:
            with warnings.catch_warnings():  # pycocotools' own NumPy 2 `copy=False` DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                masks[drawn] = mask_utils.decode([instances[i][0] for i in drawn]).transpose(2, 0, 1)
        return {"image": image,
                "boxes": np.array([inst[3] for inst in instances], np.float32).reshape(-1, 4),
                "classes": np.array([inst[1] for inst in instances], np.int32),
                "masks": masks,
                "iscrowd": np.array([inst[2] for inst in instances], np.uint8),
                "image_id": record["id"]}


def _coco_categories(json_path, records, names):
    """Returns (categories, {coco_id: class id or None when left out})."""
    for i, cat in enumerate(records):
        if not (isinstance(cat, dict) and _is_int(cat.get("id")) and isinstance(cat.get("name"), str)):
            raise DataError(f"{json_path}: categories[{i}] is {str(cat)[:80]!r}, expected a dict with 'id' and 'name' "
                            "(an int and a string)")
    ids = [cat["id"] for cat in records]
    if len(set(ids)) != len(ids):
        raise DataError(f"{json_path}: category ids {_some(sorted({i for i in ids if ids.count(i) > 1}))} repeated, "
                        "expected unique ids")
    by_name = {cat["name"]: cat["id"] for cat in records}
    if names is None:
        chosen = [cat["id"] for cat in sorted(records, key=lambda c: c["id"])]
    else:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise DataError(f"read_coco_instances: category_names={names!r}, expected a list of distinct names")
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise DataError(f"{json_path}: category_names {unknown} not in the JSON's categories, expected names "
                            f"such as {_some(by_name)}")
        chosen = [by_name[n] for n in names]
    coco_to_class = {cat["id"]: None for cat in records}
    coco_to_class.update({coco_id: i + 1 for i, coco_id in enumerate(chosen)})
    names_of = {cat["id"]: cat["name"] for cat in records}
    categories = [{"id": i + 1, "name": names_of[c], "coco_id": c} for i, c in enumerate(chosen)]
    return categories, coco_to_class


def _coco_images(json_path, image_dir, records):
    """Checks the image records and files; returns {id: record with path and instances []}."""
    images = {}
    shown = progress(records, total=len(records), desc="check images") if len(records) > 1000 else records
    for i, img in enumerate(shown):
        check_image_record(json_path, i, img, images)
        path = os.path.join(image_dir, img["file_name"])
        if not os.path.isfile(path):
            raise DataError(f"{path}: image file not found (image id {img['id']} of {json_path}), expected "
                            f"file_name {img['file_name']!r} in {image_dir}")
        try:
            with Image.open(path) as opened:  # reads the header only
                width, height = opened.size
        except Exception as err:  # not an image, truncated header, ...
            raise DataError(f"{path}: cannot read the image: {type(err).__name__}: {err}") from None
        if (height, width) != (img["height"], img["width"]):
            raise DataError(f"{path}: image is {height}x{width} (HxW), expected {img['height']}x{img['width']} "
                            f"as image id {img['id']} of {json_path} says")
        images[img["id"]] = {"id": img["id"], "path": path, "height": int(height), "width": int(width),
                             "instances": []}
    return images


def _annotation_rle(where, segmentation, h, w):
    """Checks a COCO `segmentation` and returns it as one compressed RLE (None when absent)."""
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        return None
    if isinstance(segmentation, list):
        polygons = []
        for k, poly in enumerate(segmentation):
            ok = isinstance(poly, (list, tuple)) and all(_finite(v) for v in poly)
            if not ok or len(poly) < 6 or len(poly) % 2:
                seen = f"{len(poly)} coordinates" if isinstance(poly, (list, tuple)) else type(poly).__name__
                raise DataError(f"{where}: polygon {k} has {seen} ({str(poly)[:60]}), expected an even number >= 6 "
                                "of finite numbers (x, y pairs of at least 3 points)")
            clipped = clip_far_polygon([float(v) for v in poly], h, w)
            if len(clipped) >= 6:
                polygons.append(clipped)
        if not polygons:  # every polygon lay far outside the image
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    if not (isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation):
        raise DataError(f"{where}: segmentation is {str(segmentation)[:60]!r}, expected a list of polygons or an RLE "
                        "dict with 'counts' and 'size'")
    size = segmentation["size"]
    if not isinstance(size, (list, tuple)) or list(size) != [h, w]:
        raise DataError(f"{where}: RLE size {size!r} (H, W), expected the image's size [{h}, {w}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != h * w:
            raise DataError(f"{where}: uncompressed RLE counts sum to {sum(c for c in counts if _is_int(c))}, "
                            f"expected non-negative ints summing to H * W = {h * w}")
        return mask_utils.frPyObjects(segmentation, h, w)
    if isinstance(counts, str):
        total = compressed_rle_total(counts)
        if total != h * w:
            seen = "not a compressed RLE string" if total is None else f"a compressed RLE of {total} pixels"
            raise DataError(f"{where}: RLE counts {counts[:40]!r} is {seen}, expected one of H * W = {h * w} pixels "
                            "(COCO's compressed RLE: characters '0'..'o', non-negative run lengths)")
        return {"size": [h, w], "counts": counts.encode("ascii")}
    raise DataError(f"{where}: RLE counts has type {type(counts).__name__}, expected a list (uncompressed) or a "
                    "string (compressed)")


def _annotation_bbox(where, bbox):
    """A COCO [x, y, w, h] as floats; (0, 0, 0, 0) when absent."""
    if bbox is None:
        return 0.0, 0.0, 0.0, 0.0
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
        raise DataError(f"{where}: bbox {str(bbox)[:60]}, expected [x, y, width, height] finite numbers")
    return tuple(float(v) for v in bbox)


def _finite(value):
    """A JSON number that is a finite float (not a bool, NaN, an infinity or an int past float's range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int of more than 308 digits
        return False


def _hashable(value):
    return isinstance(value, collections.abc.Hashable)


def _some(values):
    values = list(values)
    return ", ".join(str(v) for v in values[:_SHOW]) + (" ..." if len(values) > _SHOW else "")


# ---------------------------------------------------------------------------------- label maps


def read_instance_label_map(label_path, image_path=None, *, class_id=1, image_id=0):
    """Reads an instance label map (0 = background, each other value one instance).

    Instances are ordered by label value. A > 8-bit image (uint16 fluorescence, 32-bit) is
    scaled to uint8 between its 1st and 99.8th intensity percentiles; an 8-bit one is kept
    as it is; grey becomes 3 equal channels.

    Args:
        label_path: PNG/TIFF of any integer mode (L, P, I;16, I), values >= 0.
        image_path: the matching image, or None for a ground-truth-only example (evaluation)
            whose "image" is all zeros.
        class_id: int >= 1, the class of every instance.
        image_id: int, the example's "image_id".

    Returns:
        example dict: image uint8 [H, W, 3], boxes float32 [N, 4], classes int32 [N] (all
        `class_id`), masks uint8 [N, H, W], image_id.

    Raises:
        DataError: unreadable files, a colour or negative label map, sizes that differ.

    Example:
        >>> example = read_instance_label_map("instances.png", "image.png")  # doctest: +SKIP
    """
    if not _is_int(class_id) or class_id < 1:
        raise DataError(f"read_instance_label_map: class_id={class_id!r}, expected an int >= 1")
    label_path = os.fspath(label_path)
    labels = read_mask(label_path)
    if labels.min(initial=0) < 0:
        raise DataError(f"{label_path}: label map has negative value {labels.min()}, expected 0 (background) or "
                        "a positive instance id")
    ids = np.unique(labels)
    ids = ids[ids != 0]
    masks = (labels[None] == ids[:, None, None]).astype(np.uint8)
    if image_path is None:
        image = np.zeros((*labels.shape, 3), np.uint8)
    else:
        image = _read_any_image(os.fspath(image_path))
        if image.shape[:2] != labels.shape:
            raise DataError(f"{image_path}: image is {image.shape[0]}x{image.shape[1]} (HxW), expected the size of "
                            f"its label map {label_path}: {labels.shape[0]}x{labels.shape[1]}")
    return {"image": image, "boxes": masks_to_boxes(masks), "classes": np.full(len(ids), class_id, np.int32),
            "masks": masks, "image_id": image_id}


def _read_any_image(path):
    """Any Pillow image -> uint8 [H, W, 3]; > 8-bit data scaled by percentiles."""
    img = _open(path, "image")
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        data = np.asarray(img).astype(np.float64)
        low, high = np.percentile(data, _PERCENTILES)
        scaled = np.clip((data - low) / max(high - low, 1e-12), 0.0, 1.0)
        grey = np.round(scaled * 255.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


# ---------------------------------------------------------------------------------- padding


def pad_instances(example, max_instances):
    """Pads (or cuts) an example's instances to exactly `max_instances` rows.

    Crowd instances (iscrowd = 1) are dropped: they are regions to ignore, not objects. With
    more than M instances left, the M largest by mask area are kept (ties: the first ones),
    in their original order, and a UserWarning names the image and the counts.

    Args:
        example: an example dict (module docstring), N instances.
        max_instances: int M >= 1.

    Returns:
        a new dict: image and image_id as given; boxes float32 [M, 4], classes int32 [M]
        (0 = padding), masks uint8 [M, H, W], num_instances int32 scalar; no "iscrowd".

    Raises:
        DataError: missing keys or inconsistent shapes.
    """
    if not _is_int(max_instances) or max_instances < 1:
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
        _is_int(v) and v > 0 for v in image_size)
    for name, value, ok, expected in [
        ("image_size", image_size, ok_size, "(H, W) positive ints"),
        ("max_instances", max_instances, _is_int(max_instances) and max_instances >= 1, "an int >= 1"),
        ("batch_size", batch_size, _is_int(batch_size) and batch_size >= 1, "an int >= 1"),
        ("examples", type(examples).__name__, isinstance(examples, collections.abc.Sequence) or callable(examples),
         "a list of example dicts or a callable returning an iterator of them"),
        ("seed", seed, _is_int(seed), "an int"),
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
