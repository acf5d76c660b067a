"""kseg.ops.roi_align against torchvision.ops.roi_align: outputs and feature gradients of the
three paths (crop_and_resize, gather, and the training default compiled by XLA) for
aligned True and False, sampling ratio 2 and the adaptive ratio, on boxes inside, on, across
and outside the image borders.

The default suite compares against tests/fixtures/roi_align_torchvision.npz, written by
tests/reference/make_roi_align_fixtures.py. The `reference` test reruns that script with
other boxes and compares live; it needs a Python with torch and torchvision: this one, or
the one named by KSEG_REFERENCE_PYTHON (e.g. an environment without TensorFlow).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kseg.ops.roi_align import assign_levels, roi_align

HERE = Path(__file__).resolve().parents[1]  # tests/
FIXTURE = HERE / "fixtures" / "roi_align_torchvision.npz"
SCRIPT = HERE / "reference" / "make_roi_align_fixtures.py"
CASES = ("p2", "pyramid")
VARIANTS = [(True, 2), (True, -1), (False, 2), (False, -1)]
PATHS = ("crop_and_resize", "gather", "xla")
TOLERANCE = 1e-5


def load_case(data, case):
    """The arrays of one case of a fixture file, as roi_align's arguments."""
    prefix = f"{case}/features/"
    features = {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
    levels = sorted(int(k[1:]) for k in features)
    return dict(
        features=features, boxes=data[f"{case}/boxes"], levels=data[f"{case}/levels"],
        upstream=data[f"{case}/upstream"], min_level=levels[0], max_level=levels[-1],
        image_size=tuple(int(v) for v in data[f"{case}/image_size"]),
        output_size=int(data[f"{case}/output_size"]), canonical_size=float(data[f"{case}/canonical_size"]),
    )


def pooled_and_gradient(case, path, aligned, sampling_ratio, max_sampling_ratio=None):
    """kseg's output [B, N, S, S, C] and gradient of sum(output * upstream) per level."""
    features = {k: tf.constant(v) for k, v in case["features"].items()}
    kwargs = dict(image_size=case["image_size"], output_size=case["output_size"], sampling_ratio=sampling_ratio,
                  aligned=aligned, max_sampling_ratio=max_sampling_ratio, min_level=case["min_level"],
                  max_level=case["max_level"], canonical_size=case["canonical_size"],
                  method="gather" if path == "gather" else "crop_and_resize")

    def run(features, boxes, upstream):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = roi_align(features, boxes, **kwargs)
            loss = tf.reduce_sum(out * upstream)
        return out, {k: tf.convert_to_tensor(g) for k, g in tape.gradient(loss, features).items()}

    if path == "xla":  # the training default, compiled: runs the gather implementation
        run = tf.function(run, jit_compile=True)
    out, gradients = run(features, tf.constant(case["boxes"]), tf.constant(case["upstream"]))
    return out.numpy(), {k: g.numpy() for k, g in gradients.items()}


def errors(data, name, path, aligned, sampling_ratio, max_sampling_ratio=None):
    """(max |output - torchvision|, max |gradient - torchvision| over the levels)."""
    case = load_case(data, name)
    key = f"{name}/aligned{int(aligned)}_ratio{sampling_ratio}"
    if sampling_ratio <= 0 and max_sampling_ratio is None:
        max_sampling_ratio = int(data[f"{key}/max_grid"])
    out, gradients = pooled_and_gradient(case, path, aligned, sampling_ratio, max_sampling_ratio)
    output_error = np.abs(out - data[f"{key}/output"]).max()
    gradient_error = max(np.abs(g - data[f"{key}/gradient/{k}"]).max() for k, g in gradients.items())
    return output_error, gradient_error


@pytest.fixture(scope="module")
def fixture_data():
    return np.load(FIXTURE)


@pytest.mark.parametrize("name", CASES)
def test_fixture_levels_are_kseg_levels(fixture_data, name):
    case = load_case(fixture_data, name)
    levels = assign_levels(case["boxes"], case["min_level"], case["max_level"], case["canonical_size"])
    np.testing.assert_array_equal(levels.numpy(), case["levels"])
    assert set(case["levels"].ravel()) == set(range(case["min_level"], case["max_level"] + 1))


@pytest.mark.parametrize("name", CASES)
def test_fixture_boxes_are_inside_on_across_and_outside_the_borders(fixture_data, name):
    case = load_case(fixture_data, name)
    h, w = case["image_size"]
    y1, x1, y2, x2 = np.moveaxis(case["boxes"].reshape(-1, 4), -1, 0)
    inside = (y1 > 0) & (x1 > 0) & (y2 < h) & (x2 < w) & (y2 > y1) & (x2 > x1)
    on = (y1 == 0) | (x1 == 0) | (y2 == h) | (x2 == w)
    across = ((y1 < 0) & (y2 > 0)) | ((x1 < 0) & (x2 > 0)) | ((y1 < h) & (y2 > h)) | ((x1 < w) & (x2 > w))
    outside = (y2 < 0) | (x2 < 0) | (y1 > h) | (x1 > w)
    assert min(inside.sum(), on.sum(), across.sum(), outside.sum()) >= 3


# XLA compiles each variant for 8-18 s: it runs every fixed-ratio variant and one adaptive one
# (the implementation it compiles is the eager "gather" path, which runs them all).
COMPARISONS = [(name, aligned, ratio, path) for name in CASES for aligned, ratio in VARIANTS for path in PATHS
               if path != "xla" or ratio > 0 or (name, aligned) == ("p2", False)]


@pytest.mark.parametrize("name, aligned, sampling_ratio, path", COMPARISONS)
def test_output_and_gradient_equal_torchvision(fixture_data, name, aligned, sampling_ratio, path):
    output_error, gradient_error = errors(fixture_data, name, path, aligned, sampling_ratio)
    assert output_error <= TOLERANCE, f"output differs by {output_error}"
    assert gradient_error <= TOLERANCE, f"gradient differs by {gradient_error}"


def test_adaptive_ratio_is_torchvisions_up_to_its_cap(fixture_data):
    needed = int(fixture_data["p2/aligned1_ratio-1/max_grid"])
    assert needed >= 2
    # A larger cap changes nothing; a smaller one samples the largest boxes with fewer points.
    assert max(errors(fixture_data, "p2", "gather", True, -1, needed + 2)) <= TOLERANCE
    assert errors(fixture_data, "p2", "gather", True, -1, needed - 1)[0] > 1e-3


def _reference_python():
    if importlib.util.find_spec("torch") and importlib.util.find_spec("torchvision"):
        return sys.executable
    return os.environ.get("KSEG_REFERENCE_PYTHON")


@pytest.mark.reference
def test_output_and_gradient_equal_torchvision_live(tmp_path):
    python = _reference_python()
    if not python:
        pytest.skip("torch and torchvision are not installed here and KSEG_REFERENCE_PYTHON is not set")
    output = tmp_path / "roi_align.npz"
    subprocess.run([python, str(SCRIPT), "--seed", "1000", "--output", str(output)], check=True,
                   capture_output=True, timeout=600)
    data = np.load(output)
    for name in CASES:
        for aligned, sampling_ratio in VARIANTS:
            for path in PATHS:
                output_error, gradient_error = errors(data, name, path, aligned, sampling_ratio)
                assert max(output_error, gradient_error) <= TOLERANCE, (name, aligned, sampling_ratio, path)
