"""Mask R-CNN on LiteRT's GPU accelerator: only its two NMS ops stay on the CPU, and the GPU
run gives the CPU's outputs."""

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
    with runtime.Runner(str(path), accelerator="cpu") as runner:
        cpu = runner.run(image)
        names = [d["name"] for d in runner.outputs]
    gpu = runtime.in_subprocess(runtime.gpu_outputs, str(path), [image], timeout=600)

    assert not gpu["fully_accelerated"]  # the NMS ops
    detections = None
    for name, expected, got in zip(names, cpu, gpu["outputs"]):
        if expected.dtype == np.float32:
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)
        if expected.shape == (1,):
            detections = int(expected[0])
    assert detections and detections > 0  # boxes, classes and masks had something to agree on
