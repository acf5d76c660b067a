"""COCO panoptic I/O: id <-> colour, write/read round trips, errors, and the real sample."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from kseg.data import (
    DataError,
    id_to_rgb,
    read_coco_panoptic,
    rgb_to_id,
    segment_stats,
    write_coco_panoptic,
)
from kseg.metrics import evaluate_panoptic_folders, panoptic_quality
from tests.testing import SHARED_DATA, requires_shared_data

SAMPLE = SHARED_DATA / "coco-panoptic-sample"
CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 7, "name": "sky", "isthing": 0}]


def synthetic_example(image_id=3):
    panoptic = np.zeros((6, 8), np.int32)
    panoptic[:3] = 300000  # sky, an id that needs all three bytes
    panoptic[3:, 1:4] = 26
    panoptic[4:, 5:] = 65536 + 2
    segments = {300000: {"category_id": 7, "iscrowd": 0},
                26: {"category_id": 1, "iscrowd": 0},
                65538: {"category_id": 1, "iscrowd": 1}}
    return {"image_id": image_id, "file_name": f"{image_id:06d}.png", "image_file_name": f"{image_id:06d}.jpg",
            "panoptic": panoptic, "segments": segments}


def test_rgb_id_round_trip():
    ids = np.random.default_rng(0).integers(0, 256**3, size=(5, 7))
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3)
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)
    assert id_to_rgb(np.array(1 + 2 * 256 + 3 * 65536)).tolist() == [1, 2, 3]
    with pytest.raises(DataError, match=r"expected ids in \[0, 16777215\]"):
        id_to_rgb(np.array([256**3]))


def test_segment_stats_area_and_coco_bbox():
    stats = segment_stats(synthetic_example()["panoptic"])
    assert stats == {300000: (24, [0, 0, 8, 3]), 26: (9, [1, 3, 3, 3]), 65538: (6, [5, 4, 3, 2])}


def test_write_read_round_trip(tmp_path):
    examples = [synthetic_example(3), synthetic_example(4)]
    written = write_coco_panoptic(examples, tmp_path / "panoptic.json", tmp_path / "png", categories=CATEGORIES)
    assert sorted(os.listdir(tmp_path / "png")) == ["000003.png", "000004.png"]  # no temporary file left
    assert sorted(os.listdir(tmp_path)) == ["panoptic.json", "png"]
    assert written["annotations"][0]["segments_info"][0] == {"category_id": 7, "iscrowd": 0, "id": 300000,
                                                             "area": 24, "bbox": [0, 0, 8, 3]}
    read, categories = read_coco_panoptic(tmp_path / "panoptic.json", tmp_path / "png")
    assert categories == CATEGORIES and len(read) == 2 and read.image_ids == [3, 4]
    for want, got in zip(examples, read):
        assert got["panoptic"].dtype == np.int32
        np.testing.assert_array_equal(got["panoptic"], want["panoptic"])
        assert {i: {"category_id": s["category_id"], "iscrowd": s["iscrowd"]} for i, s in got["segments"].items()} \
            == want["segments"]
        assert got["image_file_name"] == want["image_file_name"] and "image" not in got
    assert read[0:1][0]["image_id"] == 3


def test_read_with_images_and_size_mismatch(tmp_path):
    example = synthetic_example()
    write_coco_panoptic([example], tmp_path / "p.json", tmp_path / "png")
    os.makedirs(tmp_path / "images")
    Image.new("RGB", (8, 6), (9, 9, 9)).save(tmp_path / "images" / "000003.jpg")
    read, categories = read_coco_panoptic(tmp_path / "p.json", tmp_path / "png", tmp_path / "images")
    assert categories is None
    assert read[0]["image"].shape == (6, 8, 3) and read[0]["image"].dtype == np.uint8
    Image.new("RGB", (8, 5)).save(tmp_path / "images" / "000003.jpg")
    read, _ = read_coco_panoptic(tmp_path / "p.json", tmp_path / "png", tmp_path / "images")
    with pytest.raises(DataError, match=r"000003.jpg: image is 5x8 \(HxW\), expected 6x8"):
        read[0]


def write_json(tmp_path, data):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


def test_errors_name_file_value_and_expectation(tmp_path):
    example = synthetic_example()
    data = write_coco_panoptic([example], tmp_path / "p.json", tmp_path / "png", categories=CATEGORIES)
    png = tmp_path / "png"

    bad = write_json(tmp_path, {"images": []})
    with pytest.raises(DataError, match=r"bad.json: no 'annotations' list \(keys seen: \['images'\]\)"):
        read_coco_panoptic(bad, png)

    no_segments = json.loads(json.dumps(data))
    del no_segments["annotations"][0]["segments_info"]
    with pytest.raises(DataError, match=r"bad.json: annotations\[0\] lacks field\(s\) segments_info"):
        read_coco_panoptic(write_json(tmp_path, no_segments), png)

    unknown = json.loads(json.dumps(data))
    unknown["annotations"][0]["segments_info"][0]["category_id"] = 99
    with pytest.raises(DataError, match="segment 300000 has category_id 99, expected one of"):
        read_coco_panoptic(write_json(tmp_path, unknown), png)

    unlisted = json.loads(json.dumps(data))
    del unlisted["annotations"][0]["segments_info"][1]  # id 26 stays in the PNG
    read, _ = read_coco_panoptic(write_json(tmp_path, unlisted), png)
    with pytest.raises(DataError, match=r"000003.png \(image_id 3\): PNG holds segment id\(s\) 26 absent"):
        read[0]

    extra = json.loads(json.dumps(data))
    extra["annotations"][0]["segments_info"].append({"id": 77, "category_id": 1, "iscrowd": 0})
    read, _ = read_coco_panoptic(write_json(tmp_path, extra), png)
    with pytest.raises(DataError, match=r"segments_info lists id\(s\) 77 with no pixel in the PNG"):
        read[0]

    wrong_size = json.loads(json.dumps(data))
    wrong_size["images"][0]["height"] = 7
    read, _ = read_coco_panoptic(write_json(tmp_path, wrong_size), png)
    with pytest.raises(DataError, match=r"PNG is 6x8 \(HxW\), expected 7x8"):
        read[0]

    missing_png = json.loads(json.dumps(data))
    missing_png["annotations"][0]["file_name"] = "nope.png"
    with pytest.raises(DataError, match="nope.png: panoptic PNG not found"):
        read_coco_panoptic(write_json(tmp_path, missing_png), png)

    with pytest.raises(DataError, match="no 'images' list"):
        read_coco_panoptic(write_json(tmp_path, {"annotations": []}), png, tmp_path)

    with pytest.raises(DataError, match=r"examples\[0\]: PNG holds segment id\(s\) 26 absent"):
        write_coco_panoptic([{**example, "segments": {300000: {"category_id": 7}, 65538: {"category_id": 1}}}],
                            tmp_path / "w.json", tmp_path / "w")
    assert not (tmp_path / "w.json").exists()


def test_evaluate_folders_of_a_prediction(tmp_path):
    truth = synthetic_example()
    guess = dict(truth, panoptic=truth["panoptic"].copy(), segments=dict(truth["segments"]))
    guess["panoptic"][2, 1:4] = 26  # person grows into the sky: IoU 9 / 12, sky's 21 / 24
    write_coco_panoptic([truth], tmp_path / "gt.json", tmp_path / "gt", categories=CATEGORIES)
    write_coco_panoptic([guess], tmp_path / "pred.json", tmp_path / "pred")
    result = evaluate_panoptic_folders(tmp_path / "gt.json", tmp_path / "gt", tmp_path / "pred.json",
                                       tmp_path / "pred")
    assert result["per_class"]["person"]["sq"] == pytest.approx(0.75)
    assert result["all"]["pq"] == pytest.approx((0.75 + 0.875) / 2) and result["all"]["n"] == 2
    write_coco_panoptic([], tmp_path / "none.json", tmp_path / "none")
    with pytest.raises(DataError, match=r"none.json: no prediction for 1 ground-truth image\(s\), image_ids 3"):
        evaluate_panoptic_folders(tmp_path / "gt.json", tmp_path / "gt", tmp_path / "none.json", tmp_path / "none")


@pytest.mark.data
@requires_shared_data
def test_real_sample_areas_and_images():
    examples, categories = read_coco_panoptic(SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples",
                                              SAMPLE / "input_images")
    assert len(examples) == 2 and len(categories) == 133
    for example in examples:
        assert example["image"].shape[:2] == example["panoptic"].shape
        stats = segment_stats(example["panoptic"])
        assert {i: s["area"] for i, s in example["segments"].items()} == {i: a for i, (a, _) in stats.items()}
        assert {i: s["bbox"] for i, s in example["segments"].items()} == {i: b for i, (_, b) in stats.items()}


@pytest.mark.data
@requires_shared_data
def test_real_sample_against_itself_is_perfect():
    with open(SAMPLE / "panoptic_coco_categories.json") as f:
        categories = json.load(f)
    result = evaluate_panoptic_folders(SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples",
                                       SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples", categories)
    for group in ("all", "things", "stuff"):
        assert (result[group]["pq"], result[group]["sq"], result[group]["rq"]) == (1.0, 1.0, 1.0)
        assert result[group]["n"] > 0
    assert result["all"]["n"] == result["things"]["n"] + result["stuff"]["n"]
    # Relabelled prediction ids (a model never reproduces the ground truth's ids) change nothing.
    examples, _ = read_coco_panoptic(SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples")
    pairs = []
    for example in examples:
        gt, ids = example["panoptic"], sorted(example["segments"])
        pred = np.where(gt > 0, np.searchsorted(ids, gt) + 1, 0)
        pred_segments = {k + 1: {"category_id": example["segments"][i]["category_id"]} for k, i in enumerate(ids)}
        pairs.append((gt, example["segments"], pred, pred_segments))
    assert panoptic_quality(pairs, categories)["all"] == result["all"]


@pytest.mark.data
@requires_shared_data
def test_real_sample_write_read_round_trip(tmp_path):
    examples, categories = read_coco_panoptic(SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples")
    examples = list(examples)
    write_coco_panoptic(examples, tmp_path / "copy.json", tmp_path / "png", categories=categories)
    copies, copied_categories = read_coco_panoptic(tmp_path / "copy.json", tmp_path / "png")
    assert copied_categories == categories
    for example, copy in zip(examples, copies):
        assert copy["image_id"] == example["image_id"] and copy["file_name"] == example["file_name"]
        np.testing.assert_array_equal(copy["panoptic"], example["panoptic"])
        assert copy["segments"] == example["segments"]
    original = json.loads((SAMPLE / "panoptic_examples.json").read_text())
    copied = json.loads((tmp_path / "copy.json").read_text())
    assert [a["segments_info"] for a in copied["annotations"]] == [a["segments_info"] for a in original["annotations"]]


def test_docstring_examples_run():
    import doctest

    from kseg.data import panoptic, panoptic_training

    for module in (panoptic, panoptic_training):
        failed, attempted = doctest.testmod(module)
        assert attempted > 0 and failed == 0, module.__name__
