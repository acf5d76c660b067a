"""Panoptic Quality cases for the comparison with COCO's rules (hotcoco, panopticapi).

Shared by tests/metrics/test_panoptic_quality.py and tests/reference/make_pq_fixtures.py; NumPy and
Pillow only (no kseg, no TensorFlow), so the fixture script runs in a reference environment.

A case is {"categories": [...], "images": [image, ...]}, an image a dict

    gt, pred            int64 [H, W] segment ids (0 = void / no prediction)
    gt_info, pred_info  COCO segments_info lists [{"id", "category_id", "iscrowd"}] (the
                        order matters: the last crowd region of a category is the one used)

`adversarial_cases()` are small hand-made images (crowd, void, tiny segments, IoU of
exactly 0.5, classes on one side only, several crowd regions of a class) and random block
images; `coco_cases(folder)` perturbs the real COCO panoptic sample (dilations, erosions,
shifts, merged, removed and added segments, crowd regions absorbed by a neighbour or split,
relabelled classes, and ground truths whose crowd regions are split in two).

Every result here is in one canonical form (`canonical`): {"all" | "things" | "stuff":
{"pq", "sq", "rq", "n"}, "per_class": {str(category id): {"tp", "fp", "fn", "iou", "pq",
"sq", "rq"}}}, with None for an average over no category and only the categories with
TP + FP + FN > 0 in "per_class".
"""

import hashlib
import json
import os

import numpy as np
from PIL import Image

GROUPS = ("all", "things", "stuff")
PERSON, CAR, BUS, SKY, ROAD = 1, 3, 6, 10, 11
CATEGORIES = [{"id": PERSON, "name": "person", "isthing": 1}, {"id": CAR, "name": "car", "isthing": 1},
              {"id": BUS, "name": "bus", "isthing": 1}, {"id": SKY, "name": "sky", "isthing": 0},
              {"id": ROAD, "name": "road", "isthing": 0}]
# Ground-truth ids of the hand-made cases: id -> (category, iscrowd).
GT = {1: (PERSON, 0), 2: (SKY, 0), 3: (CAR, 0), 4: (PERSON, 1), 8: (PERSON, 1), 9: (CAR, 1), 13: (PERSON, 0),
      14: (ROAD, 0)}
PRED = {5: PERSON, 6: PERSON, 7: SKY, 11: CAR, 12: ROAD, 15: PERSON}


def image(gt, pred, gt_order=None):
    """One hand-made image from nested lists; segment tables from GT / PRED for the ids present."""
    gt, pred = np.atleast_2d(np.array(gt, np.int64)), np.atleast_2d(np.array(pred, np.int64))
    order = gt_order or sorted(set(np.unique(gt).tolist()) - {0})
    gt_info = [{"id": i, "category_id": GT[i][0], "iscrowd": GT[i][1]} for i in order]
    pred_info = [{"id": i, "category_id": PRED[i], "iscrowd": 0} for i in sorted(set(np.unique(pred).tolist()) - {0})]
    return {"gt": gt, "gt_info": gt_info, "pred": pred, "pred_info": pred_info}


def adversarial_cases():
    """{name: case} of small images built to hit each rule (module docstring)."""
    sky = [2] * 6
    cases = {
        # Crowd pixels stay in the union: 4 / 8 is no match, and 4 / 8 on the crowd is no excuse.
        "crowd_not_removed_from_union": [image([4, 4, 4, 4, 1, 1, 1, 1, 2, 2], [5] * 8 + [7, 7])],
        "crowd_in_union_still_matches": [image([4, 4, 1, 1, 1, 1, 1, 1, 2, 2], [5] * 8 + [7, 7])],
        "mostly_on_own_crowd_is_ignored": [image([4, 4, 4, 4] + sky, [5, 5, 5, 7] + [7] * 6)],
        "on_crowd_of_other_class_is_fp": [image([4, 4, 4, 4] + sky, [11, 11, 11, 7] + [7] * 6)],
        "half_on_own_crowd_is_fp": [image([4, 4, 2, 2] + sky, [5, 5, 5, 5] + [7] * 6)],
        # Two person crowd regions: only the last one listed excuses a prediction.
        "two_crowds_on_first_listed": [image([4, 4, 4, 4, 8, 8] + sky, [5, 5, 5, 5, 7, 7] + [7] * 6, [4, 8, 2])],
        "two_crowds_on_last_listed": [image([4, 4, 4, 4, 8, 8] + sky, [5, 5, 5, 5, 7, 7] + [7] * 6, [8, 4, 2])],
        "two_crowds_across_both": [image([4, 4, 4, 8, 8, 8, 2, 2, 2, 2], [5] * 7 + [7, 7, 7], [4, 8, 2])],
        "two_crowds_across_both_reversed": [image([4, 4, 4, 8, 8, 8, 2, 2, 2, 2], [5] * 7 + [7, 7, 7], [8, 4, 2])],
        "void_plus_crowd_is_ignored": [image([0, 0, 4, 4] + [2] * 7, [5] * 7 + [7] * 4)],
        "void_plus_other_crowd_is_fp": [image([0, 0, 9, 9] + [2] * 7, [5] * 7 + [7] * 4)],
        "crowd_and_person_one_prediction": [image([4, 4, 4, 1, 1, 1, 1, 1, 1, 2], [5] * 9 + [7])],
        # Void.
        "void_spill_iou_one": [image([0, 0, 1, 1, 1, 1, 2, 2, 2, 2], [5] * 6 + [7] * 4)],
        "mostly_on_void_is_ignored": [image([0, 0, 0] + [2] * 7, [5, 5, 5, 5] + [7] * 6)],
        "half_on_void_is_fp": [image([0, 0, 0] + [2] * 7, [0, 5, 5, 5, 5] + [7] * 5)],
        "void_prediction_everywhere": [image([0, 0, 1, 1, 2, 2], [0] * 6)],
        "all_void_ground_truth": [image([0] * 6, [5, 5, 5, 7, 7, 0])],
        # IoU at the threshold.
        "iou_exactly_half": [image([1, 1, 1] + [2] * 7, [0, 5, 5, 5] + [7] * 6)],
        "iou_exactly_half_with_void": [image([0, 1, 1, 1] + sky, [5, 0, 5, 5, 5] + [7] * 5)],
        "iou_just_above_and_at_half": [image([[3] * 2001 + [0], [1] * 2000 + [2, 2]],
                                             [[11] * 1001 + [0] * 1001, [5] * 1000 + [0] * 1000 + [7, 7]])],
        "split_in_halves_and_thirds": [image([1] * 8 + [13] * 6 + [2, 2],
                                             [5] * 4 + [6] * 4 + [15] * 4 + [5] * 2 + [7, 7])],
        "two_people_merged": [image([1, 1, 1, 1, 13, 2, 2], [5, 5, 5, 5, 5, 7, 7])],
        # Tiny segments: 1 and 2 pixels, hits, misses and half overlaps.
        "tiny_segments": [image([[1, 0, 13, 0, 3, 3], [0, 2, 2, 2, 0, 9], [14, 14, 0, 4, 0, 0]],
                                [[5, 0, 0, 15, 11, 0], [0, 7, 7, 7, 11, 11], [12, 0, 0, 6, 0, 0]])],
        # Categories on one side only; a class seen only as crowd and an ignored prediction.
        "class_only_in_ground_truth": [image([3, 3, 3] + sky, [7, 7, 7] + [7] * 6)],
        "class_only_in_predictions": [image([2] * 9, [12, 12, 12] + [7] * 6)],
        "class_only_as_crowd": [image([4, 4, 4, 4] + sky, [5, 5, 5, 5] + [7] * 6)],
        "stuff_only": [image([2, 2, 2, 14, 14, 14], [7, 7, 12, 12, 12, 12])],
        "things_only": [image([1, 1, 3, 3, 3, 0], [5, 5, 5, 11, 11, 11])],
        "several_images": [image([4, 4, 1, 1, 1, 1, 2, 2], [5] * 6 + [7, 7]),
                           image([0, 3, 3, 3, 9, 9, 2, 2], [11, 11, 11, 11, 11, 11, 7, 7]),
                           image([1, 1, 13, 13, 14, 14, 14, 2], [5, 5, 5, 15, 12, 12, 7, 7])],
    }
    cases = {name: {"categories": CATEGORIES, "images": images} for name, images in cases.items()}
    for seed in range(8):
        rng = np.random.default_rng(seed)
        cases[f"random_blocks_{seed}"] = {"categories": CATEGORIES,
                                          "images": [random_blocks(rng) for _ in range(3)]}
    return cases


def random_blocks(rng, block=6, grid=(5, 7)):
    """A ground truth of blocks (void, crowd regions, several per class, every category) and a
    prediction that shifts it, drops pixels, merges neighbours and relabels some classes."""
    rows, cols = grid
    ids = np.arange(1, rows * cols + 1).reshape(rows, cols)
    gt = np.kron(ids, np.ones((block, block), np.int64))
    gt[np.kron(rng.random((rows, cols)) < 0.12, np.ones((block, block), bool))] = 0
    gt_info = []
    for i in rng.permutation(np.unique(gt[gt > 0])).tolist():
        category = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]
        crowd = int(category["isthing"] == 1 and rng.random() < 0.3)
        gt_info.append({"id": i, "category_id": category["id"], "iscrowd": crowd})
    pred = np.roll(gt, (int(rng.integers(-2, 3)), int(rng.integers(-4, 5))), axis=(0, 1))
    pred[rng.random(pred.shape) < 0.04] = 0
    category_of = {s["id"]: s["category_id"] for s in gt_info}
    for _ in range(3):  # a block grows into its right-hand neighbour
        r, c = int(rng.integers(0, rows)), int(rng.integers(0, cols - 1))
        if ids[r, c] in category_of:
            pred[pred == ids[r, c + 1]] = ids[r, c]
    pred_info = []
    for i in np.unique(pred[pred > 0]).tolist():
        category = category_of[i]
        if rng.random() < 0.15:
            category = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]["id"]
        pred_info.append({"id": i + 100, "category_id": category, "iscrowd": 0})
    pred = np.where(pred > 0, pred + 100, 0)
    return {"gt": gt, "gt_info": gt_info, "pred": pred, "pred_info": pred_info}


# ------------------------------------------------------------------------- real COCO data


def read_sample(folder):
    """(categories, [(image_id, file_name, gt int64 [H, W], gt_info)]) of the COCO panoptic sample."""
    with open(os.path.join(folder, "panoptic_examples.json")) as f:
        data = json.load(f)
    with open(os.path.join(folder, "panoptic_coco_categories.json")) as f:
        categories = [{"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in json.load(f)]
    examples = []
    for ann in data["annotations"]:
        rgb = np.asarray(Image.open(os.path.join(folder, "panoptic_examples", ann["file_name"])), np.int64)
        gt = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        info = [{"id": s["id"], "category_id": s["category_id"], "iscrowd": s["iscrowd"]} for s in ann["segments_info"]]
        examples.append((ann["image_id"], ann["file_name"], gt, info))
    return categories, examples


def coco_cases(folder):
    """{name: case}: predictions made from the sample's ground truth (module docstring)."""
    categories, examples = read_sample(folder)
    isthing = {c["id"]: c["isthing"] for c in categories}
    perturbations = {
        "identity": lambda gt, info, rng: segments(gt, info),
        "no_crowd_predictions": lambda gt, info, rng: segments(gt, info, crowd=False),
        "dilate_things_1": lambda gt, info, rng: grown(gt, info, isthing, 1),
        "dilate_things_3": lambda gt, info, rng: grown(gt, info, isthing, 3),
        "dilate_things_8": lambda gt, info, rng: grown(gt, info, isthing, 8),
        "erode_things_2": lambda gt, info, rng: grown(gt, info, isthing, -2),
        "shift_3_-5": lambda gt, info, rng: [(shift(m, 3, -5), c) for m, c in segments(gt, info)],
        "shift_12_9": lambda gt, info, rng: [(shift(m, 12, 9), c) for m, c in segments(gt, info)],
        "merge_same_class": lambda gt, info, rng: merged(gt, info),
        "remove_every_third": lambda gt, info, rng: segments(gt, info)[::3] + segments(gt, info)[2::3],
        "remove_into_neighbour": lambda gt, info, rng: absorbed(gt, info, [s["id"] for s in info[1::4]]),
        "add_segments": lambda gt, info, rng: segments(gt, info) + random_boxes(gt.shape, categories, rng, 6),
        "crowd_absorbed_by_neighbour": lambda gt, info, rng: absorbed(gt, info, crowd_ids(info)),
        "crowd_split_in_strips": lambda gt, info, rng: crowd_strips(gt, info),
        "relabel_some": lambda gt, info, rng: relabelled(gt, info, categories, rng),
    }
    for seed in range(4):
        perturbations[f"mixed_{seed}"] = lambda gt, info, rng: mixed(gt, info, categories, isthing, rng)
    cases = {}
    for name, make in perturbations.items():
        for split in ("", "split_crowds_", "split_crowds_reversed_"):
            if split and name not in ("identity", "dilate_things_3", "crowd_absorbed_by_neighbour", "mixed_0",
                                      "crowd_split_in_strips", "remove_into_neighbour"):
                continue
            rng = np.random.default_rng(sum(map(ord, name)))
            images = []
            for image_id, file_name, gt, info in examples:
                if split:
                    gt, info = split_crowds(gt, info, reverse="reversed" in split)
                pred, pred_info = paint(make(gt, info, rng), gt.shape)
                images.append({"image_id": image_id, "file_name": file_name, "gt": gt, "gt_info": info,
                               "pred": pred, "pred_info": pred_info})
            cases[split + name] = {"categories": categories, "images": images}
    return cases


def segments(gt, info, crowd=True):
    """[(mask, category)] of the ground truth's segments, in table order."""
    return [(gt == s["id"], s["category_id"]) for s in info if crowd or not s["iscrowd"]]


def crowd_ids(info):
    return [s["id"] for s in info if s["iscrowd"]]


def paint(pieces, shape):
    """Paints [(mask, category)] in order (later over earlier): (pred map, pred_info)."""
    pred, categories = np.zeros(shape, np.int64), []
    for k, (mask, category) in enumerate(pieces):
        pred[mask] = k + 1
        categories.append(category)
    present = np.unique(pred[pred > 0]).tolist()
    new_id = {old: 1000 + 37 * n for n, old in enumerate(present)}
    out = np.zeros(shape, np.int64)
    for old, new in new_id.items():
        out[pred == old] = new
    return out, [{"id": new, "category_id": categories[old - 1], "iscrowd": 0} for old, new in new_id.items()]


def dilate(mask, radius):
    """Binary dilation by a (2 radius + 1) square, rows then columns; negative radius erodes."""
    if radius < 0:
        return ~dilate(~mask, -radius)
    out = mask.copy()
    for axis in (0, 1):
        grown = out.copy()
        for step in range(1, radius + 1):
            grown |= shift_along(out, step, axis) | shift_along(out, -step, axis)
        out = grown
    return out


def shift_along(mask, step, axis):
    """The mask moved by `step` pixels along `axis`, padded with False."""
    out = np.zeros_like(mask)
    source = [slice(None)] * 2
    target = [slice(None)] * 2
    source[axis] = slice(0, mask.shape[axis] - step) if step > 0 else slice(-step, None)
    target[axis] = slice(step, None) if step > 0 else slice(0, mask.shape[axis] + step)
    out[tuple(target)] = mask[tuple(source)]
    return out


def shift(mask, dy, dx):
    return shift_along(shift_along(mask, dy, 0), dx, 1)


def grown(gt, info, isthing, radius):
    """Stuff as it is, then every non-crowd thing dilated (eroded when radius < 0) over it."""
    stuff = [(gt == s["id"], s["category_id"]) for s in info if not isthing[s["category_id"]]]
    things = [(dilate(gt == s["id"], radius), s["category_id"]) for s in info
              if isthing[s["category_id"]] and not s["iscrowd"]]
    return stuff + things


def merged(gt, info):
    """The non-crowd segments of each category merged into one prediction."""
    by_category = {}
    for s in info:
        if not s["iscrowd"]:
            by_category.setdefault(s["category_id"], np.zeros(gt.shape, bool))
            by_category[s["category_id"]] |= gt == s["id"]
    return [(mask, category) for category, mask in by_category.items()]


def neighbour(gt, mask, exclude):
    """The id with the most pixels in a 2-pixel ring around `mask`, void and `exclude` left out."""
    ring = gt[dilate(mask, 2) & ~mask]
    ring = ring[(ring > 0) & ~np.isin(ring, list(exclude))]
    if not ring.size:
        return None
    ids, counts = np.unique(ring, return_counts=True)
    return int(ids[np.argmax(counts)])


def absorbed(gt, info, ids):
    """Non-crowd segments, with the segments `ids` given to their neighbour (void when none)."""
    masks = {s["id"]: gt == s["id"] for s in info}
    category = {s["id"]: s["category_id"] for s in info}
    out = {s["id"]: masks[s["id"]].copy() for s in info if not s["iscrowd"] and s["id"] not in ids}
    for i in ids:
        target = neighbour(gt, masks[i], set(ids) | set(crowd_ids(info)))
        if target is not None:
            out[target] |= masks[i]
    return [(mask, category[i]) for i, mask in out.items()]


def crowd_strips(gt, info, strips=3):
    """Every crowd region predicted as `strips` horizontal strips of its class; the rest as is."""
    out = segments(gt, info, crowd=False)
    for s in info:
        if s["iscrowd"]:
            mask = gt == s["id"]
            rows = np.flatnonzero(mask.any(axis=1))
            for part in np.array_split(rows, strips):
                strip = np.zeros(gt.shape, bool)
                strip[part] = True
                out.append((mask & strip, s["category_id"]))
    return out


def random_boxes(shape, categories, rng, count):
    """`count` random rectangles of random categories."""
    out = []
    for _ in range(count):
        h, w = int(rng.integers(4, shape[0] // 3)), int(rng.integers(4, shape[1] // 3))
        y, x = int(rng.integers(0, shape[0] - h)), int(rng.integers(0, shape[1] - w))
        mask = np.zeros(shape, bool)
        mask[y:y + h, x:x + w] = True
        out.append((mask, categories[int(rng.integers(0, len(categories)))]["id"]))
    return out


def relabelled(gt, info, categories, rng, fraction=0.25):
    """Every segment, a `fraction` of them with a random category."""
    return [(mask, categories[int(rng.integers(0, len(categories)))]["id"] if rng.random() < fraction else c)
            for mask, c in segments(gt, info)]


def mixed(gt, info, categories, isthing, rng):
    """A random mixture: things grown or shrunk, a few removed or relabelled, boxes added, a shift."""
    pieces = grown(gt, info, isthing, int(rng.integers(-2, 5)))
    pieces = [p for p in pieces if rng.random() > 0.15]
    pieces = [(m, categories[int(rng.integers(0, len(categories)))]["id"] if rng.random() < 0.1 else c)
              for m, c in pieces]
    pieces += random_boxes(gt.shape, categories, rng, 3)
    dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
    return [(shift(m, dy, dx), c) for m, c in pieces]


def split_crowds(gt, info, reverse=False):
    """Every crowd region cut in two crowd regions of its class at its middle column; the new
    halves are listed after the rest (before it when `reverse`)."""
    gt, rest, halves = gt.copy(), [], []
    next_id = int(gt.max()) + 1
    for s in info:
        if not s["iscrowd"]:
            rest.append(s)
            continue
        mask = gt == s["id"]
        cols = np.flatnonzero(mask.any(axis=0))
        if len(cols) < 2:
            rest.append(s)
            continue
        right = mask & (np.arange(gt.shape[1]) >= cols[len(cols) // 2])[None, :]
        gt[right] = next_id
        halves += [s, {**s, "id": next_id}]
        next_id += 1
    return gt, (halves + rest if reverse else rest + halves)


# ---------------------------------------------------------------------------- comparison


def digest(case):
    """SHA-256 of a case's maps and tables (the fixtures record it to notice a changed case)."""
    h = hashlib.sha256()
    h.update(json.dumps(case["categories"], sort_keys=True).encode())
    for im in case["images"]:
        for key in ("gt", "pred"):
            h.update(np.ascontiguousarray(im[key], "<i8").tobytes() + str(im[key].shape).encode())
        h.update(json.dumps([im["gt_info"], im["pred_info"]], sort_keys=True).encode())
    return h.hexdigest()


def write_files(case, folder):
    """The case as COCO panoptic files: gt.json + gt/, pred.json + pred/ (gt areas stated, as COCO's)."""
    def annotations(key, info_key, folder_name, area):
        out = []
        os.makedirs(os.path.join(folder, folder_name), exist_ok=True)
        for k, im in enumerate(case["images"]):
            file_name = im.get("file_name", f"{k:06d}.png")
            ids = im[key].astype(np.uint32)
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
            Image.fromarray(rgb, "RGB").save(os.path.join(folder, folder_name, file_name), compress_level=1)
            info = [dict(s) for s in im[info_key]]
            if area:
                pixels = dict(zip(*(v.tolist() for v in np.unique(im[key], return_counts=True))))
                for s in info:
                    s["area"] = pixels.get(s["id"], 0)
            out.append({"image_id": im.get("image_id", k), "file_name": file_name, "segments_info": info})
        return out

    images = [{"id": im.get("image_id", k), "file_name": f"{k:06d}.jpg", "height": im["gt"].shape[0],
               "width": im["gt"].shape[1]} for k, im in enumerate(case["images"])]
    paths = {}
    for side, key, area in (("gt", "gt", True), ("pred", "pred", False)):
        data = {"annotations": annotations(key, f"{key}_info", side, area)}
        if side == "gt":
            data.update(images=images, categories=case["categories"])
        paths[side] = os.path.join(folder, f"{side}.json")
        with open(paths[side], "w") as f:
            json.dump(data, f)
    return paths["gt"], os.path.join(folder, "gt"), paths["pred"], os.path.join(folder, "pred")


def hotcoco_result(case, folder):
    """hotcoco's PQ of a case (written under `folder`), canonical form."""
    return hotcoco_files(*write_files(case, folder))


def hotcoco_files(gt_json, gt_dir, pred_json, pred_dir):
    """hotcoco's PQ of COCO panoptic files (`write_files`), canonical form."""
    from hotcoco import panoptic

    evaluation = panoptic.PanopticEval(gt_json, pred_json, gt_folder=gt_dir, pred_folder=pred_dir)
    evaluation.evaluate()
    raw = evaluation.results()
    out = {}
    for group, name in zip(GROUPS, ("All", "Things", "Stuff")):
        n = int(raw[name]["n"])
        out[group] = {k: (float(raw[name][k]) if n else None) for k in ("pq", "sq", "rq")}
        out[group]["n"] = n
    out["per_class"] = {str(c): {k: (int(v[k]) if k in ("tp", "fp", "fn") else float(v[k]))
                                 for k in ("tp", "fp", "fn", "iou", "pq", "sq", "rq")}
                        for c, v in raw["per_class"].items() if v["tp"] + v["fp"] + v["fn"] > 0}
    return out


def canonical(result, categories):
    """A kseg `PanopticQuality.result()` in canonical form (per class keyed by category id)."""
    out = {}
    for group in GROUPS:
        n = result[group]["n"]
        out[group] = {k: (float(result[group][k]) if n else None) for k in ("pq", "sq", "rq")}
        out[group]["n"] = n
    out["per_class"] = {}
    for c in categories:
        v = result["per_class"][c["name"]]
        if v["tp"] + v["fp"] + v["fn"] > 0:
            out["per_class"][str(c["id"])] = {k: v[k] for k in ("tp", "fp", "fn", "iou", "pq", "sq", "rq")}
    return out


def differences(got, want, tolerance=1e-9):
    """Human-readable differences between two canonical results (counts exact, values to `tolerance`)."""
    out = []

    def compare(where, a, b):
        if a is None or b is None:
            if a is not b:
                out.append(f"{where}: {a} != {b}")
        elif isinstance(b, int) and not isinstance(b, bool):
            if a != b:
                out.append(f"{where}: {a} != {b}")
        elif not abs(a - b) <= tolerance:
            out.append(f"{where}: {a!r} != {b!r} (|diff| {abs(a - b):.3g})")

    for group in GROUPS:
        for k in ("pq", "sq", "rq", "n"):
            compare(f"{group}.{k}", got[group][k], want[group][k])
    for c in sorted(set(got["per_class"]) | set(want["per_class"]), key=int):
        if c not in got["per_class"] or c not in want["per_class"]:
            out.append(f"category {c}: only in {'ours' if c in got['per_class'] else 'the reference'}")
            continue
        for k in ("tp", "fp", "fn", "iou", "pq", "sq", "rq"):
            compare(f"category {c}.{k}", got["per_class"][c][k], want["per_class"][c][k])
    return out
