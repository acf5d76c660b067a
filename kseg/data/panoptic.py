"""COCO panoptic format: PNG id maps + a JSON of segments, read and written.

The format (cocodataset.org/#format-data, "panoptic segmentation"): one RGB PNG per image
whose pixel (R, G, B) holds the segment id R + 256 G + 256^2 B (0 = VOID, unlabeled), and
one JSON:

    {"images": [{"id", "file_name", "height", "width"}],         optional for predictions
     "annotations": [{"image_id", "file_name" (the PNG),
                      "segments_info": [{"id", "category_id", "iscrowd", "area", "bbox"}]}],
     "categories": [{"id", "name", "isthing", ...}]}              optional for predictions

Shape shorthand (one example, as `read_coco_panoptic` gives and `write_coco_panoptic` takes):

    image_id        the JSON's image_id
    file_name       str, the PNG's name
    panoptic        int32 [H, W]   segment ids, 0 = VOID
    segments        {id: {"id", "category_id", "iscrowd", "area", "bbox", ...}} (the JSON's
                    segments_info keyed by id; bbox is COCO [x, y, width, height] pixels)
    image           uint8 [H, W, 3]  only when an image folder is given
    image_file_name str, the image's name, when the JSON has "images"

Consistency is an error, never a warning: a nonzero PNG id absent from segments_info, and
a segments_info id with no pixel in the PNG, both raise `DataError` (COCO's own files never
have either, and `kseg.metrics.PanopticQuality` needs every segment to have pixels).
"""

import collections.abc
import json
import os

import numpy as np
from PIL import Image

from kseg.data.coco_checks import check_image_record
from kseg.data.errors import DataError, is_int, shortlist
from kseg.data.image_files import open_image
from kseg.utils import atomic_write

_MAX_ID = 256**3 - 1


def rgb_to_id(rgb):
    """COCO panoptic colours -> segment ids: R + 256 G + 256^2 B.

    Args:
        rgb: integer array [..., 3] with values in [0, 255].

    Returns:
        int32 [...].

    Example:
        >>> int(rgb_to_id(np.array([1, 2, 3])))
        197121
    """
    rgb = np.asarray(rgb)
    if rgb.ndim < 1 or rgb.shape[-1] != 3:
        raise DataError(f"rgb_to_id: array of shape {rgb.shape}, expected [..., 3] (R, G, B)")
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids):
    """Segment ids -> COCO panoptic colours, the inverse of `rgb_to_id`.

    Args:
        ids: integer array [...] with values in [0, 256^3 - 1].

    Returns:
        uint8 [..., 3] (R, G, B).

    Example:
        >>> id_to_rgb(np.array([197121])).tolist()
        [[1, 2, 3]]
    """
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"id_to_rgb: ids of dtype {ids.dtype}, expected integers")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > _MAX_ID):
        raise DataError(f"id_to_rgb: ids in [{ids.min()}, {ids.max()}], expected ids in [0, {_MAX_ID}] (three bytes)")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def segment_stats(panoptic):
    """{id: (area, [x, y, width, height])} of every nonzero id of an id map (COCO's area and bbox)."""
    panoptic = np.asarray(panoptic)
    out = {}
    ids, inverse, areas = np.unique(panoptic.ravel(), return_inverse=True, return_counts=True)
    rows, cols = np.divmod(np.arange(panoptic.size), panoptic.shape[1])
    y0, x0 = np.full(len(ids), panoptic.shape[0]), np.full(len(ids), panoptic.shape[1])
    y1, x1 = np.full(len(ids), -1), np.full(len(ids), -1)
    np.minimum.at(y0, inverse, rows)
    np.minimum.at(x0, inverse, cols)
    np.maximum.at(y1, inverse, rows)
    np.maximum.at(x1, inverse, cols)
    for k, i in enumerate(ids.tolist()):
        if i != 0:
            out[i] = (int(areas[k]), [int(x0[k]), int(y0[k]), int(x1[k] - x0[k] + 1), int(y1[k] - y0[k] + 1)])
    return out


# ---------------------------------------------------------------------------------- reading


def read_coco_panoptic(json_path, png_dir, image_dir=None):
    """Reads a COCO panoptic JSON and its PNGs (and images).

    Everything that can be checked without decoding pixels is checked here, for the whole
    file: "annotations" (a list; each with image_id, file_name and a segments_info list;
    unique image_ids); each segment (an int id > 0, unique in its image; a category_id of
    "categories" when the JSON has them; iscrowd 0 or 1, 0 when absent); that every PNG
    exists; "images" records (id, file_name, height, width) when present, and that each
    annotation's image_id is one of them. With `image_dir`, "images" is required and every
    image file must exist. Decoding (`examples[i]`) checks the PNG (RGB, the JSON's size,
    the image's size) and that its ids and segments_info's ids are the same sets.

    Args:
        json_path: the JSON.
        png_dir: folder of the annotations' `file_name` PNGs.
        image_dir: folder of the images' `file_name`s, or None for no "image".

    Returns:
        (examples, categories): `examples` a `CocoPanoptic` sequence, one example dict per
        annotation in file order (module docstring), decoded when indexed; `categories`
        the JSON's "categories" list, or None when it has none.

    Raises:
        DataError: naming the file, the field, the value seen and the value expected.

    Example:
        >>> examples, categories = read_coco_panoptic(
        ...     "panoptic_val2017.json", "panoptic_val2017")  # doctest: +SKIP
        >>> examples[0]["panoptic"].shape  # doctest: +SKIP
        (H, W)
    """
    json_path, png_dir = os.fspath(json_path), os.fspath(png_dir)
    image_dir = None if image_dir is None else os.fspath(image_dir)
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: nested deeper than Python's stack
        raise DataError(f"{json_path}: cannot read the COCO panoptic JSON: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        seen = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{json_path}: no 'annotations' list (keys seen: {seen}), expected a COCO panoptic JSON "
                        "with 'annotations' (and 'images', 'categories')")
    categories = _categories(json_path, data.get("categories"))
    category_ids = None if categories is None else {c["id"] for c in categories}
    images = _images(json_path, data.get("images"), image_dir)
    records, seen_ids = [], set()
    for j, ann in enumerate(data["annotations"]):
        where = f"{json_path}: annotations[{j}]"
        if not isinstance(ann, dict):
            raise DataError(f"{where} has type {type(ann).__name__}, expected a dict")
        missing = [k for k in ("image_id", "file_name", "segments_info") if k not in ann]
        if missing:
            raise DataError(f"{where} lacks field(s) {', '.join(missing)} (fields seen: {sorted(ann)}), expected "
                            "image_id, file_name and segments_info")
        image_id = ann["image_id"]
        where = f"{json_path}: annotation of image_id {image_id!r} (annotations[{j}])"
        if not isinstance(image_id, collections.abc.Hashable) or image_id in seen_ids:
            raise DataError(f"{where}: image_id repeated or not hashable, expected one annotation per image")
        seen_ids.add(image_id)
        if images is not None and image_id not in images:
            raise DataError(f"{where}: image_id is not the id of any of the {len(images)} 'images', expected one "
                            f"of {shortlist(images)}")
        segments = _segments(where, ann["segments_info"], category_ids)
        png = os.path.join(png_dir, str(ann["file_name"]))
        if not os.path.isfile(png):
            raise DataError(f"{png}: panoptic PNG not found ({where}), expected file_name {ann['file_name']!r} in "
                            f"{png_dir}")
        record = {"image_id": image_id, "file_name": str(ann["file_name"]), "png": png, "segments": segments}
        if images is not None:
            record.update(images[image_id])
        records.append(record)
    return CocoPanoptic(records, json_path), categories


class CocoPanoptic(collections.abc.Sequence):
    """The examples of a COCO panoptic JSON (`read_coco_panoptic`), decoded when indexed.

    Holds the segment tables only; `examples[i]` reads the PNG (and image) each time, so a
    large set costs little memory.

    Attributes:
        image_ids: the annotations' image_ids, in file order.
        paths: the PNG files, in the same order.
    """

    def __init__(self, records, json_path):
        self._records = records
        self._json_path = json_path
        self.image_ids = [r["image_id"] for r in records]
        self.paths = [r["png"] for r in records]

    def __len__(self):
        return len(self._records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        record = self._records[index]
        png = open_image(record["png"], "panoptic PNG")
        if png.mode != "RGB":
            raise DataError(f"{record['png']}: PNG has mode {png.mode}, expected RGB (id = R + 256 G + 256^2 B)")
        panoptic = rgb_to_id(np.asarray(png))
        h, w = panoptic.shape
        if "height" in record and (h, w) != (record["height"], record["width"]):
            raise DataError(f"{record['png']}: PNG is {h}x{w} (HxW), expected {record['height']}x{record['width']} "
                            f"as image id {record['image_id']!r} of {self._json_path} says")
        segments = {sid: dict(info) for sid, info in record["segments"].items()}
        check_panoptic(panoptic, segments, where=f"{record['png']} (image_id {record['image_id']!r})")
        example = {"image_id": record["image_id"], "file_name": record["file_name"],
                   "panoptic": panoptic, "segments": segments}
        if "image_file_name" in record:
            example["image_file_name"] = record["image_file_name"]
        if "image_path" in record:
            image = np.asarray(open_image(record["image_path"], "image").convert("RGB"), dtype=np.uint8)
            if image.shape[:2] != (h, w):
                raise DataError(f"{record['image_path']}: image is {image.shape[0]}x{image.shape[1]} (HxW), "
                                f"expected {h}x{w}, the size of its panoptic PNG {record['png']}")
            example["image"] = image
        return example


def check_panoptic(panoptic, segments, where="panoptic"):
    """Raises `DataError` unless the nonzero ids of `panoptic` and the keys of `segments` are equal sets."""
    present = set(np.unique(panoptic).tolist()) - {0}
    unlisted = sorted(present - set(segments))
    if unlisted:
        raise DataError(f"{where}: PNG holds segment id(s) {shortlist(unlisted)} absent from segments_info, expected "
                        f"every nonzero id to be listed (ids listed: {shortlist(sorted(segments))})")
    empty = sorted(set(segments) - present)
    if empty:
        raise DataError(f"{where}: segments_info lists id(s) {shortlist(empty)} with no pixel in the PNG, expected "
                        "every listed segment to have pixels")


def _categories(json_path, records):
    if records is None:
        return None
    if not isinstance(records, list):
        raise DataError(f"{json_path}: categories has type {type(records).__name__}, expected a list")
    for i, c in enumerate(records):
        if not (isinstance(c, dict) and is_int(c.get("id")) and isinstance(c.get("name"), str)
                and c.get("isthing") in (0, 1)):  # True and False compare equal to 1 and 0
            raise DataError(f"{json_path}: categories[{i}] is {str(c)[:100]}, expected a dict with an int 'id', a "
                            "string 'name' and 'isthing' 0 or 1")
    ids = [c["id"] for c in records]
    if len(set(ids)) != len(ids):
        raise DataError(f"{json_path}: category ids {shortlist(sorted({i for i in ids if ids.count(i) > 1}))} "
                        "repeated, expected unique ids")
    return [dict(c) for c in records]


def _images(json_path, records, image_dir):
    """{image_id: {"height", "width", "image_file_name", "image_path"}} or None without "images"."""
    if records is None:
        if image_dir is not None:
            raise DataError(f"{json_path}: no 'images' list, expected one (with file_name) to find the images in "
                            f"{image_dir}")
        return None
    if not isinstance(records, list):
        raise DataError(f"{json_path}: 'images' has type {type(records).__name__}, expected a list")
    images = {}
    for i, img in enumerate(records):
        check_image_record(json_path, i, img, images)
        images[img["id"]] = {"height": img["height"], "width": img["width"], "image_file_name": img["file_name"]}
        if image_dir is not None:
            path = os.path.join(image_dir, img["file_name"])
            if not os.path.isfile(path):
                raise DataError(f"{path}: image file not found (image id {img['id']!r} of {json_path}), expected "
                                f"file_name {img['file_name']!r} in {image_dir}")
            images[img["id"]]["image_path"] = path
    return images


def _segments(where, segments_info, category_ids):
    """Checks a segments_info list; returns {id: dict} with iscrowd filled in."""
    if not isinstance(segments_info, list):
        raise DataError(f"{where}: segments_info has type {type(segments_info).__name__}, expected a list")
    segments = {}
    for k, seg in enumerate(segments_info):
        if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
            raise DataError(f"{where}: segments_info[{k}] is {str(seg)[:80]!r}, expected a dict with 'id' and "
                            "'category_id'")
        sid = seg["id"]
        if not (is_int(sid) and 0 < sid <= _MAX_ID):
            raise DataError(f"{where}: segments_info[{k}] has id {sid!r}, expected an int in [1, {_MAX_ID}]")
        if sid in segments:
            raise DataError(f"{where}: segments_info[{k}] repeats segment id {sid}, expected unique ids")
        if category_ids is not None and (not isinstance(seg["category_id"], collections.abc.Hashable)
                                         or seg["category_id"] not in category_ids):
            raise DataError(f"{where}: segment {sid} has category_id {seg['category_id']!r}, expected one of the "
                            f"JSON's category ids ({shortlist(sorted(category_ids, key=str))})")
        crowd = seg.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise DataError(f"{where}: segment {sid} has iscrowd {crowd!r}, expected 0 or 1")
        segments[int(sid)] = {**seg, "iscrowd": int(crowd)}
    return segments


# ---------------------------------------------------------------------------------- writing


def write_coco_panoptic(examples, json_path, png_dir, categories=None):
    """Writes examples as a COCO panoptic JSON + PNG folder (readable by `read_coco_panoptic`).

    Each segment's "area" and "bbox" are recomputed from the id map (so they are always
    consistent); its other fields are written as given. Every file is written to a
    temporary name in its folder and renamed into place, and the JSON last, so a reader
    never sees a half-written file and a JSON whose PNGs are not all there.

    Args:
        examples: iterable of dicts {"image_id", "panoptic" int [H, W] ids in
            [0, 256^3 - 1], "segments" {id: {"category_id", "iscrowd", ...}} or a
            segments_info list, optional "file_name" (the PNG's name, default
            "<image_id>.png"), optional "image_file_name" (adds an "images" record)}.
        json_path: the JSON to write.
        png_dir: folder for the PNGs (created if absent).
        categories: list of category dicts to write as "categories", or None for none.

    Returns:
        The JSON written, as a dict.
    """
    json_path, png_dir = os.fspath(json_path), os.fspath(png_dir)
    os.makedirs(png_dir, exist_ok=True)
    images, annotations = [], []
    for i, example in enumerate(examples):
        where = f"write_coco_panoptic: examples[{i}]"
        if not isinstance(example, dict) or any(k not in example for k in ("image_id", "panoptic", "segments")):
            seen = sorted(example) if isinstance(example, dict) else type(example).__name__
            raise DataError(f"{where} has {seen}, expected a dict with image_id, panoptic and segments")
        panoptic = np.asarray(example["panoptic"])
        if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
            raise DataError(f"{where}: panoptic has shape {panoptic.shape} and dtype {panoptic.dtype}, expected an "
                            "int [H, W] id map")
        segments = example["segments"]
        if isinstance(segments, list):
            segments = {s.get("id") if isinstance(s, dict) else None: s for s in segments}
        segments = _segments(where, [{**dict(info), "id": sid} for sid, info in segments.items()], None)
        rgb = id_to_rgb(panoptic)
        check_panoptic(panoptic, segments, where=where)
        stats = segment_stats(panoptic)
        file_name = str(example.get("file_name", f"{example['image_id']}.png"))
        with atomic_write(os.path.join(png_dir, file_name), "wb") as f:
            Image.fromarray(rgb, "RGB").save(f, format="PNG")
        info = [{**seg, "id": sid, "area": stats[sid][0], "bbox": stats[sid][1]} for sid, seg in segments.items()]
        annotations.append({"image_id": example["image_id"], "file_name": file_name, "segments_info": info})
        if "image_file_name" in example:
            images.append({"id": example["image_id"], "file_name": example["image_file_name"],
                           "height": int(panoptic.shape[0]), "width": int(panoptic.shape[1])})
    data = {"images": images, "annotations": annotations} if images else {"annotations": annotations}
    if categories is not None:
        data["categories"] = [dict(c) for c in categories]
    text = json.dumps(data, default=_json_default)
    with atomic_write(json_path, "wb") as f:
        f.write(text.encode("utf-8"))
    return data


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")

