"""Mask R-CNN on LiteRT's GPU accelerator: only its two NMS ops stay on the CPU, and every GPU
part of the graph gives the CPU's values."""

import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from export import runtime
from export.delegation import gpu_op_support, gpu_summary
from export.tflite import detector_tflite
from kseg.models import build_model

pytestmark = pytest.mark.skipif(
    not Path(runtime.SWIFTSHADER_ICD).exists(),
    reason="LiteRT's GPU accelerator needs SwiftShader here: apt-get install chromium libvulkan1",
)

REPO = Path(__file__).resolve().parents[2]

# In a fresh process (its log is read): the whole graph on the GPU accelerator, whose log lists
# the operators the delegate refuses (an op can compile alone yet be refused inside the graph:
# a TRANSPOSE_CONV with a fused ReLU, a 5-D RESHAPE), then every GPU part alone. The accelerator
# delegates one part of a graph (the largest), so the others are checked as models of their own,
# which is also how they would run split around the NMS ops.
_RUN_ON_GPU = """
import sys
import numpy as np
from ai_edge_litert.compiled_model import CompiledModel
from ai_edge_litert.hardware_accelerator import HardwareAccelerator
from export import runtime
model, image, parts, out = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
result = runtime.gpu_outputs(model, [image])
saved = {f"whole_{i}": a for i, a in enumerate(result["outputs"])}
for p in range(parts):
    inputs = np.load(f"{model}.part{p}.npz")
    compiled = CompiledModel.from_file(f"{model}.part{p}.tflite", hardware_accel=HardwareAccelerator.GPU)
    buffers_in, buffers_out = compiled.create_input_buffers(0), compiled.create_output_buffers(0)
    for i, buffer in enumerate(buffers_in):
        buffer.write(np.atleast_1d(inputs[f"in_{i}"]))
    compiled.run_by_index(0, buffers_in, buffers_out)
    saved[f"part{p}_accelerated"] = compiled.is_fully_accelerated()
    for i, buffer in enumerate(buffers_out):
        expected = inputs[f"out_{i}"]
        saved[f"part{p}_{i}"] = buffer.read(max(expected.size, 1), expected.dtype)[:expected.size].reshape(expected.shape)
np.savez(out, **saved)
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


def _ranked_boxes(outputs):
    """(index of boxes [N, 4], index of their scores [N]) among a part's outputs, or None: the
    top-k candidates a part hands to an NMS op."""
    for i, boxes in enumerate(outputs):
        for j, scores in enumerate(outputs):
            if boxes.shape[-1:] == (4,) and boxes.ndim == 2 and scores.shape == boxes.shape[:1] \
                    and scores.dtype == np.float32:
                return i, j
    return None


def _same_ranked_candidates(got, got_scores, boxes, scores, score_tolerance=2e-3):
    """Top-k boxes [N, 4] and their scores [N] from both devices: the scores agree rank by rank,
    and each GPU box is a CPU box of about the same score. The scores are an untrained RPN's
    logits, all within 0.3 of 0: the GPU's round-off (up to 1e-3 here, the features it reads
    agree to 1e-4) reorders hundreds of near-equal ones, so a box is matched by value, not rank.
    A wrong pick, decode or clip still fails."""
    assert np.all(np.diff(got_scores) <= 0), "GPU scores not ranked"
    np.testing.assert_allclose(got_scores, scores, atol=score_tolerance, rtol=0, err_msg="ranked scores")
    near = np.abs(got_scores[:, None] - scores[None, :]) <= score_tolerance  # [N GPU, N CPU]
    same = np.all(np.abs(got[:, None, :] - boxes[None, :, :]) <= 1e-3 + 1e-4 * np.abs(boxes), axis=-1)
    missing = np.flatnonzero(~np.any(near & same, axis=1))
    # A candidate the GPU ranks past the cut (k) is replaced by the next one: allow one per rank
    # within the tolerance of the last CPU score.
    missing = missing[got_scores[missing] > scores[-1] + score_tolerance]
    assert not missing.size, f"GPU boxes ranked {missing[:5]} are no CPU box of their score: {got[missing[:5]]}"


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

    # The CPU's values of every tensor, and the runs of GPU ops between the NMS ops as models
    # (export.runtime.split_model's GPU parts).
    image = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    content = path.read_bytes()
    parsed = runtime.parse_model(content)
    parts, manifest = runtime.split_model(content, runtime.device_plan(parsed, support))
    runs = [(part, entry) for part, entry in zip(parts, manifest["parts"]) if entry["device"] == "gpu"]
    for p, (part, entry) in enumerate(runs):
        Path(f"{path}.part{p}.tflite").write_bytes(part)
        np.savez(f"{path}.part{p}.npz",
                 **{f"in_{i}": interpreter.get_tensor(t) for i, t in enumerate(entry["inputs"])},
                 **{f"out_{i}": interpreter.get_tensor(t) for i, t in enumerate(entry["outputs"])})

    done = subprocess.run(
        [sys.executable, "-c", _RUN_ON_GPU, str(path), str(tmp_path / "image.npy"), str(len(runs)),
         str(tmp_path / "gpu.npz")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _refused_by_the_delegate(done.stdout + done.stderr) == {"NON_MAX_SUPPRESSION_V4"}
    gpu = np.load(tmp_path / "gpu.npz")

    def agree(got, expected, name):
        if expected.dtype == np.float32:
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)

    for p in range(len(runs)):
        assert gpu[f"part{p}_accelerated"], f"GPU part {p} not fully accelerated"
        reference = np.load(f"{path}.part{p}.npz")
        expected = [reference[f"out_{i}"] for i in range(len([k for k in reference.files if k.startswith("out_")]))]
        got = [gpu[f"part{p}_{i}"] for i in range(len(expected))]
        ranked = _ranked_boxes(expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            if ranked and i == ranked[0]:  # top-k candidates: near-equal scores in the GPU's own order
                _same_ranked_candidates(g, got[ranked[1]], e, expected[ranked[1]])
            elif not ranked or i != ranked[1]:
                agree(g, e, f"GPU part {p}, output {i}")
    detections = None
    for i, d in enumerate(interpreter.get_output_details()):
        expected = interpreter.get_tensor(d["index"])
        agree(gpu[f"whole_{i}"], expected, d["name"])
        if expected.shape == (1,):
            detections = int(expected[0])
    assert detections and detections > 0  # boxes, classes and masks had something to agree on
