"""Panoptic Quality (PQ, SQ, RQ) by COCO panopticapi's rules, streamed over a data set.

Kirillov, He, Girshick, Rother and Dollar, "Panoptic Segmentation", CVPR 2019. The rules
below are those of COCO's evaluation code (cocodataset/panopticapi, `pq_compute`), rule for
rule; tests/metrics/test_panoptic_quality.py checks kseg against `hotcoco`'s PQ (verified against
panopticapi) to 1e-9 on real COCO panoptic ground truth and on adversarial cases.

Shape shorthand, per image:

    gt_map         int [H, W]  ground-truth segment ids, 0 = VOID (unlabeled pixels)
    gt_segments    {segment_id: {"category_id", "iscrowd" (0/1, default 0), ...}}
    pred_map       int [H, W]  predicted segment ids, 0 = no prediction
    pred_segments  {segment_id: {"category_id", ...}} ("iscrowd" of a prediction is ignored)
    categories     [K] dicts {"id", "name", "isthing" (0/1)}; ids need not be contiguous

A segment table may also be a list of COCO `segments_info` dicts (each with "id"); the
order of a table matters for one rule (the crowd region of a category). Areas are pixel
counts of the maps: an "area" field in a table is not read (maps may have been resized).

The rules, for one image, with |.| a pixel count:

    void       gt id 0 and nothing else (COCO's unlabeled pixels).
    crowd_c    the crowd region of category c: the ground-truth segment of category c with
               iscrowd 1; when an image has several, the last one in gt_segments' order
               (panopticapi keeps one per category: the others are neither matched nor FN
               and excuse no prediction).
    IoU        IoU(p, g) = |p & g| / (|p| + |g| - |p & g| - |p & void|): predicted pixels on
               void count neither for nor against p. Pixels on a crowd region are NOT taken
               out of the union, whatever its category.
    match      a predicted segment p and a non-crowd ground-truth segment g of the same
               category match when IoU(p, g) > 0.5, strictly (such a match is unique both
               ways: each side covers more than half of the other).
    TP         matched pairs; their IoUs are summed per category.
    FN         non-crowd ground-truth segments left unmatched; crowd segments are never FN.
    FP         predicted segments left unmatched, except those ignored (counted nowhere):
               (|p & void| + |p & crowd_c|) / |p| > 0.5, c being p's category (|p & crowd_c|
               = 0 when the image has no crowd region of that category).

Per category c: PQ = sum IoU / (TP + FP / 2 + FN / 2), SQ = sum IoU / TP (0 when TP = 0),
RQ = TP / (TP + FP / 2 + FN / 2), TP, FP, FN and sum IoU summed over all images first.
"all", "things" (isthing 1) and "stuff" (isthing 0) average the per-category values over
the categories with TP + FP + FN > 0 (present in ground truth or predictions and not only as
crowd regions or ignored predictions); "n" says how many.

Where panopticapi crashes or silently scores malformed input, kseg raises `DataError`
naming the image, the ids and what was expected, so kseg's PQ equals panopticapi's or is
an error, never a different number:

    - a nonzero id in a map that its table does not list (panopticapi: KeyError for a
      prediction; for ground truth it scores the pixels as an unknown segment, not void);
    - a listed id with no pixel in its map (panopticapi: KeyError for a prediction; a
      ground-truth one counts as an FN);
    - a repeated id in a segments_info list (panopticapi keeps the last entry), id 0 listed
      in a table (panopticapi scores void as a segment) or a non-int id;
    - a category_id absent from `categories` (panopticapi: KeyError for a prediction; a
      ground-truth one is scored into a category no average reads);
    - iscrowd other than 0 / 1 (panopticapi: KeyError when missing, kseg's default is 0;
      2 would be non-crowd there);
    - in `evaluate_panoptic_folders`: a ground-truth "area" that differs from its PNG pixel
      count (panopticapi would use the stated area in the union), an image without a
      prediction (panopticapi raises too) and a prediction of an image absent from the
      ground truth (panopticapi ignores it).

Two outputs differ in form, not in value: a group with no category to average has NaN
PQ, SQ and RQ and n = 0 (panopticapi: ZeroDivisionError), and a category with
TP + FP + FN = 0 has NaN in "per_class" (panopticapi: 0.0).
"""

import collections.abc

import numpy as np

from kseg.data.errors import DataError

_MATCH_IOU = 0.5  # a match needs IoU strictly above this
_IGNORE_FRACTION = 0.5  # an unmatched prediction more than this on void + its crowd region is not an FP
_SHOW = 5


class PanopticQuality:
    """Streaming Panoptic Quality: per-category TP, FP, FN and summed IoU, never images.

    Keras-independent (the matching is per-image bookkeeping over segment ids, not graph
    code): call it from any evaluation loop, one image at a time.

    Args:
        categories: [K] dicts {"id", "name", "isthing"}, e.g. the "categories" of a COCO
            panoptic JSON.

    Example:
        >>> categories = [{"id": 1, "name": "person", "isthing": 1},
        ...               {"id": 2, "name": "sky", "isthing": 0}]
        >>> gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
        >>> pred = np.array([[5, 5, 5, 7], [5, 5, 7, 7]])
        >>> metric = PanopticQuality(categories)
        >>> metric.update_state(gt, {1: {"category_id": 1}, 2: {"category_id": 2}},
        ...                     pred, {5: {"category_id": 1}, 7: {"category_id": 2}})
        >>> result = metric.result()
        >>> round(result["all"]["pq"], 4), result["things"]["sq"], result["all"]["n"]
        (0.775, 0.8, 2)
        >>> result["per_class"]["sky"]["tp"], round(result["per_class"]["sky"]["sq"], 4)
        (1, 0.75)
    """

    def __init__(self, categories):
        self.categories = _check_categories(categories, "PanopticQuality")
        self._index = {c["id"]: k for k, c in enumerate(self.categories)}
        self.reset_state()

    def reset_state(self):
        """Forgets everything accumulated."""
        k = len(self.categories)
        self.tp = np.zeros(k, np.int64)
        self.fp = np.zeros(k, np.int64)
        self.fn = np.zeros(k, np.int64)
        self.iou = np.zeros(k, np.float64)
        self.num_images = 0

    def update_state(self, gt_map, gt_segments, pred_map, pred_segments):
        """Adds one image (module docstring for the arguments and the rules)."""
        tp, fp, fn, iou = panoptic_counts(gt_map, gt_segments, pred_map, pred_segments, self.categories,
                                          _index=self._index, _where=f"image {self.num_images}")
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.iou += iou
        self.num_images += 1

    def result(self):
        """PQ, SQ and RQ so far.

        Returns:
            {"all" | "things" | "stuff": {"pq", "sq", "rq", "n"}, "per_class": {name: {"pq",
            "sq", "rq", "tp", "fp", "fn", "iou"}}} (floats in [0, 1]; "n" the number of
            categories averaged; "iou" the summed IoU of the TPs). Every category is listed
            in "per_class", those with TP + FP + FN = 0 with NaN PQ, SQ and RQ.
        """
        per_class = {}
        pq, sq, rq = (np.full(len(self.categories), np.nan) for _ in range(3))
        for k, category in enumerate(self.categories):
            tp, fp, fn, iou = int(self.tp[k]), int(self.fp[k]), int(self.fn[k]), float(self.iou[k])
            if tp + fp + fn:
                denominator = tp + 0.5 * fp + 0.5 * fn
                pq[k], sq[k], rq[k] = iou / denominator, (iou / tp if tp else 0.0), tp / denominator
            per_class[category["name"]] = {"pq": float(pq[k]), "sq": float(sq[k]), "rq": float(rq[k]),
                                           "tp": tp, "fp": fp, "fn": fn, "iou": iou}
        thing = np.array([bool(c["isthing"]) for c in self.categories], bool)
        out = {}
        for group, chosen in (("all", np.ones_like(thing)), ("things", thing), ("stuff", ~thing)):
            chosen = chosen & ~np.isnan(pq)
            n = int(chosen.sum())
            out[group] = {name: float(values[chosen].mean()) if n else float("nan")
                          for name, values in (("pq", pq), ("sq", sq), ("rq", rq))}
            out[group]["n"] = n
        out["per_class"] = per_class
        return out


def panoptic_quality(pairs, categories):
    """PQ, SQ and RQ of a whole set of images in one call.

    Args:
        pairs: iterable of (gt_map, gt_segments, pred_map, pred_segments) tuples, one per
            image (module docstring); consumed one at a time, so a generator keeps memory flat.
        categories: [K] dicts {"id", "name", "isthing"}.

    Returns:
        `PanopticQuality.result()`'s dict.
    """
    metric = PanopticQuality(categories)
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 4):
            raise DataError(f"panoptic_quality: pairs[{i}] is a {type(pair).__name__}"
                            f"{f' of {len(pair)} items' if isinstance(pair, (tuple, list)) else ''}, expected a "
                            "tuple (gt_map, gt_segments, pred_map, pred_segments)")
        metric.update_state(*pair)
    return metric.result()


def evaluate_panoptic_folders(gt_json, gt_dir, pred_json, pred_dir, categories=None):
    """PQ of a folder of predicted COCO panoptic PNGs against the ground truth's.

    Images are paired by image_id: every ground-truth image needs a prediction (a
    `DataError` names the missing ones); predictions of other images are an error too.
    One image pair is decoded at a time. A ground-truth segment's stated "area", where
    given, must equal its pixel count in the PNG (a `DataError` otherwise: panopticapi would
    use the stated area in the IoU's union); predictions' stated areas are not read.

    Args:
        gt_json, gt_dir: the ground truth's COCO panoptic JSON and PNG folder.
        pred_json, pred_dir: the predictions', same format (the JSON needs "annotations"
            only; predicted segments need "id" and "category_id").
        categories: [K] dicts {"id", "name", "isthing"}, or None to take the ground-truth
            JSON's "categories".

    Returns:
        `PanopticQuality.result()`'s dict.
    """
    from kseg.data.panoptic import read_coco_panoptic

    gt, gt_categories = read_coco_panoptic(gt_json, gt_dir)
    pred, _ = read_coco_panoptic(pred_json, pred_dir)
    if categories is None:
        if not gt_categories:
            raise DataError(f"{gt_json}: no 'categories' list, expected one or the categories argument")
        categories = gt_categories
    by_id = {image_id: i for i, image_id in enumerate(pred.image_ids)}
    missing = [image_id for image_id in gt.image_ids if image_id not in by_id]
    if missing:
        raise DataError(f"{pred_json}: no prediction for {len(missing)} ground-truth image(s), image_ids "
                        f"{_some(missing)}; expected one annotation per image of {gt_json}")
    extra = set(pred.image_ids) - set(gt.image_ids)
    if extra:
        raise DataError(f"{pred_json}: predictions for image_ids {_some(sorted(extra, key=str))} that are not in "
                        f"{gt_json}, expected only its image_ids")
    metric = PanopticQuality(categories)
    for i, image_id in enumerate(gt.image_ids):
        truth, guess = gt[i], pred[by_id[image_id]]
        _check_stated_areas(truth["panoptic"], truth["segments"], f"{gt.paths[i]} (image_id {image_id!r} of {gt_json})")
        metric.update_state(truth["panoptic"], truth["segments"], guess["panoptic"], guess["segments"])
    return metric.result()


def panoptic_counts(gt_map, gt_segments, pred_map, pred_segments, categories, *, _index=None, _where="image"):
    """Per-category TP, FP, FN and summed IoU of one image (the module docstring's rules).

    Args:
        gt_map, gt_segments, pred_map, pred_segments: one image (module docstring).
        categories: [K] dicts {"id", "name", "isthing"}.

    Returns:
        (tp, fp, fn, iou): int64 [K] x 3 and float64 [K], in the order of `categories`.

    Example (a crowd region stays in the union: IoU = 4 / 6, not 4 / 4):
        >>> people = [{"id": 1, "name": "person", "isthing": 1}]
        >>> gt, pred = np.array([[9, 9, 1, 1, 1, 1]]), np.array([[5, 5, 5, 5, 5, 5]])
        >>> tp, fp, fn, iou = panoptic_counts(
        ...     gt, {1: {"category_id": 1}, 9: {"category_id": 1, "iscrowd": 1}},
        ...     pred, {5: {"category_id": 1}}, people)
        >>> tp.tolist(), fp.tolist(), fn.tolist(), round(float(iou[0]), 4)
        ([1], [0], [0], 0.6667)
    """
    if _index is None:
        categories = _check_categories(categories, "panoptic_counts")
        _index = {c["id"]: k for k, c in enumerate(categories)}
    gt_map = _id_map(gt_map, f"{_where}: gt_map")
    pred_map = _id_map(pred_map, f"{_where}: pred_map")
    if gt_map.shape != pred_map.shape:
        raise DataError(f"{_where}: pred_map is {pred_map.shape[0]}x{pred_map.shape[1]} (HxW), expected the "
                        f"gt_map's {gt_map.shape[0]}x{gt_map.shape[1]}")
    gt_table = _segment_table(gt_segments, _index, f"{_where}: gt_segments", crowd=True)
    pred_table = _segment_table(pred_segments, _index, f"{_where}: pred_segments", crowd=False)

    # Every (gt id, pred id) pair that shares pixels, with its pixel count.
    scale = int(pred_map.max(initial=0)) + 1
    pairs, counts = np.unique(gt_map * scale + pred_map, return_counts=True)
    gt_ids, pred_ids = (pairs // scale).tolist(), (pairs % scale).tolist()
    overlap = dict(zip(zip(gt_ids, pred_ids), counts.tolist()))
    gt_area = _sums(gt_ids, counts)
    pred_area = _sums(pred_ids, counts)
    gt_area.pop(0, None)
    pred_area.pop(0, None)
    _check_ids(gt_area, gt_table, f"{_where}: gt_map", "gt_segments")
    _check_ids(pred_area, pred_table, f"{_where}: pred_map", "pred_segments")

    k = len(_index)
    tp, fp, fn, iou_sum = np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k)
    matched_gt, matched_pred = set(), set()
    for (g, p), intersection in overlap.items():
        if g == 0 or p == 0 or gt_table[g][1] or gt_table[g][0] != pred_table[p][0]:
            continue
        union = pred_area[p] + gt_area[g] - intersection - overlap.get((0, p), 0)
        iou = intersection / union
        if iou > _MATCH_IOU:  # unique both ways
            matched_gt.add(g)
            matched_pred.add(p)
            tp[gt_table[g][0]] += 1
            iou_sum[gt_table[g][0]] += iou
    crowd_region = {}  # category index -> gt id of its crowd region, the last one listed
    for g, (cls, crowd) in gt_table.items():
        if crowd:
            crowd_region[cls] = g
        elif g not in matched_gt:
            fn[cls] += 1
    for p, (cls, _) in pred_table.items():
        if p in matched_pred:
            continue
        excused = overlap.get((0, p), 0)  # on void, or on the crowd region of p's category
        if cls in crowd_region:
            excused += overlap.get((crowd_region[cls], p), 0)
        if excused / pred_area[p] <= _IGNORE_FRACTION:
            fp[cls] += 1
    return tp, fp, fn, iou_sum


# ---------------------------------------------------------------------------------- helpers


def _check_categories(categories, where):
    """Checks [K] dicts {"id", "name", "isthing"}; returns copies."""
    ok = isinstance(categories, (list, tuple)) and len(categories) > 0 and all(
        isinstance(c, dict) and "id" in c and isinstance(c.get("name"), str) and c.get("isthing") in (0, 1)
        for c in categories)
    if not ok:
        raise DataError(f"{where}: categories {str(categories)[:100]}, expected a non-empty list of dicts "
                        "{'id', 'name', 'isthing': 0 or 1} (a COCO panoptic JSON's 'categories')")
    ids = [c["id"] for c in categories]
    names = [c["name"] for c in categories]
    for what, values in (("ids", ids), ("names", names)):
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise DataError(f"{where}: category {what} {_some(repeated)} repeated, expected unique {what}")
    return [dict(c) for c in categories]


def _id_map(array, where):
    """An int64 [H, W] array of non-negative ids (NumPy, TF tensor, nested lists)."""
    array = np.asarray(array)
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise DataError(f"{where} has shape {array.shape} and dtype {array.dtype}, expected an int [H, W] map of "
                        "segment ids")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise DataError(f"{where} holds id {int(array.min())}, expected ids >= 0 (0 = void)")
    return array


def _segment_table(segments, index, where, crowd):
    """{id: {...}} or a list of segments_info -> {int id: (category index, is crowd)}."""
    if isinstance(segments, collections.abc.Mapping):
        items = list(segments.items())
    elif isinstance(segments, (list, tuple)):
        if not all(isinstance(s, collections.abc.Mapping) and "id" in s for s in segments):
            raise DataError(f"{where}: a list whose items are not all dicts with an 'id', expected COCO "
                            "segments_info dicts or a dict {segment_id: {'category_id', ...}}")
        items = [(s["id"], s) for s in segments]
    else:
        raise DataError(f"{where} is a {type(segments).__name__}, expected a dict {{segment_id: {{'category_id', "
                        "...}}}} or a list of COCO segments_info dicts")
    table = {}
    for key, info in items:
        if not (_is_int(key) and key > 0):
            raise DataError(f"{where}: segment id {key!r}, expected an int > 0 (0 is void)")
        if int(key) in table:
            raise DataError(f"{where}: segment id {key} repeated, expected unique ids")
        if not isinstance(info, collections.abc.Mapping) or "category_id" not in info:
            raise DataError(f"{where}: segment {key} is {str(info)[:80]!r}, expected a dict with 'category_id'")
        category = info["category_id"]
        if not isinstance(category, collections.abc.Hashable) or category not in index:
            raise DataError(f"{where}: segment {key} has category_id {category!r}, expected one of the categories' "
                            f"ids ({_some(index)})")
        is_crowd = info.get("iscrowd", 0)
        if is_crowd not in (0, 1):
            raise DataError(f"{where}: segment {key} has iscrowd {is_crowd!r}, expected 0 or 1")
        table[int(key)] = (index[category], bool(is_crowd) and crowd)
    return table


def _check_ids(areas, table, map_where, table_name):
    """Map ids and table ids must be the same sets."""
    unlisted = sorted(set(areas) - set(table))
    if unlisted:
        raise DataError(f"{map_where} holds segment id(s) {_some(unlisted)} absent from {table_name}, expected "
                        f"every nonzero id to be listed there (ids listed: {_some(sorted(table))})")
    empty = sorted(set(table) - set(areas))
    if empty:
        raise DataError(f"{map_where}: {table_name} lists segment id(s) {_some(empty)} with no pixel in the map, "
                        "expected every listed segment to have pixels (drop empty segments)")


def _check_stated_areas(id_map, segments, where):
    """Ground-truth "area" fields, where present, must be the map's pixel counts."""
    ids, counts = np.unique(id_map, return_counts=True)
    count = dict(zip(ids.tolist(), counts.tolist()))
    wrong = [(sid, info["area"], count.get(sid, 0)) for sid, info in segments.items()
             if "area" in info and not (_is_int(info["area"]) and info["area"] == count.get(sid, 0))]
    if wrong:
        raise DataError(f"{where}: segments_info states area(s) {_some(f'{s}: {a!r}' for s, a, _ in wrong)} but the "
                        f"PNG has {_some(f'{s}: {n}' for s, _, n in wrong)} pixels; expected each stated area to be "
                        "its segment's pixel count (COCO's panopticapi puts the stated area in the IoU)")


def _sums(ids, counts):
    """{id: total count} over repeated ids."""
    out = {}
    for i, c in zip(ids, counts.tolist()):
        out[i] = out.get(i, 0) + c
    return out


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _some(values):
    values = list(values)
    return ", ".join(str(v) for v in values[:_SHOW]) + (" ..." if len(values) > _SHOW else "")
