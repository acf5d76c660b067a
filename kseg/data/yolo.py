"""Instance segmentation in the Ultralytics YOLO layout (what YOLOv8 / YOLO11 users have on disk).

    data.yaml                   path: root (absolute, or relative to the yaml's folder; default
                                that folder), train / val: image folders (or .txt lists of
                                images, or lists of either) relative to the root, names: the
                                K class names as a list or as a dict {0: name, ..., K-1: name},
                                nc: K (optional)
    images/<split>/<stem>.jpg   the images
    labels/<split>/<stem>.txt   one instance per line: `class x1 y1 x2 y2 ...`, class 0..K-1,
                                a polygon of >= 3 points normalized to [0, 1] by the image's
                                width (x) and height (y); no file (or an empty one) = no instance

An image's label file is its path with the last `images` folder replaced by `labels` and the
extension by `.txt` (Ultralytics' rule). The examples are those of `kseg.data.instances`
(image, boxes, classes 1..K, masks, iscrowd all 0, image_id the image's index in its split),
read through the same `CocoInstances` sequence: a polygon becomes the same mask here as in a
COCO JSON (pycocotools rasterizes both), so a data set converted between the two layouts
trains the same way.
"""

import os
import warnings

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from kseg.data.errors import DataError
from kseg.data.instances import CocoInstances

IMAGE_EXTS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")
COORD_TOLERANCE = 1e-3  # normalized coordinates up to this far outside [0, 1] are clipped, not rejected
_SHOW = 5  # how many files an error message lists
_EXIF_ORIENTATION = 0x0112


def read_yolo_data(yaml_path, split="train"):
    """Reads one split of an Ultralytics YOLO segmentation data set.

    Everything except pixel values is checked here, for the whole split, before anything is
    returned: the yaml's keys; every image's header (readable, its size, no EXIF rotation); every label
    file and line (class id in 0..K-1, an even count of >= 6 finite coordinates, each in
    [0, 1] up to `COORD_TOLERANCE`, clipped to it). Label files of the split's `labels/`
    folders without an image are left out with one UserWarning naming them (Ultralytics'
    coco128 has two; Ultralytics ignores them silently). A polygon too thin to cover a pixel centre keeps its
    extent as the box and an all-zero mask; one with no area at all is skipped, and the
    count is reported with one UserWarning (as `read_coco_instances`).

    Args:
        yaml_path: the data set's data.yaml.
        split: "train" or "val".

    Returns:
        (examples, categories): `examples` a `CocoInstances` sequence, one example dict per
        image in sorted path order, decoded when indexed (image uint8 [H, W, 3], boxes
        float32 [N, 4] (y1, x1, y2, x2) px, classes int32 [N] in 1..K (YOLO class + 1), masks
        uint8 [N, H, W], iscrowd uint8 [N] zeros, image_id int); `categories` [K] dicts
        {"id": 1..K, "name", "coco_id": None}.

    Raises:
        DataError: naming the file (and line), the value seen and the value expected.

    Example:
        >>> examples, categories = read_yolo_data("coco128-seg/data.yaml")  # doctest: +SKIP
        >>> examples[0]["masks"].shape  # doctest: +SKIP
        (N, H, W)
    """
    config = read_yolo_yaml(yaml_path)
    if split not in SPLITS:
        raise DataError(f"read_yolo_data: split={split!r}, expected one of {SPLITS}")
    names = config["names"]
    records, skipped = [], []
    for index, image_path in enumerate(config[split]):
        height, width = _image_size(image_path)
        label_path = label_path_of(image_path)
        instances, dropped = _read_labels(label_path, len(names), height, width)
        skipped += [f"{label_path}:{line}" for line in dropped]
        records.append({"id": index, "path": image_path, "height": height, "width": width, "instances": instances})
    orphans = _orphan_labels(config[split])
    if orphans:  # Ultralytics' own coco128 ships two: warned, not fatal, so the data users have reads
        warnings.warn(f"{yaml_path}: {len(orphans)} label file(s) of split {split!r} have no image and are left out "
                      f"(expected an image of the same stem beside the split's other images): "
                      f"{', '.join(orphans[:_SHOW])}", stacklevel=2)
    if skipped:
        warnings.warn(f"{yaml_path}: skipped {len(skipped)} polygon(s) of zero area (no pixel and no extent), "
                      f"at {', '.join(skipped[:_SHOW])}", stacklevel=2)
    categories = [{"id": i + 1, "name": name, "coco_id": None} for i, name in enumerate(names)]
    return CocoInstances(records), categories


def read_yolo_yaml(yaml_path):
    """Reads and checks a data.yaml.

    Args:
        yaml_path: the file.

    Returns:
        {"root": the data set folder, "names": [K] class names, "train": [image paths],
        "val": [image paths]} (paths sorted; "val" equal to "train" when the yaml says so).

    Raises:
        DataError: unreadable yaml, a missing key, names not a list or a dict {0..K-1: str},
        an `nc` other than K, an image folder or list that is missing or holds no image.
    """
    try:
        import yaml
    except ImportError:  # an install requirement; named in case an environment lacks it
        raise DataError(f"{yaml_path}: reading a YOLO data.yaml needs PyYAML (pip install pyyaml)") from None
    yaml_path = os.fspath(yaml_path)
    try:
        with open(yaml_path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except UnicodeDecodeError as err:
        raise DataError(f"{yaml_path}: the data yaml is not UTF-8 text (byte {err.start}: "
                        f"{err.object[err.start:err.start + 1]!r}); expected a UTF-8 YAML file") from None
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"{yaml_path}: cannot read the data yaml: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict):
        raise DataError(f"{yaml_path}: holds a {type(data).__name__}, expected a mapping with keys train, val, names")
    missing = [key for key in ("train", "val", "names") if data.get(key) in (None, "", [])]
    if missing:
        raise DataError(f"{yaml_path}: key(s) {', '.join(missing)} missing or empty (keys seen: {sorted(data)}), "
                        "expected train and val (image folders) and names (the class names)")
    base = os.path.dirname(os.path.abspath(yaml_path))
    root = data.get("path") or "."
    if not isinstance(root, str):
        raise DataError(f"{yaml_path}: path {root!r}, expected a folder name (string)")
    root = os.path.normpath(os.path.join(base, root))
    names = _names(yaml_path, data["names"])
    if "nc" in data and data["nc"] != len(names):
        raise DataError(f"{yaml_path}: nc {data['nc']!r}, expected {len(names)} (the number of names)")
    config = {"root": root, "names": names}
    for split in SPLITS:
        config[split] = _split_images(yaml_path, split, data[split], root)
    return config


def label_path_of(image_path):
    """The label file of an image: the last `images` folder -> `labels`, the extension -> .txt."""
    parts = os.path.normpath(image_path).split(os.sep)
    if "images" in parts:
        last = len(parts) - 1 - parts[::-1].index("images")
        parts[last] = "labels"
    return os.path.splitext(os.sep.join(parts))[0] + ".txt"


def _names(yaml_path, names):
    """The class names of a yaml's `names`: a list, or a dict with keys exactly 0..K-1."""
    if isinstance(names, dict):
        keys = sorted(names, key=str)
        if sorted(k for k in names if isinstance(k, int) and not isinstance(k, bool)) != list(range(len(names))):
            raise DataError(f"{yaml_path}: names has keys {keys[:10]}, expected the class ids 0..{len(names) - 1}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{yaml_path}: names is a {type(names).__name__}, expected a list of class names or a "
                        "mapping {0: name, 1: name, ...}")
    bad = [n for n in names if not isinstance(n, (str, int, float)) or isinstance(n, bool) or str(n) == ""]
    if bad:
        raise DataError(f"{yaml_path}: names hold {bad[:_SHOW]}, expected non-empty strings")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{yaml_path}: names repeat {repeated[:_SHOW]}, expected distinct class names")
    return names


def _split_images(yaml_path, split, entry, root):
    """The sorted image paths of a yaml's `train` or `val`: folders, .txt lists, or a list of either."""
    entries = entry if isinstance(entry, list) else [entry]
    images = []
    for item in entries:
        if not isinstance(item, str):
            raise DataError(f"{yaml_path}: {split} holds {item!r}, expected a folder or .txt list (string)")
        path = os.path.normpath(os.path.join(root, item))
        if os.path.isdir(path):
            found = [os.path.join(path, n) for n in os.listdir(path)
                     if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTS]
        elif os.path.isfile(path) and path.endswith(".txt"):
            with open(path, encoding="utf-8") as f:
                found = [os.path.normpath(os.path.join(root, line.strip())) for line in f if line.strip()]
        else:
            raise DataError(f"{yaml_path}: {split} {item!r} is {path}, which is not an existing folder or .txt list; "
                            f"expected image folders relative to the data root {root}")
        if not found:
            raise DataError(f"{yaml_path}: {split} {item!r} ({path}) holds no image, expected files ending in "
                            f"{', '.join(IMAGE_EXTS)}")
        images += found
    images = sorted(set(images))
    return images


def _image_size(path):
    """(height, width) from the image's header; DataError when missing or unreadable."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found, expected an image listed by the data yaml")
    try:
        with Image.open(path) as opened:  # the header only
            width, height = opened.size
            orientation = opened.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as err:  # not an image, truncated header, ...
        raise DataError(f"{path}: cannot read the image: {type(err).__name__}: {err}") from None
    if orientation not in (None, 1):  # Ultralytics labels the rotated view; kseg reads the stored pixels
        raise DataError(f"{path}: EXIF orientation {orientation}, expected 1 (no rotation): YOLO polygons are drawn "
                        "on the image as displayed, kseg reads the pixels as stored; save the image upright first "
                        "(PIL.ImageOps.exif_transpose)")
    return int(height), int(width)


def _read_labels(label_path, num_classes, height, width):
    """(instances [(rle, class 1..K, 0, (y1, x1, y2, x2))], line numbers of zero-area polygons) of a label file."""
    if not os.path.exists(label_path):
        return [], []
    try:
        with open(label_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{label_path}: cannot read the label file: {type(err).__name__}: {err}") from None
    instances, skipped = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        class_id, xy = _parse_line(f"{label_path}:{number}", line, num_classes)
        points = xy.reshape(-1, 2) * (width, height)  # continuous pixel coordinates, as COCO polygons
        rle = mask_utils.frPyObjects([points.ravel().tolist()], height, width)[0]
        if mask_utils.area(rle) > 0:
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            box = (y, x, y + h, x + w)
        else:  # thinner than a pixel centre: the polygon's own extent, as COCO's bbox fallback
            (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
            if x2 <= x1 or y2 <= y1:
                skipped.append(number)
                continue
            box = (float(y1), float(x1), float(y2), float(x2))
        instances.append((rle, class_id + 1, 0, box))
    return instances, skipped


def _parse_line(where, line, num_classes):
    """`class x1 y1 ...` -> (class 0..K-1, float64 [2P] coordinates clipped to [0, 1])."""
    tokens = line.split()
    try:
        value = float(tokens[0])
    except ValueError:
        value = None
    if value is None or not value.is_integer() or not 0 <= value < num_classes:
        raise DataError(f"{where}: class {tokens[0]!r}, expected an integer class id in 0..{num_classes - 1} "
                        f"(the yaml names {num_classes} classes)")
    try:
        xy = np.array([float(t) for t in tokens[1:]], np.float64)
    except ValueError as err:
        raise DataError(f"{where}: {err}, expected numbers `class x1 y1 x2 y2 ...`") from None
    if len(xy) % 2:
        raise DataError(f"{where}: {len(xy)} coordinates after the class, expected an even count (x, y pairs)")
    if len(xy) < 6:
        hint = " (4 numbers is a YOLO detection box `cx cy w h`; segmentation needs polygons)" if len(xy) == 4 else ""
        raise DataError(f"{where}: {len(xy) // 2} point(s), expected a polygon of at least 3 points{hint}")
    bad = ~np.isfinite(xy) | (xy < -COORD_TOLERANCE) | (xy > 1 + COORD_TOLERANCE)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        side = "width" if k % 2 == 0 else "height"
        raise DataError(f"{where}: coordinate {k + 1} ({'xy'[k % 2]}) is {tokens[k + 1]}, expected a normalized "
                        f"value in [0, 1] (the pixel coordinate divided by the image {side})")
    return int(value), np.clip(xy, 0.0, 1.0)


def _orphan_labels(images):
    """The .txt files of the split's label folders whose image is not in the split."""
    expected = {label_path_of(p) for p in images}
    orphans = []
    for folder in sorted({os.path.dirname(p) for p in expected}):
        if os.path.isdir(folder):
            orphans += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                        if n.endswith(".txt") and os.path.join(folder, n) not in expected]
    return orphans
