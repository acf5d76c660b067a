"""MaskFormer on LiteRT's GPU accelerator as a whole graph: fully delegated, same outputs as the CPU."""

from pathlib import Path

import keras
import numpy as np
import pytest

from export import runtime
from export.tflite import detector_tflite
from kseg.models import build_model
from kseg.models.maskformer import SMALL_CONFIG

pytestmark = pytest.mark.skipif(
    not Path(runtime.SWIFTSHADER_ICD).exists(),
    reason="LiteRT's GPU accelerator needs SwiftShader here: apt-get install chromium libvulkan1",
)


@pytest.fixture(scope="module")
def small_maskformer():
    keras.utils.set_random_seed(0)
    # Thresholds at 0 keep every query whose top class is an object: the panoptic outputs are
    # not empty even with untrained weights.
    return build_model("maskformer", num_classes=3, num_stuff_classes=3, input_shape=(64, 64, 3),
                       object_threshold=0.0, overlap_threshold=0.0, **SMALL_CONFIG)


# fp16: the weights are stored as float16 and both paths compute from the same rounded values
# (the CPU dequantizes them, SwiftShader computes in float32), so the float tolerance is fp32's.
# The integer outputs (panoptic map, segment table) must be equal: in an fp16 model the panoptic
# step's constants are float16 too, and an op that reads them wrongly empties the map.
@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_small_maskformer_runs_fully_on_the_gpu_with_the_cpus_outputs(small_maskformer, variant, tmp_path):
    path = tmp_path / f"maskformer_{variant}.tflite"
    path.write_bytes(detector_tflite(small_maskformer, variant))
    image = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)

    with runtime.Runner(str(path), accelerator="cpu") as runner:
        cpu = runner.run(image)
        names = [d["name"] for d in runner.outputs]
    gpu = runtime.in_subprocess(runtime.gpu_outputs, str(path), [image], timeout=600)

    assert gpu["fully_accelerated"]
    segments = None
    for name, expected, got in zip(names, cpu, gpu["outputs"]):
        if expected.dtype == np.float32:
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)
        if expected.shape == (1,):
            segments = int(expected[0])
    assert segments and segments > 0  # the panoptic branch had something to agree on
