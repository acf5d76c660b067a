"""kseg.ops.boxes against NumPy references written out here, plus a builtin-ops TFLite check."""

import doctest
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from kseg.ops import boxes as box_ops
from kseg.ops.boxes import (
    anchor_boxes,
    anchor_counts,
    box_areas,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    iou_matrix,
)

STRIDES = (4, 8, 16, 32, 64)
SIZES = (32, 64, 128, 256, 512)
RATIOS = (0.5, 1.0, 2.0)


def reference_anchors(image_size, strides, sizes, ratios, scales):
    """Anchors by explicit loops in the documented order (level, y, x, scale, ratio)."""
    rows = []
    for stride, size in zip(strides, sizes):
        for y in range(math.ceil(image_size[0] / stride)):
            for x in range(math.ceil(image_size[1] / stride)):
                for scale in scales:
                    for ratio in ratios:
                        cy, cx = (y + 0.5) * stride, (x + 0.5) * stride
                        h = size * scale * math.sqrt(ratio)
                        w = size * scale / math.sqrt(ratio)
                        rows.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    return np.array(rows)


def reference_iou(a, b):
    """IoU by a double loop over [N, 4] x [M, 4]."""
    out = np.zeros((len(a), len(b)))
    for i, (ay1, ax1, ay2, ax2) in enumerate(a.astype(np.float64)):
        for j, (by1, bx1, by2, bx2) in enumerate(b.astype(np.float64)):
            inter_h = max(0.0, min(ay2, by2) - max(ay1, by1))
            inter = inter_h * max(0.0, min(ax2, bx2) - max(ax1, bx1))
            area_a = max(0.0, ay2 - ay1) * max(0.0, ax2 - ax1)
            area_b = max(0.0, by2 - by1) * max(0.0, bx2 - bx1)
            union = area_a + area_b - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def random_boxes(rng, shape, low=-20.0, high=120.0, max_size=80.0):
    corner = rng.uniform(low, high, size=shape + (2,))
    size = rng.uniform(0.5, max_size, size=shape + (2,))
    return np.concatenate([corner, corner + size], axis=-1).astype(np.float32)


coordinate = st.floats(-50.0, 150.0, width=32)
box = st.tuples(coordinate, coordinate, coordinate, coordinate)
sized_box = st.tuples(
    coordinate, coordinate, st.floats(0.5, 200.0, width=32), st.floats(0.5, 200.0, width=32)
).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))


def test_docstring_examples_run():
    failures, attempted = doctest.testmod(box_ops, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted >= 6 and failures == 0


@pytest.mark.parametrize("image_size", [(64, 64), (100, 75), (33, 130)])
@pytest.mark.parametrize("scales", [(1.0,), (1.0, 2 ** (1 / 3), 2 ** (2 / 3))])
def test_anchor_boxes_match_loops(image_size, scales):
    anchors = anchor_boxes(image_size, STRIDES, SIZES, RATIOS, scales)
    expected = reference_anchors(image_size, STRIDES, SIZES, RATIOS, scales)
    assert anchors.dtype == np.float32 and anchors.shape == expected.shape
    np.testing.assert_allclose(anchors, expected, rtol=0, atol=1e-4)
    counts = anchor_counts(image_size, STRIDES, RATIOS, scales)
    assert sum(counts) == len(anchors)


def test_anchor_counts_and_geometry_for_512():
    anchors = anchor_boxes((512, 512))
    counts = anchor_counts((512, 512))
    assert counts == [128 * 128 * 3, 64 * 64 * 3, 32 * 32 * 3, 16 * 16 * 3, 8 * 8 * 3]
    assert len(anchors) == sum(counts) == 65472
    h = anchors[:, 2] - anchors[:, 0]
    w = anchors[:, 3] - anchors[:, 1]
    level_size = np.repeat(SIZES, counts)
    np.testing.assert_allclose(np.sqrt(h * w), level_size, rtol=1e-5)
    np.testing.assert_allclose(h / w, np.tile(RATIOS, len(anchors) // 3), rtol=1e-5)
    # First cell of P2 is centred on (2, 2); the last P6 cell (7, 7) on (480, 480).
    centres = np.stack([anchors[:, 0] + anchors[:, 2], anchors[:, 1] + anchors[:, 3]], 1) / 2
    np.testing.assert_allclose(centres[:3], [[2, 2]] * 3)
    np.testing.assert_allclose(centres[-3:], [[480, 480]] * 3)
    # Row-major: the 4th anchor of P2 is cell (0, 1), the cell after a full row is (1, 0).
    np.testing.assert_allclose(centres[3], [2, 6])
    np.testing.assert_allclose(centres[128 * 3], [6, 2])


def test_anchor_arguments_are_validated():
    with pytest.raises(ValueError, match="one entry per level"):
        anchor_boxes((64, 64), strides=(4, 8), sizes=(32,))
    with pytest.raises(ValueError, match="positive Python ints"):
        anchor_boxes((64.0, 64))


def test_encode_matches_formula():
    rng = np.random.default_rng(0)
    boxes, anchors = random_boxes(rng, (50,)), random_boxes(rng, (50,))
    weights = (10.0, 10.0, 5.0, 5.0)
    b, a = boxes.astype(np.float64), anchors.astype(np.float64)
    bh, bw, ah, aw = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1], a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    expected = np.stack(
        [
            10 * ((b[:, 0] + b[:, 2]) - (a[:, 0] + a[:, 2])) / 2 / ah,
            10 * ((b[:, 1] + b[:, 3]) - (a[:, 1] + a[:, 3])) / 2 / aw,
            5 * np.log(bh / ah),
            5 * np.log(bw / aw),
        ],
        axis=-1,
    )
    actual = encode_boxes(boxes, anchors, weights)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    boxes=st.lists(sized_box, min_size=1, max_size=8),
    anchor=sized_box,
    weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
)
def test_decode_inverts_encode(boxes, anchor, weights):
    boxes = np.array(boxes, np.float32)
    anchors = np.array([anchor], np.float32)  # broadcasts over the boxes
    deltas = encode_boxes(boxes, anchors, weights)
    decoded = decode_boxes(deltas, anchors, weights, clip=math.inf).numpy()
    np.testing.assert_allclose(decoded, boxes, rtol=0, atol=2e-3)


def test_decode_clips_log_sizes_and_broadcasts_over_batch():
    anchors = np.array([[0.0, 0.0, 16.0, 16.0], [10.0, 10.0, 20.0, 30.0]], np.float32)
    deltas = np.zeros((3, 2, 4), np.float32)
    deltas[1, :, 2:] = 1e4  # would overflow exp() without the clip
    deltas[2, 0] = [0.5, -0.25, 0.0, math.log(2.0)]
    decoded = decode_boxes(deltas, anchors).numpy()
    assert decoded.shape == (3, 2, 4) and np.isfinite(decoded).all()
    np.testing.assert_allclose(decoded[0], anchors, atol=1e-5)
    np.testing.assert_allclose(decoded[1, 0], [8 - 500, 8 - 500, 8 + 500, 8 + 500], rtol=1e-5)
    # centre (8, 8) moves by (0.5 * 16, -0.25 * 16) to (16, 4); width doubles to 32.
    np.testing.assert_allclose(decoded[2, 0], [8.0, -12.0, 24.0, 20.0], atol=1e-4)


def test_degenerate_boxes_stay_finite():
    zeros = np.zeros((4, 4), np.float32)
    inverted = np.array([[10.0, 10.0, 5.0, 5.0]], np.float32)
    anchors = anchor_boxes((64, 64))[:4]
    assert np.isfinite(encode_boxes(zeros, anchors)).all()
    assert np.isfinite(encode_boxes(inverted, anchors[:1])).all()
    assert np.isfinite(encode_boxes(anchors, zeros)).all()
    assert np.isfinite(decode_boxes(np.zeros((4, 4), np.float32), zeros)).all()
    iou = iou_matrix(np.concatenate([zeros, inverted]), np.concatenate([zeros, anchors])).numpy()
    assert np.isfinite(iou).all() and (iou == 0).all()


@settings(max_examples=60, deadline=None)
@given(a=st.lists(box, min_size=1, max_size=6), b=st.lists(box, min_size=1, max_size=6))
def test_iou_matches_loops(a, b):
    a, b = np.array(a, np.float32), np.array(b, np.float32)
    iou = iou_matrix(a, b).numpy()
    assert iou.shape == (len(a), len(b))
    np.testing.assert_allclose(iou, reference_iou(a, b), rtol=0, atol=1e-5)


def test_iou_broadcasts_batch_dims():
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, (3, 5)), random_boxes(rng, (7,))
    iou = iou_matrix(a, b).numpy()
    assert iou.shape == (3, 5, 7)
    for i in range(3):
        np.testing.assert_allclose(iou[i], reference_iou(a[i], b), atol=1e-6)
    np.testing.assert_allclose(iou_matrix(b[None], a).numpy()[1], reference_iou(b, a[1]), atol=1e-6)
    np.testing.assert_allclose(np.diagonal(iou_matrix(a, a).numpy(), axis1=1, axis2=2), 1.0)


def test_clip_boxes_and_areas():
    boxes = np.array([[-5, -1, 10, 70], [3, 4, 5, 6], [40, 80, 50, 90]], np.float32)
    np.testing.assert_array_equal(
        clip_boxes(boxes, (32, 64)), [[0, 0, 10, 64], [3, 4, 5, 6], [32, 64, 32, 64]]
    )
    np.testing.assert_array_equal(box_areas(boxes), [15 * 71, 4, 100])
    np.testing.assert_array_equal(box_areas(clip_boxes(boxes, (32, 64))), [640, 4, 0])


class _DecodeClipIoU(keras.layers.Layer):
    """decode -> clip -> IoU against given boxes, the RPN/box-head post-processing math."""

    def __init__(self, anchors, image_size, **kwargs):
        super().__init__(**kwargs)
        self.anchors = anchors
        self.image_size = image_size

    def call(self, inputs):
        deltas, gt_boxes = inputs
        decoded = decode_boxes(deltas, self.anchors, (10.0, 10.0, 5.0, 5.0))
        decoded = clip_boxes(decoded, self.image_size)
        return decoded, iou_matrix(decoded, gt_boxes), box_areas(decoded)


def test_tflite_builtin_ops_parity():
    from ai_edge_litert.interpreter import Interpreter

    image_size = (64, 48)
    anchors = anchor_boxes(image_size, strides=(16, 32), sizes=(32, 64))
    deltas_in = keras.Input((len(anchors), 4), batch_size=1)
    boxes_in = keras.Input((5, 4), batch_size=1)
    outputs = _DecodeClipIoU(anchors, image_size)([deltas_in, boxes_in])
    model = keras.Model([deltas_in, boxes_in], list(outputs))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    content = converter.convert()

    rng = np.random.default_rng(2)
    deltas = rng.normal(0.0, 2.0, size=(1, len(anchors), 4)).astype(np.float32)
    deltas[0, :3] = [0, 0, 100, -100]  # hits the clip
    gt = random_boxes(rng, (1, 5), 0, 40, 30)
    gt[0, 0] = 0  # a padded ground-truth box
    expected = [t.numpy() for t in model([deltas, gt])]

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        value = deltas if tuple(detail["shape"]) == deltas.shape else gt
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    actual = {
        tuple(d["shape"]): interpreter.get_tensor(d["index"])
        for d in interpreter.get_output_details()
    }
    for want in expected:
        got = actual[want.shape]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert expected[1].max() > 0.1  # some overlaps exist, the IoU check is not vacuous
