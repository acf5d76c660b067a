"""Panoptic FPN's semantic head on LiteRT's GPU accelerator: every op taken, the CPU's outputs."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from export import runtime
from export.delegation import gpu_op_support
from kseg.models.panoptic_fpn.semantic_head import SemanticHead

pytestmark = pytest.mark.skipif(
    not Path(runtime.SWIFTSHADER_ICD).exists(),
    reason="LiteRT's GPU accelerator needs SwiftShader here: apt-get install chromium libvulkan1",
)


@pytest.fixture(scope="module")
def semantic_head_tflite(tmp_path_factory):
    """The head on the P2..P5 of a 64 x 64 image (P3..P5 pooled from P2), as a .tflite file."""
    keras.utils.set_random_seed(0)
    p2 = keras.Input((16, 16, 16), batch_size=1, name="p2")
    levels = {"P2": p2}
    for n in (3, 4, 5):
        levels[f"P{n}"] = keras.layers.AveragePooling2D(2 ** (n - 2))(p2)
    logits = SemanticHead(num_classes=4, channels=16, groups=4)(levels)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(p2, logits))
    path = tmp_path_factory.mktemp("semantic_head") / "semantic_head.tflite"
    path.write_bytes(converter.convert())
    return path


def test_semantic_head_writes_no_sub_of_version_3(semantic_head_tflite):
    # Keras' GroupNormalization broadcasts over five dimensions, which writes SUB version 3. A
    # file holds one version per op type, and in a whole Panoptic FPN the GPU accelerator then
    # refused three SUBs of the box arithmetic that it takes at version 2.
    model = runtime.parse_model(runtime.read_model(str(semantic_head_tflite)))
    versions = {(runtime.op_name(model, op), model.operatorCodes[op.opcodeIndex].version)
                for op in model.subgraphs[0].operators}
    assert ("SUB", 3) not in versions
    assert max(len(t.shape) for t in model.subgraphs[0].tensors if t.shape is not None) <= 4


def test_every_op_of_the_semantic_head_is_taken_by_the_gpu(semantic_head_tflite):
    support = runtime.in_subprocess(gpu_op_support, str(semantic_head_tflite), timeout=600)
    refused = [(r["op"], r["reason"]) for r in support if r["gpu"] is not True]
    assert support and not refused


def test_semantic_head_on_the_gpu_gives_the_cpus_logits(semantic_head_tflite):
    features = np.random.default_rng(0).normal(size=(1, 16, 16, 16)).astype(np.float32)
    with runtime.Runner(str(semantic_head_tflite), accelerator="cpu") as runner:
        (cpu,) = runner.run(features)
    gpu = runtime.in_subprocess(runtime.gpu_outputs, str(semantic_head_tflite), [features], timeout=600)
    assert gpu["fully_accelerated"]
    np.testing.assert_allclose(gpu["outputs"][0], cpu, atol=1e-4, rtol=1e-4)
