"""kseg.ops.roi_align: hand-computed values, a NumPy loop reference of the documented
convention (torchvision's border rule, aligned True and False) for both methods, level
assignment, TFLite builtin export of the gather path, gradients and XLA. The comparison with
torchvision itself is in test_roi_align_torchvision.py."""

import doctest
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from kseg.ops import roi_align as roi_align_module
from kseg.ops.roi_align import METHODS, assign_levels, roi_align


# --- NumPy reference ------------------------------------------------------------------------


def reference_level(box, min_level, max_level, canonical_size, canonical_level):
    """FPN eq. 1 with log2, area in float32 as the op computes it."""
    y1, x1, y2, x2 = np.asarray(box, np.float32)
    area = np.maximum(y2 - y1, np.float32(0)) * np.maximum(x2 - x1, np.float32(0))
    if area <= 0:
        return min_level
    level = math.floor(canonical_level + math.log2(math.sqrt(float(area)) / canonical_size))
    return min(max(level, min_level), max_level)


def reference_points(low, high, stride, n, aligned=True):
    """The documented sample points, in float32 and in the documented order of operations."""
    f = np.float32
    start = f(low) / f(stride) - f(0.5 if aligned else 0.0)
    extent = (f(high) - f(low)) / f(stride)
    if not aligned:
        extent = max(extent, f(1))
    step = extent / f(n)
    return [start + f(j + 0.5) * step for j in range(n)]


def reference_bilinear(feature, y, x):
    """feature [h, w, C] at (y, x), torchvision's rule: 0 outside [-1, h] x [-1, w], else the
    point clamped into [0, h - 1] x [0, w - 1] and read bilinearly."""
    h, w = feature.shape[:2]
    y, x = float(y), float(x)
    if not (-1 <= y <= h and -1 <= x <= w):
        return np.zeros(feature.shape[-1])
    y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
    y0, x0 = math.floor(y), math.floor(x)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    f = feature.astype(np.float64)
    return (
        (1 - ly) * (1 - lx) * f[y0, x0]
        + (1 - ly) * lx * f[y0, x1]
        + ly * (1 - lx) * f[y1, x0]
        + ly * lx * f[y1, x1]
    )


def reference_roi_align(features, boxes, output_size, sampling_ratio, min_level=2, max_level=5,
                        canonical_size=224.0, canonical_level=4, aligned=True):
    """ROI Align by loops over images, boxes, bins and sample points."""
    batch, num_boxes = boxes.shape[:2]
    channels = features[f"P{min_level}"].shape[-1]
    n = output_size * sampling_ratio
    out = np.zeros((batch, num_boxes, output_size, output_size, channels))
    for b in range(batch):
        for k in range(num_boxes):
            y1, x1, y2, x2 = boxes[b, k]
            level = reference_level(
                boxes[b, k], min_level, max_level, canonical_size, canonical_level
            )
            feature = features[f"P{level}"][b]
            ys = reference_points(y1, y2, 2**level, n, aligned)
            xs = reference_points(x1, x2, 2**level, n, aligned)
            for by in range(output_size):
                for bx in range(output_size):
                    total = 0.0
                    for iy in range(sampling_ratio):
                        for ix in range(sampling_ratio):
                            y = ys[by * sampling_ratio + iy]
                            x = xs[bx * sampling_ratio + ix]
                            total = total + reference_bilinear(feature, y, x)
                    out[b, k, by, bx] = total / sampling_ratio**2
    return out


def random_features(image_size, batch, channels, seed=0, levels=(2, 3, 4, 5)):
    rng = np.random.default_rng(seed)
    features = {}
    for l in levels:
        shape = (batch, -(-image_size[0] // 2**l), -(-image_size[1] // 2**l), channels)
        features[f"P{l}"] = rng.uniform(0, 1, size=shape).astype(np.float32)
    return features


def both_methods(features, boxes, **kwargs):
    return {m: roi_align(features, boxes, method=m, **kwargs).numpy() for m in METHODS}


# --- Hand-computed values -------------------------------------------------------------------


def test_docstring_examples_run():
    failures, attempted = doctest.testmod(
        roi_align_module, optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert attempted >= 5 and failures == 0


@pytest.mark.parametrize("method", METHODS)
def test_hand_computed_4x4(method):
    # One level, P2 (stride 4) of a 16 x 16 image: a 4 x 4 map with value f(y, x) = 4y + x.
    # Image coordinate c maps to feature coordinate c / 4 - 0.5.
    feature = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    boxes = np.array(
        [
            [
                # A: y in [0, 3], x in [0, 2] on the map, fully inside.
                [2.0, 2.0, 14.0, 10.0],
                # B: y, x in [1.5, 5.5]: runs past the bottom-right border (size - 1 = 3).
                [8.0, 8.0, 24.0, 24.0],
                # C: y in [-1.5, 0.5], x in [0.5, 2.5]: starts above the map.
                [-4.0, 4.0, 4.0, 12.0],
            ]
        ],
        np.float32,
    )
    kwargs = dict(image_size=(16, 16), output_size=2, min_level=2, max_level=2, method=method)
    sampling_1 = roi_align({"P2": feature}, boxes, sampling_ratio=1, **kwargs).numpy()[0, ..., 0]
    sampling_2 = roi_align({"P2": feature}, boxes, sampling_ratio=2, **kwargs).numpy()[0, ..., 0]
    # A, sampling 1: bins of 1.5 x 1, centres y in {0.75, 2.25}, x in {0.5, 1.5};
    #   f is linear, so bilinear reads it exactly: 4 * 0.75 + 0.5 = 3.5, 4.5, 9.5, 10.5.
    # A, sampling 2: points y in {0.375, 1.125 | 1.875, 2.625}, x in {0.25, 0.75 | 1.25, 1.75};
    #   the mean of a linear f over a bin's points is f at their mean: the same values.
    np.testing.assert_allclose(sampling_1[0], [[3.5, 4.5], [9.5, 10.5]], atol=1e-6)
    np.testing.assert_allclose(sampling_2[0], [[3.5, 4.5], [9.5, 10.5]], atol=1e-6)
    # Points are read when -1 <= y <= 4 and -1 <= x <= 4, clamped into [0, 3] (torchvision).
    # B, sampling 1: bins of 2 x 2, centres y, x in {2.5, 4.5}. (2.5, 2.5) reads
    #   4 * 2.5 + 2.5 = 12.5; every point with 4.5 > 4 lies outside and reads 0.
    np.testing.assert_allclose(sampling_1[1], [[12.5, 0.0], [0.0, 0.0]], atol=1e-6)
    # B, sampling 2: points y, x in {2, 3 | 4, 5}; 4 reads row/column 3, 5 reads 0. Bin (0, 0)
    #   reads pixels 10, 11, 14, 15: 12.5. Bin (0, 1): x = 4 at y = 2, 3 reads 11 and 15, the
    #   x = 5 points 0: 26 / 4 = 6.5. Bin (1, 0): y = 4 reads row 3: (14 + 15) / 4 = 7.25.
    #   Bin (1, 1): only (4, 4) is read, pixel (3, 3): 15 / 4 = 3.75.
    np.testing.assert_allclose(sampling_2[1], [[12.5, 6.5], [7.25, 3.75]], atol=1e-6)
    # C, sampling 1: centres y in {-1, 0}, x in {1, 2}: row -1 is in the band and reads row 0.
    np.testing.assert_allclose(sampling_1[2], [[1.0, 2.0], [1.0, 2.0]], atol=1e-6)
    # C, sampling 2: points y in {-1.25, -0.75 | -0.25, 0.25}, x in {0.75, 1.25 | 1.75, 2.25}.
    #   y = -1.25 reads 0, -0.75 and -0.25 read row 0 (f = x), 0.25 reads 1 + x. Bin (0, 0):
    #   (0.75 + 1.25) / 4 = 0.5, (0, 1): (1.75 + 2.25) / 4 = 1.0, (1, 0): (0.75 + 1.25 + 1.75
    #   + 2.25) / 4 = 1.5, (1, 1): (1.75 + 2.25 + 2.75 + 3.25) / 4 = 2.5.
    np.testing.assert_allclose(sampling_2[2], [[0.5, 1.0], [1.5, 2.5]], atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_hand_computed_4x4_not_aligned(method):
    # aligned=False: image coordinate c maps to c / 4, and each side is at least 1 pixel.
    feature = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    boxes = np.array([[[2.0, 2.0, 14.0, 10.0], [4.0, 4.0, 5.0, 5.0], [8.0, -6.0, 16.0, 2.0]]], np.float32)
    out = roi_align({"P2": feature}, boxes, image_size=(16, 16), output_size=2, sampling_ratio=1,
                    aligned=False, min_level=2, max_level=2, method=method).numpy()[0, ..., 0]
    # A: y from 0.5 over 3 -> centres 1.25, 2.75; x from 0.5 over 2 -> 1, 2: f = 4y + x.
    np.testing.assert_allclose(out[0], [[6.0, 7.0], [12.0, 13.0]], atol=1e-6)
    # B: a 1 x 1 image box is 0.25 level pixels, widened to 1: from 1, centres 1.25, 1.75.
    np.testing.assert_allclose(out[1], [[6.25, 6.75], [8.25, 8.75]], atol=1e-6)
    # C: y from 2 over 2 -> 2.5, 3.5 (clamped to 3); x from -1.5 over 2 -> -1 (column 0), 0.
    np.testing.assert_allclose(out[2], [[10.0, 10.0], [12.0, 12.0]], atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_whole_image_box_on_an_n_by_n_map_is_average_pooling(method):
    # A 56 x 56 image box goes to P2 (56 < 112), a 14 x 14 map; with 7 x 7 bins and 2 x 2
    # samples the points land on the pixel centres 0..13, both borders included.
    features = random_features((56, 56), batch=1, channels=3)
    boxes = np.array([[[0.0, 0.0, 56.0, 56.0]]], np.float32)
    out = roi_align(features, boxes, image_size=(56, 56), method=method).numpy()[0, 0]
    expected = features["P2"][0].reshape(7, 2, 7, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out, expected, atol=1e-6)


# --- Level assignment -----------------------------------------------------------------------


def test_assign_levels_examples():
    boxes = np.array(
        [
            [
                [0, 0, 224, 224],
                [10, 10, 122, 122],  # 112
                [0, 0, 448, 448],
                [0, 0, 2, 2],  # tiny
                [0, 0, 5000, 5000],  # huge
                [0, 0, 0, 0],  # padding
                [50, 50, 40, 60],  # inverted
                [0, 0, 112, 448],  # sqrt(area) = 224
                [0, 0, 223.9, 224],  # just under 224
            ]
        ],
        np.float32,
    )
    levels = assign_levels(boxes).numpy()
    assert levels.dtype == np.int32
    assert levels.tolist() == [[4, 3, 5, 2, 5, 2, 2, 4, 3]]
    clipped = assign_levels(boxes, min_level=3, max_level=4).numpy()
    assert clipped.tolist() == [[4, 3, 4, 3, 4, 3, 3, 4, 3]]


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(
        st.tuples(st.floats(-10, 3000, width=32), st.floats(-10, 3000, width=32)),
        min_size=1,
        max_size=10,
    ),
    canonical_size=st.sampled_from([224.0, 32.0, 100.0]),
)
def test_assign_levels_matches_log_formula(sizes, canonical_size):
    boxes = np.array([[[5.0, 7.0, 5.0 + h, 7.0 + w] for h, w in sizes]], np.float32)
    levels = assign_levels(boxes, 2, 6, canonical_size, 4).numpy()[0]
    expected = [reference_level(b, 2, 6, canonical_size, 4) for b in boxes[0]]
    assert levels.tolist() == expected


# --- Both methods against the reference -----------------------------------------------------


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("output_size, sampling_ratio", [(7, 2), (1, 1), (3, 1), (2, 3)])
def test_methods_match_reference_on_random_boxes(output_size, sampling_ratio, aligned):
    image_size = (96, 128)
    features = random_features(image_size, batch=2, channels=4, seed=1)
    rng = np.random.default_rng(3)
    corner = rng.uniform(-40, 140, size=(2, 40, 2))
    scale = np.exp(rng.uniform(np.log(0.1), np.log(250), size=(2, 40, 1)))
    size = scale * np.exp(rng.uniform(-0.7, 0.7, size=(2, 40, 2)))  # aspect ratios up to 4
    boxes = np.concatenate([corner, corner + size], axis=-1).astype(np.float32)
    boxes[0, -1] = 0  # padding
    boxes[1, -1] = [0, 0, 96, 128]  # the whole image
    kwargs = dict(image_size=image_size, output_size=output_size, sampling_ratio=sampling_ratio,
                  aligned=aligned, canonical_size=28.0)  # spreads these boxes over P2..P5
    expected = reference_roi_align(
        features, boxes, output_size, sampling_ratio, canonical_size=28.0, aligned=aligned
    )
    assert len(set(assign_levels(boxes, canonical_size=28.0).numpy().ravel())) == 4
    for method, out in both_methods(features, boxes, **kwargs).items():
        assert out.shape == expected.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5, err_msg=method)


def _coordinate(limit):
    return st.one_of(
        st.floats(-0.5 * limit, 1.5 * limit, width=32),
        st.integers(-limit // 2, 3 * limit // 2).map(float),
        st.sampled_from([0.0, float(limit), limit - 0.5, 0.5, -2.0]),
    )


def _extent(limit):
    return st.one_of(
        st.floats(0.0, 2.0 * limit, width=32),
        st.sampled_from([0.0, 1e-3, 1e-6, float(limit), 2.0, 4.0]),  # zero-size, tiny, borders
        st.floats(-5.0, 0.0, width=32),  # inverted boxes
    )


@st.composite
def scenes(draw):
    image_size = draw(st.sampled_from([(64, 96), (40, 72), (16, 8), (36, 100)]))
    count = draw(st.integers(1, 6))
    boxes = []
    for _ in range(count):
        y1, x1 = draw(_coordinate(image_size[0])), draw(_coordinate(image_size[1]))
        h, w = draw(_extent(image_size[0])), draw(_extent(image_size[1]))
        boxes.append([y1, x1, y1 + h, x1 + w])
    return image_size, np.array([boxes], np.float32)


@settings(max_examples=150, deadline=None)
@given(
    scene=scenes(),
    shape=st.sampled_from([(2, 2), (3, 1), (1, 2), (2, 1)]),
    canonical_size=st.sampled_from([224.0, 16.0, 8.0]),
    aligned=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_methods_match_reference_on_edge_case_boxes(scene, shape, canonical_size, aligned, seed):
    image_size, boxes = scene
    output_size, sampling_ratio = shape
    features = random_features(image_size, batch=1, channels=2, seed=seed)
    expected = reference_roi_align(
        features, boxes, output_size, sampling_ratio, canonical_size=canonical_size, aligned=aligned
    )
    outputs = both_methods(features, boxes, image_size=image_size, output_size=output_size,
                           sampling_ratio=sampling_ratio, canonical_size=canonical_size, aligned=aligned)
    for method, out in outputs.items():
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5, err_msg=method)


# --- Export, gradients, XLA -----------------------------------------------------------------


class _ROIAlignGather(keras.layers.Layer):
    def __init__(self, image_size, **kwargs):
        self.options = {k: kwargs.pop(k) for k in ("aligned", "sampling_ratio", "max_sampling_ratio")}
        super().__init__(**kwargs)
        self.image_size = image_size

    def call(self, inputs):
        *levels, boxes = inputs
        features = {f"P{l}": f for l, f in zip(range(2, 6), levels)}
        return roi_align(features, boxes, image_size=self.image_size, method="gather", **self.options)


@pytest.mark.parametrize("aligned, sampling_ratio, max_sampling_ratio", [(True, 2, None), (False, -1, 3)])
def test_gather_method_converts_to_tflite_builtins(aligned, sampling_ratio, max_sampling_ratio):
    from ai_edge_litert.interpreter import Interpreter

    image_size, num_boxes, channels = (64, 96), 20, 8
    options = dict(aligned=aligned, sampling_ratio=sampling_ratio, max_sampling_ratio=max_sampling_ratio)
    features = random_features(image_size, batch=1, channels=channels, seed=4)
    inputs = [keras.Input(f.shape[1:], batch_size=1, name=k) for k, f in features.items()]
    inputs.append(keras.Input((num_boxes, 4), batch_size=1, name="boxes"))
    model = keras.Model(inputs, _ROIAlignGather(image_size, **options)(inputs))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # fails on Flex ops
    content = converter.convert()

    rng = np.random.default_rng(5)
    corner = rng.uniform(-20, 100, size=(1, num_boxes, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0, 80, size=(1, num_boxes, 2))], -1)
    boxes = boxes.astype(np.float32)
    boxes[0, 0] = 0
    values = [*features.values(), boxes]
    expected = roi_align(features, boxes, image_size=image_size, method="crop_and_resize", **options).numpy()
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        match = [v for v in values if v.shape == tuple(detail["shape"])]
        interpreter.set_tensor(detail["index"], match[0])
    interpreter.invoke()
    actual = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert actual.shape == (1, num_boxes, 7, 7, channels)
    np.testing.assert_allclose(actual, model(values).numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def _feature_gradients(method, features, boxes, image_size, upstream):
    variables = {k: tf.constant(v) for k, v in features.items()}
    with tf.GradientTape() as tape:
        tape.watch(variables)
        out = roi_align(variables, boxes, image_size=image_size, method=method, canonical_size=56.0)
        loss = tf.reduce_sum(out * upstream)
    return tape.gradient(loss, variables)


def test_gradients_flow_to_features_and_match_between_methods():
    image_size = (64, 96)
    features = random_features(image_size, batch=2, channels=3, seed=6)
    rng = np.random.default_rng(7)
    corner = rng.uniform(-10, 60, size=(2, 30, 2))
    size = rng.uniform(1, 120, size=(2, 30, 2))
    boxes = np.concatenate([corner, corner + size], -1).astype(np.float32)
    upstream = rng.normal(size=(2, 30, 7, 7, 3)).astype(np.float32)
    used_levels = set(assign_levels(boxes, canonical_size=56.0).numpy().ravel())
    grads = {m: _feature_gradients(m, features, boxes, image_size, upstream) for m in METHODS}
    for level in range(2, 6):
        key = f"P{level}"
        crop = grads["crop_and_resize"][key]
        assert crop is not None
        crop = tf.convert_to_tensor(crop).numpy()
        assert crop.shape == features[key].shape
        assert (np.abs(crop).max() > 0) == (level in used_levels)
        gather = tf.convert_to_tensor(grads["gather"][key]).numpy()
        np.testing.assert_allclose(crop, gather, rtol=0, atol=1e-4)
    assert len(used_levels) >= 3


@pytest.mark.parametrize("method", METHODS)
def test_overlapping_boxes_add_their_whole_gradient(method):
    # TensorFlow's own CPU gradient of crop_and_resize loses updates when boxes overlap (its
    # threads add into the same pixels unsynchronised): 4000 copies of one box must give
    # exactly 4000 times the gradient of one, and the same result on every run.
    image_size = (64, 64)
    features = random_features(image_size, batch=1, channels=32, seed=9)
    one_box = np.array([[[3.0, 5.0, 40.0, 52.0]]], np.float32)
    upstream = np.random.default_rng(10).normal(size=(1, 1, 7, 7, 32)).astype(np.float32)
    copies = 4000
    single = _feature_gradients(method, features, one_box, image_size, upstream)
    many = [
        _feature_gradients(
            method, features, np.repeat(one_box, copies, axis=1), image_size,
            np.repeat(upstream, copies, axis=1),
        )
        for _ in range(2)
    ]
    level = f"P{int(assign_levels(one_box, canonical_size=56.0)[0, 0])}"
    expected = copies * tf.convert_to_tensor(single[level]).numpy()
    assert np.abs(expected).max() > 100
    for grads in many:
        actual = tf.convert_to_tensor(grads[level]).numpy()
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())
    np.testing.assert_array_equal(
        tf.convert_to_tensor(many[0][level]).numpy(), tf.convert_to_tensor(many[1][level]).numpy()
    )


def test_gather_method_compiles_with_xla():
    image_size = (64, 96)
    features = random_features(image_size, batch=2, channels=3, seed=8)
    boxes = np.array([[[0, 0, 30, 40], [10, 5, 60, 90], [0, 0, 0, 0]]], np.float32)
    boxes = np.tile(boxes, (2, 1, 1))
    compiled = tf.function(lambda f, b: roi_align(f, b, image_size=image_size, method="gather"),
                           jit_compile=True)
    eager = roi_align(features, boxes, image_size=image_size, method="crop_and_resize").numpy()
    np.testing.assert_allclose(compiled(features, boxes).numpy(), eager, rtol=0, atol=1e-5)


def test_crop_and_resize_method_under_xla_runs_the_gather_path():
    """TF has no XLA kernel for CropAndResize: compiled by XLA, method "crop_and_resize" (the
    training default) gathers instead, with the same values and feature gradient, so a Keras
    model compiled with jit_compile=True needs no other setting."""
    image_size = (32, 32)
    features = {k: tf.constant(v) for k, v in random_features(image_size, batch=1, channels=2, seed=9).items()}
    boxes = tf.constant([[[0, 0, 30, 20], [4, 4, 8, 8], [2, 3, 12, 7]]], tf.float32)

    def pooled_and_gradient(features, boxes):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = roi_align(features, boxes, image_size=image_size)
            loss = tf.reduce_sum(out * out)
        return out, tape.gradient(loss, features)

    got, got_gradient = tf.function(pooled_and_gradient, jit_compile=True)(features, boxes)
    want, want_gradient = pooled_and_gradient(features, boxes)  # eager: tf.image.crop_and_resize
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-5)
    for key in want_gradient:
        np.testing.assert_allclose(got_gradient[key].numpy(), want_gradient[key].numpy(), rtol=0, atol=1e-4)
