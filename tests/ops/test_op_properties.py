"""Properties of the ops on random valid and edge inputs (hypothesis): box coding, ROI Align,
panoptic fusion and Panoptic Quality.

Edge inputs: zero-size and inverted boxes, boxes outside the image, empty inputs, all-void
maps, single pixels and huge values. Each property holds for every input, so a failure prints
the smallest input that breaks it.
"""

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kseg.metrics import PanopticQuality
from kseg.ops import boxes as box_ops
from kseg.ops import panoptic_fusion as fusion_ops
from kseg.ops.panoptic_fusion import panoptic_fusion
from kseg.ops.panoptic_fusion_reference import panoptic_fusion_numpy
from kseg.ops.roi_align import roi_align

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

moderate = st.floats(-1e4, 1e4, allow_nan=False, width=32)
huge = st.floats(allow_nan=False, allow_infinity=False, width=32)  # up to +-3.4e38


@st.composite
def boxes(draw, max_n=6, low=-50.0, high=150.0, min_size=0.0):
    n = draw(st.integers(0, max_n))
    out = []
    for _ in range(n):
        y, x = draw(st.floats(low, high, width=32)), draw(st.floats(low, high, width=32))
        h = draw(st.floats(min_size, 200.0, width=32))
        w = draw(st.floats(min_size, 200.0, width=32))
        out.append([y, x, y + h, x + w])
    return np.asarray(out, np.float32).reshape(n, 4)


# ------------------------------------------------------------------------------ box coding


@SETTINGS
@given(gt=boxes(min_size=0.5), anchors=boxes(min_size=1.0),
       weights=st.sampled_from([box_ops.RPN_WEIGHTS, box_ops.BOX_HEAD_WEIGHTS]))
def test_decode_inverts_encode_for_any_number_of_boxes(gt, anchors, weights):
    n = min(len(gt), len(anchors))
    gt, anchors = gt[:n], anchors[:n]
    deltas = box_ops.encode_boxes(gt, anchors, weights)
    assert deltas.shape == (n, 4)
    # Round trip holds where the size ratio is inside decode's clip (exp(clip) = 62.5).
    ratio = np.maximum((gt[:, 2:] - gt[:, :2]) / (anchors[:, 2:] - anchors[:, :2]), 1e-9)
    keep = (ratio < 60).all(axis=1)
    decoded = box_ops.decode_boxes(deltas, anchors, weights).numpy()
    np.testing.assert_allclose(decoded[keep], gt[keep], rtol=1e-4, atol=2e-3)


@SETTINGS
@given(gt=boxes(min_size=0.0), anchors=boxes(min_size=0.0),
       weights=st.sampled_from([box_ops.RPN_WEIGHTS, box_ops.BOX_HEAD_WEIGHTS]))
def test_encode_is_finite_for_zero_size_inverted_and_padded_boxes(gt, anchors, weights):
    n = min(len(gt), len(anchors))
    padding = np.zeros((2, 4), np.float32)
    inverted = gt[:n, [2, 3, 0, 1]]  # y2 < y1, x2 < x1
    cases = [(gt[:n], anchors[:n]), (padding, padding), (inverted, anchors[:n]), (gt[:n], inverted)]
    for a, b in cases:
        assert np.isfinite(box_ops.encode_boxes(a, b, weights).numpy()).all()


@SETTINGS
@given(deltas=st.lists(st.tuples(moderate, moderate, huge, huge), min_size=1, max_size=5), anchors=boxes(min_size=1.0))
def test_decode_never_overflows_on_huge_size_deltas(deltas, anchors):
    assume(len(anchors) > 0)
    deltas = np.asarray(deltas, np.float32)[:, None]  # [N, 1, 4] against [A, 4]
    decoded = box_ops.decode_boxes(deltas, anchors).numpy()
    assert decoded.shape == (len(deltas), len(anchors), 4)
    sizes = decoded[..., 2:] - decoded[..., :2]
    # exp() is clipped, so a size stays <= 62.5 times the anchor's (no inf) whatever dh, dw are.
    rounding = 4 * np.spacing(np.abs(decoded).max())  # sizes are differences of float32 coordinates
    assert (sizes <= 62.5 * (anchors[None, :, 2:] - anchors[None, :, :2]) * (1 + 1e-5) + rounding).all()
    assert np.isfinite(decoded).all()


def test_box_coding_of_empty_inputs():
    empty = np.zeros((0, 4), np.float32)
    assert box_ops.encode_boxes(empty, empty).shape == (0, 4)
    assert box_ops.decode_boxes(empty, empty).shape == (0, 4)
    assert box_ops.iou_matrix(empty, np.ones((3, 4), np.float32)).shape == (0, 3)
    assert box_ops.clip_boxes(empty, (8, 8)).shape == (0, 4)


@SETTINGS
@given(b=boxes(low=-1e4, high=1e4), size=st.tuples(st.integers(1, 64), st.integers(1, 64)))
def test_clipped_boxes_lie_inside_the_image_and_ious_are_in_0_1(b, size):
    clipped = box_ops.clip_boxes(b, size).numpy()
    assert (clipped >= 0).all() and (clipped[:, [0, 2]] <= size[0]).all() and (clipped[:, [1, 3]] <= size[1]).all()
    iou = box_ops.iou_matrix(clipped, b).numpy()
    assert np.isfinite(iou).all() and (iou >= 0).all() and (iou <= 1 + 1e-6).all()


# ------------------------------------------------------------------------------ ROI Align


def _pyramid(image_size, channels, value=None, seed=0, levels=(2, 3)):
    rng = np.random.default_rng(seed)
    out = {}
    for level in levels:
        shape = (1, -(-image_size[0] // 2**level), -(-image_size[1] // 2**level), channels)
        out[f"P{level}"] = (np.full(shape, value, np.float32) if value is not None
                            else rng.uniform(-1, 1, shape).astype(np.float32))
    return out


roi_boxes = boxes(max_n=5, low=-40.0, high=80.0, min_size=0.0)


@SETTINGS
@given(b=roi_boxes, size=st.sampled_from([(32, 32), (24, 40), (4, 4)]), method=st.sampled_from(["gather",
                                                                                               "crop_and_resize"]),
       output_size=st.integers(1, 4), ratio=st.integers(1, 2))
def test_roi_align_shapes_are_static_and_values_finite(b, size, method, output_size, ratio):
    features = _pyramid(size, 3)
    out = roi_align(features, b[None], image_size=size, output_size=output_size, sampling_ratio=ratio, min_level=2,
                    max_level=3, method=method).numpy()
    assert out.shape == (1, len(b), output_size, output_size, 3)
    assert np.isfinite(out).all()
    assert np.abs(out).max(initial=0) <= 1 + 1e-5  # bilinear means of values in [-1, 1] (or 0 outside)


@SETTINGS
@given(b=boxes(max_n=5, low=2.0, high=18.0, min_size=0.0), value=st.floats(-1e3, 1e3, width=32),
       method=st.sampled_from(["gather", "crop_and_resize"]))
def test_roi_align_of_a_constant_map_is_that_constant_inside_the_image(b, value, method):
    # Sample points land in [y1/s - 0.5, y2/s - 0.5]: inside [0, size - 1] for boxes in [2, 30] px.
    size = (32, 32)
    b = np.clip(b, 2.0, 30.0)
    out = roi_align(_pyramid(size, 2, value), b[None], image_size=size, output_size=2, sampling_ratio=2, min_level=2,
                    max_level=3, method=method).numpy()
    np.testing.assert_allclose(out, value, rtol=1e-5, atol=1e-4)


@SETTINGS
@given(offset=st.floats(200.0, 1e6, width=32), method=st.sampled_from(["gather", "crop_and_resize"]))
def test_roi_align_of_a_box_outside_the_image_reads_zeros(offset, method):
    size = (32, 32)
    b = np.array([[[offset, offset, offset + 16, offset + 16], [-offset - 16, 0, -offset, 16]]], np.float32)
    out = roi_align(_pyramid(size, 2, 5.0), b, image_size=size, output_size=2, min_level=2, max_level=3,
                    method=method).numpy()
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("method", ["gather", "crop_and_resize"])
def test_roi_align_of_no_boxes_and_one_pixel_images(method):
    out = roi_align(_pyramid((32, 32), 3), np.zeros((1, 0, 4), np.float32), image_size=(32, 32), output_size=3,
                    min_level=2, max_level=3, method=method)
    assert out.shape == (1, 0, 3, 3, 3)
    features = _pyramid((1, 1), 1, 7.0)  # every level is 1 x 1
    out = roi_align(features, np.array([[[0, 0, 1, 1], [0, 0, 0, 0]]], np.float32), image_size=(1, 1),
                    output_size=2, min_level=2, max_level=3, method=method).numpy()
    assert out.shape == (1, 2, 2, 2, 1) and np.isfinite(out).all()


# ------------------------------------------------------------------------------ panoptic fusion


@st.composite
def fusion_inputs(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    d, s = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    h, w = draw(st.sampled_from([(1, 1), (1, 5), (6, 6), (5, 9)]))
    edge = draw(st.sampled_from(["random", "empty masks", "full masks", "no detections", "huge logits"]))
    masks = rng.uniform(0, 1, (d, h, w)).astype(np.float32)
    if edge == "empty masks":
        masks[:] = 0
    elif edge == "full masks":
        masks[:] = 1
    scores = rng.uniform(0, 1, d).astype(np.float32)
    classes = rng.integers(0, 3, d).astype(np.int32)
    num = 0 if edge == "no detections" else draw(st.integers(0, d))
    logits = rng.normal(0, 1 if edge != "huge logits" else 1e30, (h, w, s)).astype(np.float32)
    thing_class = draw(st.sampled_from([0, None]))
    stuff = list(range(10, 10 + (s - 1 if thing_class == 0 else s)))
    options = dict(stuff_categories=stuff, thing_class=thing_class, min_stuff_area=draw(st.sampled_from([0, 3])),
                   overlap_threshold=draw(st.sampled_from([0.0, 0.5, 1.0])),
                   max_segments=draw(st.sampled_from([None, 1, 3])))
    return masks, scores, classes, np.int32(num), logits, options


@SETTINGS
@given(fusion_inputs())
def test_fusion_ids_areas_and_table_are_consistent(case):
    masks, scores, classes, num, logits, options = case
    out = {k: np.asarray(v) for k, v in panoptic_fusion(masks, scores, classes, num, logits, **options).items()}
    n = int(out["num_segments"])
    ids = out["panoptic"]
    # ids are exactly 0 (void) and 1..n, each segment's area is its pixel count, so areas sum to
    # the non-void pixels (one id per pixel: no overlap).
    assert set(np.unique(ids).tolist()) <= set(range(n + 1))
    np.testing.assert_array_equal(out["area"][:n], [int((ids == k + 1).sum()) for k in range(n)])
    assert int(out["area"].sum()) == int((ids > 0).sum()) and (out["area"][:n] > 0).all()
    assert not out["category"][n:].any() and not out["is_thing"][n:].any() and not out["area"][n:].any()
    # things first (painting order), their categories are detected classes; stuff from the table
    thing = out["is_thing"][:n]
    assert not (np.diff(thing.astype(int)) > 0).any()
    assert set(out["category"][:n][thing].tolist()) <= set(classes[:num].tolist())
    assert set(out["category"][:n][~thing].tolist()) <= set(options["stuff_categories"])
    assert np.isfinite(out["score"]).all()
    reference = panoptic_fusion_numpy(masks, scores, classes, num, logits, **options)
    np.testing.assert_array_equal(ids, reference["panoptic"])


@SETTINGS
@given(fusion_inputs(), st.sampled_from([1, 2]))
def test_fusion_in_small_blocks_equals_the_reference(case, block):
    # step 2 takes BLOCK slots per pixel histogram: with 1 or 2 the slots span several blocks
    masks, scores, classes, num, logits, options = case
    with mock.patch.object(fusion_ops, "BLOCK", block):
        out = {k: np.asarray(v) for k, v in panoptic_fusion(masks, scores, classes, num, logits, **options).items()}
    reference = panoptic_fusion_numpy(masks, scores, classes, num, logits, **options)
    for key in ("panoptic", "category", "is_thing", "area", "num_segments"):
        np.testing.assert_array_equal(out[key], reference[key], err_msg=key)
    np.testing.assert_allclose(out["score"], reference["score"], rtol=1e-5, atol=1e-6)


def test_fully_hidden_instances_are_no_segments_even_at_overlap_threshold_zero():
    # Found by the property test above: at threshold 0 an instance under a higher-scored one has
    # 0 >= 0 * area visible pixels; it must not become an empty segment.
    masks = np.ones((3, 1, 1), np.float32)
    scores, classes = np.array([0.1, 0.8, 0.9], np.float32), np.array([1, 1, 2], np.int32)
    options = dict(stuff_categories=[], thing_class=0, min_stuff_area=0, overlap_threshold=0.0, score_threshold=0.0)
    out = panoptic_fusion(masks, scores, classes, 3, np.zeros((1, 1, 1), np.float32), **options)
    reference = panoptic_fusion_numpy(masks, scores, classes, 3, np.zeros((1, 1, 1), np.float32), **options)
    assert int(out["num_segments"]) == 1 and int(out["category"][0]) == 2 and int(out["area"][0]) == 1
    np.testing.assert_array_equal(np.asarray(out["panoptic"]), reference["panoptic"])


# ------------------------------------------------------------------------------ Panoptic Quality

CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "car", "isthing": 1},
              {"id": 3, "name": "sky", "isthing": 0}]


@st.composite
def panoptic_maps(draw, max_segments=5):
    h, w = draw(st.sampled_from([(1, 1), (3, 4), (8, 8)]))
    k = draw(st.integers(0, max_segments))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 1000), size=k, replace=False)
    labels = rng.integers(0, k + 1, (h, w))  # 0 = void
    id_map = np.where(labels > 0, ids[np.maximum(labels - 1, 0)] if k else 0, 0).astype(np.int64)
    present = [int(i) for i in np.unique(id_map) if i]
    segments = {i: {"category_id": int(rng.integers(1, 4)), "iscrowd": 0} for i in present}
    return id_map, segments


def _pq(gt, gt_segments, pred, pred_segments):
    metric = PanopticQuality(CATEGORIES)
    metric.update_state(gt, gt_segments, pred, pred_segments)
    return metric.result()


@SETTINGS
@given(gt=panoptic_maps(), pred=panoptic_maps())
def test_pq_sq_rq_lie_in_0_1(gt, pred):
    assume(gt[0].shape == pred[0].shape)
    result = _pq(*gt, *pred)
    for group in ("all", "things", "stuff"):
        for key in ("pq", "sq", "rq"):
            value = result[group][key]
            assert np.isnan(value) if result[group]["n"] == 0 else 0.0 <= value <= 1.0 + 1e-12
    for row in result["per_class"].values():
        assert row["tp"] >= 0 and row["fp"] >= 0 and row["fn"] >= 0


@SETTINGS
@given(gt=panoptic_maps())
def test_a_prediction_equal_to_the_ground_truth_scores_1(gt):
    id_map, segments = gt
    result = _pq(id_map, segments, id_map, segments)
    if not segments:  # all void: nothing to score, every average is over no category
        assert result["all"]["n"] == 0 and np.isnan(result["all"]["pq"])
        return
    assert result["all"]["pq"] == pytest.approx(1.0) and result["all"]["sq"] == pytest.approx(1.0)
    assert all(row["fp"] == row["fn"] == 0 for row in result["per_class"].values())


@SETTINGS
@given(gt=panoptic_maps(), pred=panoptic_maps(), seed=st.integers(0, 2**31 - 1))
def test_pq_does_not_depend_on_segment_ids(gt, pred, seed):
    assume(gt[0].shape == pred[0].shape)
    rng = np.random.default_rng(seed)

    def rename(id_map, segments):
        new = dict(zip(segments, rng.choice(np.arange(1, 2**24), size=len(segments), replace=False).tolist()))
        mapped = np.vectorize(lambda i: new.get(int(i), 0), otypes=[np.int64])(id_map) if id_map.size else id_map
        return mapped, {new[i]: info for i, info in segments.items()}

    first = _pq(*gt, *pred)
    again = _pq(*rename(*gt), *rename(*pred))
    for name, row in first["per_class"].items():
        assert row == pytest.approx(again["per_class"][name], nan_ok=True), name


def test_pq_of_huge_ids_and_a_single_pixel():
    big = 2**24 - 1
    gt = np.array([[big]])
    result = _pq(gt, {big: {"category_id": 3}}, gt, {big: {"category_id": 3}})
    assert result["stuff"]["pq"] == 1.0 and result["things"]["n"] == 0


def test_ops_run_under_tf_function():
    """The box ops trace (no Python control flow on tensor values)."""
    encode = tf.function(lambda a, b: box_ops.decode_boxes(box_ops.encode_boxes(a, b), b))
    b = np.array([[0, 0, 4, 4], [1, 2, 3, 9]], np.float32)
    np.testing.assert_allclose(encode(b, b).numpy(), b, atol=1e-5)
