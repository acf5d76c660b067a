"""export.runtime.partition: a model cut into GPU and CPU parts runs as the whole model does."""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from export import runtime
from export.runtime.partition import (
    PartitionedRunner, device_plan, folded_dequantize_ops, read_partitioned, split_model, write_partitioned,
)
from export.tflite import detector_tflite
from kseg.models import build_model

REPO = Path(__file__).resolve().parents[2]
needs_gpu = pytest.mark.skipif(
    not Path(runtime.SWIFTSHADER_ICD).exists(),
    reason="LiteRT's GPU accelerator needs SwiftShader here: apt-get install chromium libvulkan1",
)

# In a fresh process (its log is read, and a GPU crash cannot take pytest down): the package
# with its GPU parts on LiteRT's GPU accelerator.
_RUN_ON_GPU = """
import sys
import numpy as np
from export import runtime
runtime.enable_gpu_emulation()
folder, image, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
with runtime.PartitionedRunner(folder, accelerator="gpu") as runner:
    outputs = runner.run(image)
    accelerated = runner.parts_fully_accelerated
np.savez(out, accelerated=np.array(accelerated), **{f"out_{i}": a for i, a in enumerate(outputs)})
"""


@pytest.fixture(scope="module")
def mask_rcnn(tmp_path_factory):
    """A tiny untrained Mask R-CNN at 64 x 64: {"fp32": bytes, "fp16": bytes, "image": [1, 64, 64, 3]}."""
    keras.utils.set_random_seed(0)
    model = build_model("mask_rcnn", "small", num_classes=3, input_shape=(64, 64, 3))
    image = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    return {"fp32": detector_tflite(model, "fp32"), "fp16": detector_tflite(model, "fp16"), "image": image}


def _cpu_outputs(content, image):
    with runtime.Runner(content, accelerator="cpu") as runner:
        return runner.run(image)


@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_mask_rcnn_parts_around_the_nms_ops_give_the_whole_models_cpu_outputs(mask_rcnn, variant, tmp_path):
    content = mask_rcnn[variant]
    model = runtime.parse_model(content)
    parts, manifest = split_model(content, device_plan(model))
    folder = write_partitioned(tmp_path / "pkg", parts, manifest)

    # GPU network, CPU NMS (proposals), GPU ROI Align and box head, CPU NMS (detections), GPU masks.
    assert [p["device"] for p in manifest["parts"]] == ["gpu", "cpu", "gpu", "cpu", "gpu"]
    names = [runtime.op_name(model, model.subgraphs[0].operators[p["ops"][0]]) for p in manifest["parts"][1::2]]
    assert names == ["NON_MAX_SUPPRESSION_V4"] * 2
    folded = folded_dequantize_ops(model, content)
    assert bool(folded) == (variant == "fp16")
    ops = [i for p in manifest["parts"] for i in p["ops"]]
    assert ops == [i for i in range(len(model.subgraphs[0].operators)) if i not in folded]
    given = {d["index"] for d in manifest["inputs"]}  # every part reads what the input or earlier parts give
    for p in manifest["parts"]:
        assert set(p["inputs"]) <= given, p
        given |= set(p["outputs"])
    assert {d["index"] for d in manifest["outputs"]} <= given

    expected = _cpu_outputs(content, mask_rcnn["image"])
    with PartitionedRunner(folder, accelerator="cpu") as runner:
        assert [d["name"] for d in runner.outputs] == [d["name"] for d in runtime.describe(content)["outputs"]]
        got = runner.run(mask_rcnn["image"])
    assert len(got) == len(expected)
    for g, e, d in zip(got, expected, manifest["outputs"]):
        assert g.dtype == e.dtype and g.shape == e.shape, d["name"]
        np.testing.assert_array_equal(g, e, err_msg=d["name"])
    assert max(int(np.max(a)) for a in expected if a.shape == (1,)) > 0  # detections to agree on


@needs_gpu
def test_mask_rcnn_gpu_parts_are_fully_accelerated_and_give_the_cpus_values(mask_rcnn, tmp_path):
    content = mask_rcnn["fp32"]
    parts, manifest = split_model(content, device_plan(runtime.parse_model(content)))
    folder = write_partitioned(tmp_path / "pkg", parts, manifest)
    np.save(tmp_path / "image.npy", mask_rcnn["image"])
    done = subprocess.run([sys.executable, "-c", _RUN_ON_GPU, str(folder), str(tmp_path / "image.npy"),
                           str(tmp_path / "gpu.npz")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    # fully_accelerated can be optimistic: the delegate's own refusal list must be absent too.
    assert "not supported by GPU delegate" not in log, log[-3000:]
    gpu = np.load(tmp_path / "gpu.npz")
    assert gpu["accelerated"].tolist() == [True] * len(parts)
    for i, (e, d) in enumerate(zip(_cpu_outputs(content, mask_rcnn["image"]), manifest["outputs"])):
        if e.dtype == np.float32:  # test_mask_rcnn_gpu's tolerances
            np.testing.assert_allclose(gpu[f"out_{i}"], e, atol=1e-4, rtol=1e-4, err_msg=d["name"])
        else:
            np.testing.assert_array_equal(gpu[f"out_{i}"], e, err_msg=d["name"])


def test_an_if_op_makes_a_cpu_part_carrying_its_branches(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32)])
    def graph(x):
        y = tf.nn.relu(x * 3.0 - 1.0)
        z = tf.cond(tf.reduce_sum(y) > 2.0, lambda: tf.sqrt(y + 1.0), lambda: y * y)
        return tf.tanh(z + 0.5)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
    content = converter.convert()
    model = runtime.parse_model(content)
    plan = device_plan(model)
    names = [runtime.op_name(model, op) for op in model.subgraphs[0].operators]
    assert "IF" in names and plan[names.index("IF")] == "cpu"
    assert device_plan(model, min_gpu_run=len(names)) == ["cpu"] * len(names)  # no GPU run long enough
    with pytest.raises(ValueError, match=r"operator \d+ \(IF\) calls other subgraphs.*expected 'cpu'"):
        split_model(content, ["gpu"] * len(names))
    parts, manifest = split_model(content, plan)
    write_partitioned(tmp_path / "pkg", parts, manifest)
    for x in ([[1.0, 2.0, 3.0, 4.0]], [[0.1, 0.2, 0.3, 0.0]]):  # both branches
        x = np.array(x, np.float32)
        with PartitionedRunner(tmp_path / "pkg", accelerator="cpu") as runner:
            np.testing.assert_array_equal(runner.run(x)[0], _cpu_outputs(content, x)[0])


def test_bad_plans_and_packages_are_refused_clearly(mask_rcnn, tmp_path):
    content = mask_rcnn["fp32"]
    ops = len(runtime.parse_model(content).subgraphs[0].operators)
    with pytest.raises(ValueError, match=rf"plan: 3 devices for a model of {ops} operators"):
        split_model(content, ["gpu"] * 3)
    with pytest.raises(ValueError, match=r"plan: unknown device\(s\) \['npu'\]"):
        split_model(content, ["npu"] + ["gpu"] * (ops - 1))
    with pytest.raises(ValueError, match="no manifest.json"):
        read_partitioned(tmp_path)
    with pytest.raises(ValueError, match="accelerator must be 'gpu' or 'cpu'"):
        PartitionedRunner(tmp_path, accelerator="npu")
