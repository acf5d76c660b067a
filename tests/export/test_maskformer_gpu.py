"""MaskFormer on LiteRT's GPU accelerator as a whole graph: fully delegated, same outputs as the CPU."""

from pathlib import Path

import keras
import numpy as np
import pytest

from export import runtime
from export.tflite import convert_variant, detector_tflite
from export.video_detections import signature_outputs
from kseg.models import build_model
from kseg.models.maskformer import SMALL_CONFIG
from kseg.models.maskformer.heads import MaskClassificationInference

pytestmark = pytest.mark.skipif(
    not Path(runtime.SWIFTSHADER_ICD).exists(),
    reason="LiteRT's GPU accelerator needs SwiftShader here: apt-get install chromium libvulkan1",
)

MASK_THRESHOLD = 0.5
# Pixels whose panoptic decision is closer than this to flipping (two kept queries' score x mask
# probability, or the winner's mask probability against MASK_THRESHOLD) may go either way on two
# backends: their float outputs differ by up to ~1e-5 (mask logits), probabilities by a quarter of that.
NEAR_TIE = 1e-4


@pytest.fixture(scope="module")
def small_maskformer():
    keras.utils.set_random_seed(0)
    # Thresholds at 0 keep every query whose top class is an object: the panoptic outputs are
    # not empty even with untrained weights.
    model = build_model("maskformer", num_classes=3, num_stuff_classes=3, input_shape=(64, 64, 3),
                        object_threshold=0.0, overlap_threshold=0.0, mask_threshold=MASK_THRESHOLD, **SMALL_CONFIG)
    # A nonzero first-layer residual, as after training: with the zero initial biases it is zero
    # and the converter drops the ADD (of that folded constant) which the GPU once computed wrong.
    beta = model.transformer_decoder.decoder_layers[0].norms[0].beta
    beta.assign(np.random.default_rng(1).normal(0.0, 0.3, beta.shape).astype("float32"))
    return model


def near_ties(class_probs, mask_logits, image_size):
    """Pixels where the panoptic step's decision is within NEAR_TIE of flipping.

    Args:
        class_probs: [1, N, K + 1]; mask_logits: [1, N, h, w] (the model's outputs).
        image_size: (H, W).

    Returns:
        bool [H, W].
    """
    grid = np.transpose(mask_logits, (0, 2, 3, 1))
    probs = keras.ops.convert_to_numpy(keras.ops.sigmoid(keras.ops.image.resize(grid, image_size)))[0]
    score, kept = class_probs[0].max(-1), class_probs[0].argmax(-1) < class_probs.shape[-1] - 1
    weighted = np.where(kept, score * probs, -1.0)
    order = np.argsort(weighted, axis=-1)[..., -2:]  # the runner-up and the winner
    top = np.take_along_axis(weighted, order, -1)
    top_probs = np.take_along_axis(probs, order, -1)
    # Two close candidates matter when either would label the pixel (both below: void either way).
    close = (top[..., 1] - top[..., 0] < NEAR_TIE) & (top_probs.max(-1) >= MASK_THRESHOLD - NEAR_TIE)
    return close | (np.abs(top_probs[..., 1] - MASK_THRESHOLD) < NEAR_TIE)


# fp16: the weights are stored as float16 and both paths compute from the same rounded values
# (the CPU dequantizes them, SwiftShader computes in float32), so the float tolerance is fp32's.
# In an fp16 model the panoptic step's constants are float16 too; a GPU op that read them as
# float32 bits once left every pixel void.
@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_small_maskformer_runs_fully_on_the_gpu_with_the_cpus_outputs(small_maskformer, variant, tmp_path):
    path = tmp_path / f"maskformer_{variant}.tflite"
    path.write_bytes(detector_tflite(small_maskformer, variant))
    image = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)

    with runtime.Runner(str(path), accelerator="cpu") as runner:
        cpu = runner.run(image)
        indices = [int(d["index"]) for d in runner.outputs]
    gpu = runtime.in_subprocess(runtime.gpu_outputs, str(path), [image], timeout=600)
    assert gpu["fully_accelerated"]
    key = {index: name for name, index in signature_outputs(path.read_bytes(), path).items()}
    cpu = {key[i]: a for i, a in zip(indices, cpu)}
    gpu = {key[i]: a for i, a in zip(indices, gpu["outputs"])}

    ties = near_ties(cpu["class_probs"], cpu["mask_logits"], (64, 64))
    # Untrained queries are near copies of each other, so most pixels are near ties; the rest
    # (and the exact panoptic-step test below) are compared exactly.
    assert np.sum(~ties & (cpu["panoptic"][0] > 0)) >= 64, "too few decided pixels to compare"
    for name, expected in cpu.items():
        got = gpu[name]
        if name == "panoptic":
            np.testing.assert_array_equal(got[0][~ties], expected[0][~ties], err_msg=name)
        elif name == "segment_area":  # a near-tie pixel moves one unit of area between segments
            assert np.abs(got.astype(int) - expected).sum() <= 2 * ties.sum(), name
        elif expected.dtype == np.float32:
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)
    assert cpu["num_segments"][0] > 0  # the panoptic branch had something to agree on


@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_panoptic_step_on_the_gpu_gives_the_cpus_segments_exactly(variant, tmp_path):
    # Only MaskFormer's inference layer, on logits drawn so that every query has its own score
    # and no pixel is a near tie: the panoptic map and segment table must be equal.
    num_queries, size = 10, (64, 64)
    inference = MaskClassificationInference(size, num_thing_classes=3, object_threshold=0.3,
                                            overlap_threshold=0.5, mask_threshold=MASK_THRESHOLD)
    class_logits = keras.Input((num_queries, 7), batch_size=1)
    mask_logits = keras.Input((16 * 16, num_queries), batch_size=1)
    model = keras.Model([class_logits, mask_logits], inference(class_logits, mask_logits))
    path = tmp_path / f"panoptic_step_{variant}.tflite"
    path.write_bytes(convert_variant(model, variant))
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (1, num_queries, 7)).astype(np.float32)
    home = np.kron(rng.integers(0, num_queries, (4, 4)), np.ones((4, 4), int)).reshape(-1)  # a query per 4x4 block
    masks = np.where(home[:, None] == np.arange(num_queries), 6.0, -6.0) + rng.normal(0.0, 1.0, (16 * 16, num_queries))
    masks = masks[None].astype(np.float32)

    with runtime.Runner(str(path), accelerator="cpu") as runner:  # inputs in the file's order
        arrays = [{logits.shape: logits, masks.shape: masks}[tuple(d["shape"])] for d in runner.inputs]
        cpu = runner.run(*arrays)
        indices = [int(d["index"]) for d in runner.outputs]
    gpu = runtime.in_subprocess(runtime.gpu_outputs, str(path), arrays, timeout=600)
    assert gpu["fully_accelerated"]
    key = {index: name for name, index in signature_outputs(path.read_bytes(), path).items()}
    cpu = {key[i]: a for i, a in zip(indices, cpu)}
    gpu = {key[i]: a for i, a in zip(indices, gpu["outputs"])}

    grid = np.transpose(masks.reshape(1, 16, 16, num_queries), (0, 3, 1, 2))
    assert not near_ties(cpu["class_probs"], grid, size).any()
    assert cpu["num_segments"][0] >= 3 and 0 < cpu["is_thing"].sum() < cpu["num_segments"][0]  # things and stuff
    for name, expected in cpu.items():
        if expected.dtype == np.float32:  # probabilities and scores: a softmax apart by an ulp
            np.testing.assert_allclose(gpu[name], expected, atol=1e-5, rtol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(gpu[name], expected, err_msg=name)
