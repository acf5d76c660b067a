"""Instance segmentation examples: the example contract, COCO JSON and label-map readers.

Shape shorthand (one example, a dict of NumPy arrays, N instances):

    image     uint8   [H, W, 3]
    boxes     float32 [N, 4]     (y1, x1, y2, x2) absolute pixels, continuous: pixel i covers
                                 [i, i+1), so a mask on rows 3..7 has y1 = 3, y2 = 8
    classes   int32   [N]        contiguous ids 1..K (0 = background, never an instance)
    masks     uint8   [N, H, W]  in {0, 1}
    iscrowd   uint8   [N]        optional: 1 = a COCO crowd region (a region to ignore)
    image_id  int

Categories: a list of {"id": 1..K, "name": str, "coco_id": original id or None}.

Padding to `max_instances` and the tf.data reader of these examples (`pad_instances`,
`instance_dataset`) live in `kseg.data.instance_pipeline` and are importable from here too.
"""

import collections.abc
import json
import math
import os
import warnings

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from kseg.data.coco_checks import check_image_record, clip_far_polygon, compressed_rle_total
from kseg.data.errors import DataError, is_int, shortlist
from kseg.data.image_files import open_image, read_mask
from kseg.utils.progress import progress

_PERCENTILES = (1.0, 99.8)  # intensity scaling of > 8-bit images (the usual fluorescence choice)


def masks_to_boxes(masks):
    """Tight boxes of binary masks, in continuous pixel coordinates.

    Args:
        masks: [N, H, W] array, nonzero = inside.

    Returns:
        float32 [N, 4] (y1, x1, y2, x2) with y2 = last row + 1; all zeros for an empty mask.

    Example:
        >>> mask = np.zeros((1, 6, 8), np.uint8)
        >>> mask[0, 1:3, 2:7] = 1
        >>> masks_to_boxes(mask).tolist()
        [[1.0, 2.0, 3.0, 7.0]]
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
                            f"{len(images)} images, expected one of {shortlist(images)}")
        if not _hashable(ann.get("category_id")) or ann.get("category_id") not in coco_to_class:
            raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories', expected one "
                            f"of {shortlist(c['id'] for c in data['categories'])}")
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
                      f"positive area), ids {shortlist(skipped)}", stacklevel=2)
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
        image = np.asarray(open_image(record["path"], "image").convert("RGB"), dtype=np.uint8)
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
        if not (isinstance(cat, dict) and is_int(cat.get("id")) and isinstance(cat.get("name"), str)):
            raise DataError(f"{json_path}: categories[{i}] is {str(cat)[:80]!r}, expected a dict with 'id' and 'name' "
                            "(an int and a string)")
    ids = [cat["id"] for cat in records]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"{json_path}: category ids {shortlist(repeated)} repeated, expected unique ids")
    by_name = {cat["name"]: cat["id"] for cat in records}
    if names is None:
        chosen = [cat["id"] for cat in sorted(records, key=lambda c: c["id"])]
    else:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise DataError(f"read_coco_instances: category_names={names!r}, expected a list of distinct names")
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise DataError(f"{json_path}: category_names {unknown} not in the JSON's categories, expected names "
                            f"such as {shortlist(by_name)}")
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
        if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != h * w:
            raise DataError(f"{where}: uncompressed RLE counts sum to {sum(c for c in counts if is_int(c))}, "
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
    if not is_int(class_id) or class_id < 1:
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
    img = open_image(path, "image")
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        data = np.asarray(img).astype(np.float64)
        low, high = np.percentile(data, _PERCENTILES)
        scaled = np.clip((data - low) / max(high - low, 1e-12), 0.0, 1.0)
        grey = np.round(scaled * 255.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)

