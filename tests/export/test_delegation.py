"""export.delegation: LiteRT's GPU accelerator compiled op by op."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from export import runtime
from export.delegation import FOLDED, gpu_op_support, gpu_summary

pytestmark = pytest.mark.skipif(
    not Path(runtime.SWIFTSHADER_ICD).exists(),
    reason="LiteRT's GPU accelerator needs SwiftShader here: apt-get install chromium libvulkan1",
)


def _conv_then_nms():
    kernel = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 3, 4)), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec((1, 8, 8, 3), tf.float32)])
    def graph(x):
        y = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
        boxes = tf.reshape(y, (64, 4))
        scores = tf.reshape(y[..., 0], (64,))
        keep, valid = tf.raw_ops.NonMaxSuppressionV4(
            boxes=boxes, scores=scores, max_output_size=5, iou_threshold=0.5,
            score_threshold=float("-inf"), pad_to_max_output_size=True)
        return keep, valid

    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def test_conv_is_taken_and_nms_is_left_to_the_cpu(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(_conv_then_nms())
    support = runtime.in_subprocess(gpu_op_support, str(path), timeout=600)
    verdict = {r["op"]: r["gpu"] for r in support}
    assert verdict["CONV_2D"] is True
    assert verdict["NON_MAX_SUPPRESSION_V4"] is False
    assert [r["index"] for r in support] == list(range(len(support)))
    summary = gpu_summary(support)
    assert summary["ops"] == len(support) and 0 < summary["gpu_ops"] < len(support)
    assert summary["cpu_op_types"].get("NON_MAX_SUPPRESSION_V4") == 1 and "CONV_2D" not in summary["cpu_op_types"]
    assert summary["crossings"] >= 1  # the convolution on the GPU hands its result to the CPU's NMS


def test_fp16_weights_are_folded_into_the_ops_that_read_them(tmp_path):
    # Alone, a CONV_2D whose weights come from a DEQUANTIZE reads them as an input, which the
    # GPU accelerator refuses; in the whole fp16 graph it folds them and takes the convolution.
    kernel = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 3, 4)), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec((1, 8, 8, 3), tf.float32)])
    def graph(x):
        return tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    path = tmp_path / "fp16.tflite"
    path.write_bytes(converter.convert())
    support = runtime.in_subprocess(gpu_op_support, str(path), timeout=600)
    ops = [r["op"] for r in support]
    assert "DEQUANTIZE" in ops and "CONV_2D" in ops
    assert all(r["gpu"] is True for r in support), support
    assert all(r["reason"] == FOLDED for r in support if r["op"] == "DEQUANTIZE")
    assert gpu_summary(support)["crossings"] == 0


def test_crossings_count_each_change_of_device_in_execution_order():
    ops = lambda *placements: [{"index": i, "op": "OP" if g else "CPU_OP", "gpu": g}  # noqa: E731
                               for i, g in enumerate(placements)]
    assert gpu_summary(ops(True, True, True))["crossings"] == 0
    assert gpu_summary(ops(True, True, False, None))["crossings"] == 1  # not tried counts as the CPU
    assert gpu_summary(ops(True, False, True, False))["crossings"] == 3
    assert gpu_summary(ops(False, True, False))["cpu_op_types"] == {"CPU_OP": 2}
