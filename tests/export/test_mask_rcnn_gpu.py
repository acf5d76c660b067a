"""Mask R-CNN on LiteRT's GPU accelerator: only its two NMS ops stay on the CPU, and the GPU
run gives the CPU's outputs."""

import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from export import runtime
from export.delegation import gpu_op_support, gpu_summary
from export.tflite import detector_tflite
from kseg.models import build_model

pytestmark = pytest.mark.skipif(
    not Path(runtime.SWIFTSHADER_ICD).exists(),
    reason="LiteRT's GPU accelerator needs SwiftShader here: apt-get install chromium libvulkan1",
)

REPO = Path(__file__).resolve().parents[2]

# Runs the whole graph on the GPU accelerator in a fresh process: its log holds the delegate's own
# list of the operators it refuses (an op can compile alone yet be refused inside the graph, e.g.
# a TRANSPOSE_CONV with a fused ReLU or a 5-D RESHAPE).
_RUN_ON_GPU = """
import sys
import numpy as np
from export import runtime
result = runtime.gpu_outputs(sys.argv[1], [np.load(sys.argv[2])])
np.savez(sys.argv[3], *result["outputs"], fully_accelerated=result["fully_accelerated"])
"""


def _refused_by_the_delegate(log):
    """Op names of the delegate's "Following operations are not supported" list in `log`."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if "operations are not supported by GPU delegate" in line]
    assert starts, f"no refusal list in the GPU accelerator's log:\n{log[-3000:]}"
    refused = set()
    for line in lines[starts[0] + 1:]:
        match = re.match(r"([A-Z][A-Z0-9_]+): ", line)
        if not match:
            break
        refused.add(match.group(1))
    return refused


def test_small_mask_rcnn_fp32_leaves_only_the_two_nms_ops_on_the_cpu(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("mask_rcnn", "small", num_classes=3, input_shape=(64, 64, 3))
    path = tmp_path / "mask_rcnn.tflite"
    path.write_bytes(detector_tflite(model, "fp32"))

    support = runtime.in_subprocess(gpu_op_support, str(path), timeout=600)
    summary = gpu_summary(support)
    # Backbone, FPN, RPN, box selection around the NMS ops, ROI Align, heads and mask pasting on
    # the GPU; the proposals' NMS and the detections' NMS on the CPU: out and back for each.
    assert summary["cpu_op_types"] == {"NON_MAX_SUPPRESSION_V4": 2}
    assert summary["crossings"] == 4
    assert summary["gpu_ops"] == summary["ops"] - 2

    image = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    done = subprocess.run(
        [sys.executable, "-c", _RUN_ON_GPU, str(path), str(tmp_path / "image.npy"), str(tmp_path / "gpu.npz")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _refused_by_the_delegate(done.stdout + done.stderr) == {"NON_MAX_SUPPRESSION_V4"}

    with runtime.Runner(str(path), accelerator="cpu") as runner:
        cpu = runner.run(image)
        names = [d["name"] for d in runner.outputs]
    gpu = np.load(tmp_path / "gpu.npz")
    assert not gpu["fully_accelerated"]  # the NMS ops
    detections = None
    for i, (name, expected) in enumerate(zip(names, cpu)):
        got = gpu[f"arr_{i}"]
        if expected.dtype == np.float32:
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)
        if expected.shape == (1,):
            detections = int(expected[0])
    assert detections and detections > 0  # boxes, classes and masks had something to agree on
