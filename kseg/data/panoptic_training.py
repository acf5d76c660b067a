"""COCO panoptic examples as kseg's panoptic models train on them.

`training_categories` numbers a file's categories things first (1..K), then stuff (K+1..K+S);
`panoptic_training_example` turns a `kseg.data.panoptic.read_coco_panoptic` example into the
instance contract of `kseg.data.instances` plus a semantic map (shapes in its docstring).
"""

import numpy as np

from kseg.data.errors import DataError, shortlist
from kseg.data.instances import masks_to_boxes


def training_categories(categories):
    """kseg's panoptic category ids for a COCO panoptic "categories" list.

    Things come first, as 1..K in the order of their file ids, then stuff as K+1..K+S; each
    entry keeps its file id as "coco_id". Panoptic FPN predicts thing class k (1..K) and
    semantic channel s (1..S) for stuff category K + s, and `kseg.data.panoptic_shapes`
    uses the same layout.

    Args:
        categories: [C] dicts {"id", "name", "isthing"}.

    Returns:
        [C] dicts {"id", "name", "isthing" (0 or 1), "coco_id"}.

    Example:
        >>> [(c["id"], c["coco_id"]) for c in training_categories(
        ...     [{"id": 7, "name": "sky", "isthing": 0}, {"id": 3, "name": "car", "isthing": 1}])]
        [(1, 3), (2, 7)]
    """
    for i, category in enumerate(categories or []):
        missing = [k for k in ("id", "name", "isthing") if not isinstance(category, dict) or k not in category]
        if missing:
            raise DataError(f"categories[{i}] lacks {', '.join(missing)}, expected a dict with id, name and isthing")
    if not categories:
        raise DataError("categories is empty, expected the COCO panoptic categories (id, name, isthing)")
    ordered = sorted(categories, key=lambda c: (not c["isthing"], c["id"]))
    return [{"id": i, "name": c["name"], "isthing": int(bool(c["isthing"])), "coco_id": c["id"]}
            for i, c in enumerate(ordered, start=1)]


def panoptic_training_example(example, categories, ignore=255):
    """A COCO panoptic example in the form Panoptic FPN trains and is scored on.

    Args:
        example: a `read_coco_panoptic` example with "image".
        categories: `training_categories` of the file's categories.
        ignore: the semantic label of void and crowd pixels.

    Returns:
        a dict: image uint8 [H, W, 3]; the instance contract of `kseg.data.instances`
        (boxes float32 [N, 4] y1, x1, y2, x2 px; classes int32 [N] 1..K; masks uint8
        [N, H, W]; iscrowd [N]) for the thing segments; semantic int32 [H, W] (0 under a
        non-crowd thing, K + s -> s for stuff, `ignore` for void and crowd); panoptic (the
        file's id map) and segments {id: {"category_id" (kseg's), "iscrowd", "isthing"}};
        image_id.

    Raises:
        DataError: no image, or a segment whose category is not in `categories`.
    """
    where = f"panoptic example image_id {example.get('image_id')!r}"
    if "image" not in example:
        raise DataError(f"{where}: no 'image', expected the example of a read_coco_panoptic with image_dir")
    by_coco = {c["coco_id"]: c for c in categories}
    num_things = sum(1 for c in categories if c["isthing"])
    panoptic = np.asarray(example["panoptic"])
    semantic = np.full(panoptic.shape, ignore, np.int32)
    masks, classes, crowd, segments = [], [], [], {}
    for sid, info in sorted(example["segments"].items()):
        category = by_coco.get(info["category_id"])
        if category is None:
            raise DataError(f"{where}: segment {sid} has category_id {info['category_id']!r}, expected one of "
                            f"{shortlist(sorted(by_coco))}")
        region = panoptic == sid
        is_crowd = int(info.get("iscrowd", 0))
        segments[sid] = {"category_id": category["id"], "iscrowd": is_crowd, "isthing": bool(category["isthing"])}
        if category["isthing"]:
            masks.append(region)
            classes.append(category["id"])
            crowd.append(is_crowd)
            if not is_crowd:
                semantic[region] = 0
        elif not is_crowd:
            semantic[region] = category["id"] - num_things
    height, width = panoptic.shape
    masks = np.array(masks, np.uint8).reshape(-1, height, width)
    return {"image": np.asarray(example["image"]), "image_id": example["image_id"], "boxes": masks_to_boxes(masks),
            "classes": np.array(classes, np.int32), "masks": masks, "iscrowd": np.array(crowd, np.int32),
            "semantic": semantic, "panoptic": panoptic.astype(np.int32), "segments": segments}
