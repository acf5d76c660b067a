"""Panoptic Quality: hand-computed values one rule at a time on 1 x 10 maps, then equality
with COCO's rules (hotcoco, which follows panopticapi) on adversarial cases and on
perturbed real COCO panoptic ground truth (tests/pq_cases.py), through committed fixtures
(tests/reference/make_pq_fixtures.py) and live when hotcoco is installed.

Categories: person and car are things, sky is stuff. In the maps below gt id 1 is a
person, 2 sky, 3 a car, 4 a person crowd region; predicted ids 5 and 6 are people, 7 sky,
8 a car.
"""

import doctest
import json
from pathlib import Path

import numpy as np
import pytest

from kseg.data.errors import DataError
from kseg.metrics import PanopticQuality, evaluate_panoptic_folders, panoptic_counts, panoptic_quality
from kseg.metrics import panoptic as panoptic_module
from tests import pq_cases
from tests.testing import SHARED_DATA, requires_shared_data

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SAMPLE = SHARED_DATA / "coco-panoptic-sample"

CATEGORIES = [{"id": 1, "name": "person", "isthing": 1},
              {"id": 3, "name": "car", "isthing": 1},
              {"id": 10, "name": "sky", "isthing": 0}]
GT_SEGMENTS = {1: {"category_id": 1, "iscrowd": 0}, 2: {"category_id": 10, "iscrowd": 0},
               3: {"category_id": 3, "iscrowd": 0}, 4: {"category_id": 1, "iscrowd": 1}}
PRED_SEGMENTS = {5: {"category_id": 1}, 6: {"category_id": 1}, 7: {"category_id": 10}, 8: {"category_id": 3}}


def evaluate(gt, pred):
    """PQ of one image given as lists; the segment tables are cut down to the ids present."""
    gt, pred = np.array([gt]), np.array([pred])
    gt_segments = {i: s for i, s in GT_SEGMENTS.items() if i in gt}
    pred_segments = {i: s for i, s in PRED_SEGMENTS.items() if i in pred}
    return panoptic_quality([(gt, gt_segments, pred, pred_segments)], CATEGORIES)


def counts(result, name):
    c = result["per_class"][name]
    return c["tp"], c["fp"], c["fn"]


def test_perfect_prediction():
    result = evaluate([1, 1, 1, 3, 3, 2, 2, 2, 2, 2],
                      [5, 5, 5, 8, 8, 7, 7, 7, 7, 7])
    for group, n in (("all", 3), ("things", 2), ("stuff", 1)):
        assert result[group] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": n}


def test_overlap_iou_0_6_is_a_true_positive():
    # person: gt pixels 0-3, pred 1-4: intersection 3, union 5.
    result = evaluate([1, 1, 1, 1, 2, 2, 2, 2, 2, 2],
                      [0, 5, 5, 5, 5, 7, 7, 7, 7, 7])
    person = result["per_class"]["person"]
    assert counts(result, "person") == (1, 0, 0)
    assert person["sq"] == pytest.approx(0.6) and person["pq"] == pytest.approx(0.6) and person["rq"] == 1.0
    assert result["per_class"]["sky"]["sq"] == pytest.approx(5 / 6)  # pred sky misses pixel 4 only


def test_overlap_iou_0_4_is_one_false_positive_and_one_false_negative():
    # person: gt 0-3, pred 2-4: intersection 2, union 5.
    result = evaluate([1, 1, 1, 1, 2, 2, 2, 2, 2, 2],
                      [0, 0, 5, 5, 5, 7, 7, 7, 7, 7])
    assert counts(result, "person") == (0, 1, 1)
    person = result["per_class"]["person"]
    assert (person["pq"], person["sq"], person["rq"]) == (0.0, 0.0, 0.0)


def test_iou_of_exactly_one_half_does_not_match():
    # person: gt 0-2, pred 1-3: intersection 2, union 4.
    result = evaluate([1, 1, 1, 2, 2, 2, 2, 2, 2, 2],
                      [0, 5, 5, 5, 7, 7, 7, 7, 7, 7])
    assert counts(result, "person") == (0, 1, 1)


def test_void_pixels_are_left_out_of_the_iou():
    # The prediction spills over the 2 void pixels: 4 / (6 - 2) = 1.
    result = evaluate([0, 0, 1, 1, 1, 1, 2, 2, 2, 2],
                      [5, 5, 5, 5, 5, 5, 7, 7, 7, 7])
    assert counts(result, "person") == (1, 0, 0)
    assert result["per_class"]["person"]["sq"] == 1.0
    assert result["all"]["pq"] == 1.0


def test_unmatched_prediction_mostly_on_void_is_not_a_false_positive():
    result = evaluate([0, 0, 0, 2, 2, 2, 2, 2, 2, 2],
                      [5, 5, 5, 5, 7, 7, 7, 7, 7, 7])  # 3 of the person's 4 pixels on void
    assert counts(result, "person") == (0, 0, 0)
    assert np.isnan(result["per_class"]["person"]["pq"])
    assert result["all"]["n"] == 1 and result["things"]["n"] == 0 and np.isnan(result["things"]["pq"])


def test_unmatched_prediction_half_on_void_is_a_false_positive():
    result = evaluate([0, 0, 0, 2, 2, 2, 2, 2, 2, 2],
                      [0, 5, 5, 5, 5, 7, 7, 7, 7, 7])  # 2 of 4 pixels on void: not more than half
    assert counts(result, "person") == (0, 1, 0)


def test_prediction_on_a_crowd_region_of_its_class_is_not_a_false_positive():
    result = evaluate([4, 4, 4, 4, 2, 2, 2, 2, 2, 2],
                      [5, 5, 5, 7, 7, 7, 7, 7, 7, 7])
    assert counts(result, "person") == (0, 0, 0)  # and the crowd region is no FN
    assert counts(result, "sky") == (1, 0, 0)


def test_prediction_on_a_crowd_region_of_another_class_is_a_false_positive():
    result = evaluate([4, 4, 4, 4, 2, 2, 2, 2, 2, 2],
                      [8, 8, 8, 7, 7, 7, 7, 7, 7, 7])
    assert counts(result, "car") == (0, 1, 0)
    assert counts(result, "person") == (0, 0, 0)


def test_crowd_ground_truth_is_never_a_false_negative():
    result = evaluate([4, 4, 4, 4, 2, 2, 2, 2, 2, 2],
                      [0, 0, 0, 0, 7, 7, 7, 7, 7, 7])
    assert counts(result, "person") == (0, 0, 0)
    assert result["all"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}


def test_crowd_pixels_stay_in_the_union():
    # Person 1 is pixels 4-7, the crowd 0-3; the prediction covers both: IoU = 4 / 8, no
    # match (COCO takes only void out of the union), and 4 of its 8 pixels on the crowd is
    # not more than half: an FP.
    result = evaluate([4, 4, 4, 4, 1, 1, 1, 1, 2, 2],
                      [5, 5, 5, 5, 5, 5, 5, 5, 7, 7])
    assert counts(result, "person") == (0, 1, 1)
    # With the crowd 2 pixels wide the IoU is 6 / 8, not 6 / 6.
    result = evaluate([4, 4, 1, 1, 1, 1, 1, 1, 2, 2],
                      [5, 5, 5, 5, 5, 5, 5, 5, 7, 7])
    assert counts(result, "person") == (1, 0, 0)
    assert result["per_class"]["person"]["sq"] == 0.75


def test_only_the_last_crowd_region_of_a_class_excuses_a_prediction():
    # Crowd regions 4 (pixels 0-3) and 8 (4-5) are both people; the prediction lies on 4.
    gt = np.array([[4, 4, 4, 4, 8, 8, 2, 2, 2, 2]])
    pred = np.array([[5, 5, 5, 5, 7, 7, 7, 7, 7, 7]])
    crowd = {"category_id": 1, "iscrowd": 1}
    sky, pred_segments = {"category_id": 10}, {5: {"category_id": 1}, 7: {"category_id": 10}}
    last_is_8 = panoptic_quality([(gt, {4: crowd, 8: crowd, 2: sky}, pred, pred_segments)], CATEGORIES)
    last_is_4 = panoptic_quality([(gt, {8: crowd, 4: crowd, 2: sky}, pred, pred_segments)], CATEGORIES)
    assert counts(last_is_8, "person") == (0, 1, 0)
    assert counts(last_is_4, "person") == (0, 0, 0)


def test_split_segment_gives_at_most_one_true_positive():
    # One person (pixels 0-7) predicted as two: 5/8 matches, 3/8 is an FP.
    result = evaluate([1, 1, 1, 1, 1, 1, 1, 1, 2, 2],
                      [5, 5, 5, 5, 5, 6, 6, 6, 7, 7])
    assert counts(result, "person") == (1, 1, 0)
    person = result["per_class"]["person"]
    assert person["sq"] == pytest.approx(0.625)
    assert person["pq"] == pytest.approx(0.625 / 1.5) and person["rq"] == pytest.approx(1 / 1.5)
    # Halves of 4/8 each: no match, two FPs and the FN.
    result = evaluate([1, 1, 1, 1, 1, 1, 1, 1, 2, 2],
                      [5, 5, 5, 5, 6, 6, 6, 6, 7, 7])
    assert counts(result, "person") == (0, 2, 1)


def test_wrong_category_never_matches():
    result = evaluate([1, 1, 1, 1, 1, 2, 2, 2, 2, 2],
                      [8, 8, 8, 8, 8, 7, 7, 7, 7, 7])
    assert counts(result, "person") == (0, 0, 1)
    assert counts(result, "car") == (0, 1, 0)
    assert result["things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}


def test_things_and_stuff_averages():
    # person IoU 3/5 = 0.6; car missed (predicted as sky); sky: 5 / (7 + 6 - 5) = 0.625.
    result = evaluate([1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3],
                      [0, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7, 7])
    assert counts(result, "car") == (0, 0, 1)
    things, stuff, everything = result["things"], result["stuff"], result["all"]
    assert things["n"] == 2 and stuff["n"] == 1 and everything["n"] == 3
    assert things["pq"] == pytest.approx(0.3) and things["sq"] == pytest.approx(0.3)
    assert things["rq"] == pytest.approx(0.5)
    assert stuff["pq"] == pytest.approx(0.625) and stuff["sq"] == pytest.approx(0.625) and stuff["rq"] == 1.0
    assert everything["pq"] == pytest.approx((0.6 + 0 + 0.625) / 3)
    assert everything["rq"] == pytest.approx(2 / 3)


def random_image(rng, offset, crowd=0.2):
    """A 32 x 48 ground truth of 8 x 8 blocks (void, crowd and every category; a person block
    is crowd with probability `crowd`) and a prediction that shifts it, relabels it and swaps
    some categories."""
    blocks = rng.integers(0, 8, size=(4, 6))
    gt = np.kron(np.arange(1, 25).reshape(4, 6), np.ones((8, 8), np.int64))
    gt[np.kron(blocks == 0, np.ones((8, 8), bool))] = 0  # void
    gt_segments = {}
    for i in np.unique(gt[gt > 0]):
        category = CATEGORIES[int(rng.integers(0, 3))]["id"]
        gt_segments[int(i) + offset] = {"category_id": category, "iscrowd": int(category == 1 and rng.random() < crowd)}
    gt = np.where(gt > 0, gt + offset, 0)
    pred = np.roll(gt, (int(rng.integers(-1, 2)), int(rng.integers(-3, 4))), axis=(0, 1))
    pred[rng.random(pred.shape) < 0.05] = 0
    pred = np.where(pred > 0, pred + 1000, 0)
    pred_segments = {}
    for i in np.unique(pred[pred > 0]):
        category = gt_segments[int(i) - 1000]["category_id"]
        if rng.random() < 0.2:
            category = CATEGORIES[int(rng.integers(0, 3))]["id"]
        pred_segments[int(i)] = {"category_id": category}
    return gt, gt_segments, pred, pred_segments


def test_streaming_over_images_equals_one_call_on_all():
    rng = np.random.default_rng(0)
    # Crowd regions in the first image only: side by side, the crowd regions of several
    # images would be several of one class in one image, of which COCO keeps the last.
    images = [random_image(rng, offset=100 * k, crowd=0.5 if k == 0 else 0.0) for k in range(5)]
    metric = PanopticQuality(CATEGORIES)
    metric.update_state(*random_image(rng, offset=0))
    metric.reset_state()
    for image in images:
        metric.update_state(*image)
    streamed = metric.result()
    # The same images side by side (ids are distinct across images) make one image.
    gt = np.concatenate([i[0] for i in images], axis=1)
    pred = np.concatenate([i[2] for i in images], axis=1)
    gt_segments = {k: v for i in images for k, v in i[1].items()}
    pred_segments = {k: v for i in images for k, v in i[3].items()}
    at_once = panoptic_quality([(gt, gt_segments, pred, pred_segments)], CATEGORIES)
    assert metric.num_images == 5
    for name, values in streamed["per_class"].items():
        assert values == pytest.approx(at_once["per_class"][name], nan_ok=True)
    for group in ("all", "things", "stuff"):
        assert streamed[group] == pytest.approx(at_once[group])
    assert panoptic_quality(images, CATEGORIES) == streamed
    tp = sum(c["tp"] for c in streamed["per_class"].values())
    assert 0 < tp < sum(len(i[1]) for i in images)  # the random case exercises both outcomes


def brute_force_counts(gt, gt_segments, pred, pred_segments):
    """The definition written out with boolean masks, pair by pair (slow, independent)."""
    index = {c["id"]: k for k, c in enumerate(CATEGORIES)}
    tp, fp, fn, iou_sum = np.zeros(3, int), np.zeros(3, int), np.zeros(3, int), np.zeros(3)
    matched_gt, matched_pred = set(), set()
    crowd = {c: gt == ([-1] + [i for i, s in gt_segments.items() if s["category_id"] == c and s["iscrowd"]])[-1]
             for c in index}  # the last crowd region listed, or none
    for p, ps in pred_segments.items():
        p_mask, c = pred == p, ps["category_id"]
        void = (p_mask & (gt == 0)).sum()
        ignored = void + (p_mask & crowd[c]).sum()
        for g, gs in gt_segments.items():
            if gs["iscrowd"] or gs["category_id"] != c:
                continue
            g_mask = gt == g
            iou = (p_mask & g_mask).sum() / ((p_mask | g_mask).sum() - void)
            if iou > 0.5:
                matched_gt.add(g)
                matched_pred.add(p)
                tp[index[c]] += 1
                iou_sum[index[c]] += iou
        if p not in matched_pred and ignored / p_mask.sum() <= 0.5:
            fp[index[c]] += 1
    for g, gs in gt_segments.items():
        if not gs["iscrowd"] and g not in matched_gt:
            fn[index[gs["category_id"]]] += 1
    return tp, fp, fn, iou_sum


def test_random_images_against_the_definition_written_out():
    rng = np.random.default_rng(1)
    for k in range(4):
        image = random_image(rng, offset=0)
        got, want = panoptic_counts(*image, CATEGORIES), brute_force_counts(*image)
        for g, w in zip(got[:3], want[:3]):
            np.testing.assert_array_equal(g, w)
        np.testing.assert_allclose(got[3], want[3], rtol=1e-12)


def test_counts_and_segment_lists():
    gt = np.array([[1, 1, 2, 2]])
    segments_info = [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 10, "iscrowd": 0}]
    tp, fp, fn, iou = panoptic_counts(gt, segments_info, gt, segments_info, CATEGORIES)
    assert tp.tolist() == [1, 0, 1] and fp.tolist() == [0, 0, 0] and fn.tolist() == [0, 0, 0]
    assert iou.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("gt_segments, pred_map, message", [
    ({1: {"category_id": 1}}, [[5, 5, 0, 0]], "id(s) 2 absent from gt_segments"),
    ({1: {"category_id": 1}, 2: {"category_id": 10}, 9: {"category_id": 1}}, [[5, 5, 0, 0]], "9 with no pixel"),
    ({1: {"category_id": 1}, 2: {"category_id": 99}}, [[5, 5, 0, 0]], "category_id 99"),
    ({1: {"category_id": 1}, 2: {"category_id": 10}}, [[5, 5, 0]], "expected the gt_map's 1x4"),
    ({1: {"category_id": 1}, 2: {"category_id": 10}}, [[5, 6, 0, 0]], "id(s) 6 absent from pred_segments"),
])
def test_errors_name_the_value_seen_and_expected(gt_segments, pred_map, message):
    metric = PanopticQuality(CATEGORIES)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        metric.update_state(np.array([[1, 1, 2, 2]]), gt_segments, np.array(pred_map), {5: {"category_id": 1}})


def test_bad_categories():
    with pytest.raises(DataError, match="isthing"):
        PanopticQuality([{"id": 1, "name": "person"}])
    with pytest.raises(DataError, match="repeated"):
        PanopticQuality([{"id": 1, "name": "a", "isthing": 1}, {"id": 1, "name": "b", "isthing": 0}])


def test_docstring_examples_run():
    failed, attempted = doctest.testmod(panoptic_module)
    assert attempted > 0 and failed == 0


# ------------------------------------------- equality with COCO's rules (hotcoco, panopticapi)


ADVERSARIAL = pq_cases.adversarial_cases()
REGENERATE = "the case changed: rerun `python3 tests/reference/make_pq_fixtures.py` (needs hotcoco)"


def load_fixture(file_name):
    with open(FIXTURES / file_name) as f:
        return json.load(f)["cases"]


def kseg_result(case):
    """kseg's PQ of a case, image by image, in the canonical form of tests/pq_cases.py."""
    metric = PanopticQuality(case["categories"])
    for im in case["images"]:
        metric.update_state(im["gt"], im["gt_info"], im["pred"], im["pred_info"])
    return pq_cases.canonical(metric.result(), case["categories"])


def folders_result(case, paths):
    """kseg's PQ of a case written as COCO panoptic files (`pq_cases.write_files`'s paths)."""
    return pq_cases.canonical(evaluate_panoptic_folders(*paths), case["categories"])


def check_live(cases, folder):
    """kseg's PQ in memory and through files equals hotcoco's on the same files, case by case."""
    for name, case in cases.items():
        paths = pq_cases.write_files(case, folder / name)
        want = pq_cases.hotcoco_files(*paths)
        assert pq_cases.differences(kseg_result(case), want) == [], name
        assert pq_cases.differences(folders_result(case, paths), want) == [], name


@pytest.fixture(scope="module")
def coco_cases():
    if not SAMPLE.exists():
        pytest.skip(f"{SAMPLE} is absent: the real COCO panoptic cases need ../shared/data")
    return pq_cases.coco_cases(SAMPLE)


def test_fixtures_hold_every_case():
    assert set(load_fixture("pq_adversarial.json")) == set(ADVERSARIAL)
    assert len(load_fixture("pq_coco.json")) >= 30


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_case_equals_the_reference(name):
    case, reference = ADVERSARIAL[name], load_fixture("pq_adversarial.json")[name]
    assert pq_cases.digest(case) == reference["digest"], REGENERATE
    assert pq_cases.differences(kseg_result(case), reference["result"]) == []


def test_adversarial_cases_through_files_equal_the_reference(tmp_path):
    reference = load_fixture("pq_adversarial.json")
    for name, case in ADVERSARIAL.items():
        paths = pq_cases.write_files(case, tmp_path / name)
        assert pq_cases.differences(folders_result(case, paths), reference[name]["result"]) == [], name


@pytest.mark.data
@requires_shared_data
@pytest.mark.parametrize("name", sorted(load_fixture("pq_coco.json")))
def test_coco_case_equals_the_reference(coco_cases, name):
    case, reference = coco_cases[name], load_fixture("pq_coco.json")[name]
    assert pq_cases.digest(case) == reference["digest"], REGENERATE
    assert pq_cases.differences(kseg_result(case), reference["result"]) == []


@pytest.mark.reference
def test_adversarial_cases_equal_hotcoco_live(tmp_path):
    pytest.importorskip("hotcoco", reason="hotcoco is not installed (pip install hotcoco, or kseg[test])")
    check_live(ADVERSARIAL, tmp_path)


@pytest.mark.reference
@pytest.mark.data
@requires_shared_data
def test_coco_cases_equal_hotcoco_live(coco_cases, tmp_path):
    pytest.importorskip("hotcoco", reason="hotcoco is not installed (pip install hotcoco, or kseg[test])")
    check_live(coco_cases, tmp_path)


@pytest.mark.data
@requires_shared_data
def test_coco_cases_reach_every_rule(coco_cases):
    """The perturbed COCO predictions are not all easy: some miss, some spill on void and
    crowd regions, and the split ground truths have several crowd regions of a class."""
    reference = load_fixture("pq_coco.json")
    totals = {k: sum(c[k] for r in reference.values() for c in r["result"]["per_class"].values())
              for k in ("tp", "fp", "fn")}
    assert min(totals.values()) > 50
    crowds = [s["category_id"] for im in coco_cases["split_crowds_identity"]["images"] for s in im["gt_info"]
              if s["iscrowd"]]
    assert len(crowds) > len(set(crowds))
    assert reference["crowd_absorbed_by_neighbour"]["result"] != reference["identity"]["result"]


def test_malformed_ground_truth_is_an_error(tmp_path):
    gt, pred = np.array([[1, 1, 2, 2]]), np.array([[5, 5, 7, 7]])
    pred_segments = {5: {"category_id": 1}, 7: {"category_id": 10}}
    cases = [
        ([{"id": 1, "category_id": 1}, {"id": 2, "category_id": 10}, {"id": 1, "category_id": 3}],
         "segment id 1 repeated"),
        ({0: {"category_id": 1}, 1: {"category_id": 1}, 2: {"category_id": 10}}, "segment id 0, expected an int > 0"),
        ({1: {"category_id": 1, "iscrowd": 2}, 2: {"category_id": 10}}, "iscrowd 2, expected 0 or 1"),
        ({1: {"category_id": 2}, 2: {"category_id": 10}}, "segment 1 has category_id 2, expected one of"),
        ({1: {"category_id": 1}}, r"gt_map holds segment id\(s\) 2 absent from gt_segments"),
    ]
    for gt_segments, message in cases:
        with pytest.raises(DataError, match=message):
            panoptic_counts(gt, gt_segments, pred, pred_segments, CATEGORIES)
    # A stated ground-truth area is what panopticapi puts in the union: it must be the PNG's.
    case = {"categories": CATEGORIES, "images": [pq_cases.image([1, 1, 2, 2], [5, 5, 7, 7])]}
    gt_json, gt_dir, pred_json, pred_dir = pq_cases.write_files(case, tmp_path)
    data = json.loads(Path(gt_json).read_text())
    data["annotations"][0]["segments_info"][0]["area"] = 3
    Path(gt_json).write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"000000.png \(image_id 0 of .*gt.json\): segments_info states area\(s\) "
                                        r"1: 3 but the PNG has 1: 2 pixels"):
        evaluate_panoptic_folders(gt_json, gt_dir, pred_json, pred_dir)
