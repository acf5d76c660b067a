"""Tests of kseg.metrics.coco: COCO mask/box AP through pycocotools' COCOeval."""

import json
import math

import numpy as np
import pytest

from kseg.data import DataError
from kseg.data.instance_pipeline import instance_dataset
from kseg.data.instances import masks_to_boxes, read_coco_instances
from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples
from kseg.metrics.coco import InstanceAP, coco_detections, coco_ground_truth, evaluate_instances
from tests.testing import SHARED_DATA, requires_shared_data

COCO_SAMPLE = SHARED_DATA / "coco-panoptic-sample"
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _perfect(examples, with_ids=True):
    """Ground truth fed back as predictions with score 1.0 (crowd regions included)."""
    predictions = []
    for e in examples:
        prediction = {"boxes": e["boxes"], "scores": np.ones(len(e["classes"])), "classes": e["classes"],
                      "masks": e["masks"]}
        if with_ids:
            prediction["image_id"] = e["image_id"]
        predictions.append(prediction)
    return predictions


def _assert_all_one(result):
    for iou_type in ("segm", "bbox"):
        for name in STATS:
            value = result[iou_type][name]
            assert math.isnan(value) or abs(value - 1.0) < 1e-6, (iou_type, name, value)
        assert abs(result[iou_type]["AP"] - 1.0) < 1e-6


@pytest.fixture(scope="module")
def shapes():
    return shapes_dataset_examples(12, seed=3)


@requires_shared_data
def test_ground_truth_as_predictions_is_perfect_on_the_coco_sample():
    examples, categories = read_coco_instances(COCO_SAMPLE / "panoptic_coco_detection_format.json",
                                               COCO_SAMPLE / "input_images", include_crowd=True)
    examples = list(examples)
    result = evaluate_instances(examples, _perfect(examples), categories)
    _assert_all_one(result)
    assert all(not math.isnan(result["segm"][name]) for name in STATS)  # small, medium and large objects


def test_ground_truth_as_predictions_is_perfect_on_shapes(shapes):
    result = evaluate_instances(shapes, _perfect(shapes), SHAPE_CATEGORIES, per_class=True)
    _assert_all_one(result)
    assert {k for k in result["segm"] if k.startswith("AP/")} == {"AP/circle", "AP/square", "AP/triangle"}


def test_shifted_predictions_lower_ap(shapes):
    shifted = _perfect(shapes)
    for p in shifted:
        p["masks"] = np.roll(p["masks"], 3, axis=2)
        p["boxes"] = p["boxes"] + np.array([0, 3, 0, 3], np.float32)
    result = evaluate_instances(shapes, shifted, SHAPE_CATEGORIES)
    for iou_type in ("segm", "bbox"):
        assert result[iou_type]["AP"] < 0.9
        assert result[iou_type]["AP75"] < result[iou_type]["AP50"]


def test_wrong_class_scores_zero_for_that_class(shapes):
    predictions = _perfect(shapes)
    for p in predictions:
        p["classes"] = np.where(p["classes"] == 1, 2, p["classes"])  # every circle called a square
    result = evaluate_instances(shapes, predictions, SHAPE_CATEGORIES, per_class=True)
    for iou_type in ("segm", "bbox"):
        assert result[iou_type]["AP/circle"] == 0.0
        assert abs(result[iou_type]["AP/triangle"] - 1.0) < 1e-6
        assert result[iou_type]["AP/square"] < 1.0  # the extra squares are false positives


def test_empty_predictions_give_zero(shapes):
    nothing = [{"image_id": e["image_id"], "boxes": np.zeros((0, 4)), "scores": np.zeros(0),
                "classes": np.zeros(0, np.int32), "masks": np.zeros((0, 128, 128), np.uint8)} for e in shapes]
    result = evaluate_instances(shapes, nothing, SHAPE_CATEGORIES)
    assert all(result[t][name] == 0.0 for t in ("segm", "bbox") for name in ("AP", "AP50", "AP75"))
    half = evaluate_instances(shapes, _perfect(shapes)[:6], SHAPE_CATEGORIES)  # images without predictions
    assert 0.0 < half["segm"]["AP"] < 1.0


def test_hand_made_two_objects_ap50_and_ap75():
    masks = np.zeros((2, 40, 40), np.uint8)
    masks[0, 2:12, 2:12] = 1
    masks[1, 20:30, 20:30] = 1
    example = {"image": np.zeros((40, 40, 3), np.uint8), "boxes": masks_to_boxes(masks),
               "classes": np.array([1, 1], np.int32), "masks": masks, "image_id": 1}
    predicted = masks.copy()
    predicted[1] = 0
    predicted[1, 20:30, 22:32] = 1  # IoU 80 / 120 = 0.667: a match at IoU 0.50..0.65, not at 0.70..0.95
    prediction = {"image_id": 1, "boxes": masks_to_boxes(predicted), "scores": np.array([0.9, 0.8]),
                  "classes": np.array([1, 1]), "masks": predicted}
    categories = [{"id": 1, "name": "box", "coco_id": None}]
    result = evaluate_instances([example], [prediction], categories)
    # Strict thresholds: the 0.9 detection is a hit (recall 0.5, precision 1), the 0.8 one a miss, so the
    # 101-point interpolated precision is 1 at recalls 0.00..0.50 (51 points) and 0 above.
    half = 51 / 101
    for iou_type in ("segm", "bbox"):
        stats = result[iou_type]
        assert stats["AP50"] == pytest.approx(1.0, abs=1e-9)
        assert stats["AP75"] == pytest.approx(half, abs=1e-9)
        assert stats["AP"] == pytest.approx((4 * 1.0 + 6 * half) / 10, abs=1e-9)  # 0.50, 0.55, 0.60, 0.65 hit
        assert stats["APs"] == pytest.approx(stats["AP"], abs=1e-9)  # 100-pixel objects are small
        assert math.isnan(stats["APm"]) and math.isnan(stats["APl"])  # no medium/large ground truth: NaN


def test_instance_ap_streams_batches_like_one_call(shapes):
    metric = InstanceAP(SHAPE_CATEGORIES, per_class=True)
    predictions = _perfect(shapes)
    for p in predictions[::2]:
        p["masks"] = np.roll(p["masks"], 2, axis=1)
    for start in range(0, 12, 5):
        metric.update_state(shapes[start:start + 5], predictions[start:start + 5])
    streamed = metric.result()
    whole = evaluate_instances(shapes, predictions, SHAPE_CATEGORIES, per_class=True)
    assert streamed.keys() == whole.keys() and 0.5 < whole["segm"]["AP"] < 0.9
    for iou_type, stats in whole.items():
        assert streamed[iou_type].keys() == stats.keys()
        for name, value in stats.items():
            assert streamed[iou_type][name] == value or (math.isnan(value) and math.isnan(streamed[iou_type][name]))
    metric.reset_state()
    with pytest.raises(DataError, match="no examples"):
        metric.result()
    metric.update_state(shapes[:2], _perfect(shapes[:2], with_ids=False))  # paired by position
    _assert_all_one(metric.result())


def test_instance_ap_takes_padded_dataset_batches(shapes):
    ds = instance_dataset(shapes, image_size=(128, 128), max_instances=8, batch_size=4, shuffle=False, flip=True,
                          seed=1, repeat=False)
    metric = InstanceAP(SHAPE_CATEGORIES)
    for batch in ds:
        predictions = {"boxes": batch["boxes"], "scores": np.ones(batch["classes"].shape),
                       "classes": batch["classes"], "masks": batch["masks"],
                       "num_detections": batch["num_instances"]}
        metric.update_state(batch, predictions)  # padding rows (class 0) are left out on both sides
    _assert_all_one(metric.result())


def test_coco_ground_truth_and_detections_records(shapes):
    example = shapes[0]
    gt = coco_ground_truth([example], SHAPE_CATEGORIES)
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[example["image_id"]]))
    assert len(anns) == len(example["classes"])
    for ann, box, mask, cls in zip(anns, example["boxes"], example["masks"], example["classes"]):
        y1, x1, y2, x2 = box
        assert ann["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
        assert ann["area"] == mask.sum() and ann["category_id"] == cls and ann["iscrowd"] == 0
        np.testing.assert_array_equal(gt.annToMask(ann), mask)
    segm = coco_detections(_perfect([example]), iou_type="segm")
    boxes = coco_detections(_perfect([example]), iou_type="bbox")
    json.dumps(segm + boxes)  # plain JSON, as a COCO results file
    assert set(segm[0]) == {"image_id", "category_id", "score", "segmentation"}
    assert set(boxes[0]) == {"image_id", "category_id", "score", "bbox"}
    assert boxes[0]["bbox"] == anns[0]["bbox"]


def test_errors_name_the_value_and_the_expectation(shapes):
    example = shapes[0]
    bad_size = _perfect([example])
    bad_size[0]["masks"] = bad_size[0]["masks"][:, :64]
    with pytest.raises(DataError, match=r"masks \[\d+, 64, 128\], expected \[D, 128, 128\] \(the image size\)"):
        evaluate_instances([example], bad_size, SHAPE_CATEGORIES)
    bad_class = _perfect([example])
    bad_class[0]["classes"] = bad_class[0]["classes"] * 0 + 7
    with pytest.raises(DataError, match=r"classes \[7\] are not category ids, expected 1..3"):
        evaluate_instances([example], bad_class, SHAPE_CATEGORIES)
    with pytest.raises(DataError, match=r"lacks masks, expected scores, classes, masks for segm AP"):
        evaluate_instances([example], [{k: v for k, v in _perfect([example])[0].items() if k != "masks"}],
                           SHAPE_CATEGORIES)
    with pytest.raises(DataError, match=r"expected a list of dicts \{'id', 'name'\} with ids 1..K"):
        evaluate_instances([example], _perfect([example]), [{"id": 3, "name": "x"}])
    with pytest.raises(DataError, match=r"prediction image_id 99 is not among this batch's examples"):
        evaluate_instances([example], [{**_perfect([example])[0], "image_id": 99}], SHAPE_CATEGORIES)


def test_docstring_examples_run():
    import doctest

    from kseg.metrics import coco

    failed, attempted = doctest.testmod(coco)
    assert attempted >= 3 and failed == 0
