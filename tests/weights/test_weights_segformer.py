"""kseg.weights: checkpoint reading and SegFormer loaders against transformers' logits.

The default suite compares against tests/fixtures/segformer_*, written by
tests/reference/make_segformer_fixtures.py (tiny random SegFormers saved under transformers
5.x and 4.x names, NVlabs/mmseg names and as encoder-only MiTs, with transformers' logits).
The `reference` tests rerun that script for full-size B0 and B2 and compare live; they need a
Python with torch and transformers: this one, or the one named by KSEG_REFERENCE_PYTHON. The
keras-hub test needs keras_hub installed here.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kseg.models import SegFormer
from kseg.weights import load_segformer, read_state_dict, write_safetensors
from tests import testing

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SCRIPT = Path(__file__).resolve().parents[1] / "reference" / "make_segformer_fixtures.py"
TOLERANCE = 1e-5  # max |kseg - reference| / max |reference|
SIZE = (64, 96, 3)
OLD_CONVENTIONS = dict(normalization="symmetric", layer_norm_epsilon=1e-6, stage_norm_epsilon=1e-6,
                       conv_norm_epsilon=1e-6, batch_norm_epsilon=1e-3)


def relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "segformer_tiny_reference.npz")


@pytest.fixture(scope="module")
def images(reference):
    """[N, 64, 96, 3] float32: the CamVid crops when ../shared/data is here, and the synthetic image."""
    indices, photos = [], []
    camvid = testing.SHARED_DATA / "camvid" / "val"
    if camvid.exists():
        from PIL import Image

        for i, name in enumerate(reference["camvid_images"]):
            photo = np.asarray(Image.open(camvid / str(name)).convert("RGB"))[::4, ::4]
            top, left = (photo.shape[0] - SIZE[0]) // 2, (photo.shape[1] - SIZE[1]) // 2
            photos.append(photo[top:top + SIZE[0], left:left + SIZE[1]])
            indices.append(i)
    indices.append(len(reference["camvid_images"]))
    photos.append(reference["synthetic"])
    return np.stack(photos).astype("float32"), indices


def stride4_logits(model, images):
    """The decoder's logits before the final upsampling, NCHW like transformers'."""
    head = keras.Model(model.input, model.get_layer("decode_logits").output)
    return head.predict(images, verbose=0).transpose(0, 3, 1, 2)


def check_logits(model, images, reference, key="logits"):
    pixels, indices = images
    error = relative_error(stride4_logits(model, pixels), reference[key][indices])
    assert error <= TOLERANCE, f"stride-4 logits differ by {error:.2e} relative"
    return error


@pytest.mark.parametrize("name", ["segformer_tiny_hf5.safetensors", "segformer_tiny_hf4.bin"])
def test_hugging_face_checkpoints_give_transformers_logits(name, images, reference):
    model = load_segformer(FIXTURES / name, input_shape=SIZE)
    assert model.checkpoint_report == {"left_initialised": [], "source": "huggingface"}
    assert (model.num_classes, model.widths, model.depths, model.decoder_channels) == (5, (8, 16, 20, 32), (2, 1, 1, 2), 16)
    check_logits(model, images, reference)
    # The model's own output: the stride-4 logits upsampled as transformers' interpolate does.
    pixels, indices = images
    error = relative_error(model.predict(pixels, verbose=0).transpose(0, 3, 1, 2), reference["upsampled"][indices])
    assert error <= TOLERANCE


def test_a_hugging_face_folder(tmp_path, images, reference):
    shutil.copy(FIXTURES / "segformer_tiny_hf5.safetensors", tmp_path / "model.safetensors")
    check_logits(load_segformer(tmp_path, input_shape=SIZE), images, reference)


def test_nvlabs_checkpoint_with_fused_kv(images, reference):
    model = load_segformer(FIXTURES / "segformer_tiny_nvlabs.pth", input_shape=SIZE)
    assert model.checkpoint_report["source"] == "nvlabs"
    assert (model.layer_norm_epsilon, model.stage_norm_epsilon, model.conv_norm_epsilon) == (1e-6, 1e-6, 1e-5)
    check_logits(model, images, reference, key="nvlabs_logits")
    # Built with transformers' epsilons, the same weights give transformers' logits.
    hf = load_segformer(FIXTURES / "segformer_tiny_nvlabs.pth", input_shape=SIZE,
                        layer_norm_epsilon=1e-5, stage_norm_epsilon=1e-5)
    check_logits(hf, images, reference)


@pytest.mark.parametrize("name", ["segformer_tiny_mit_hf.safetensors", "segformer_tiny_mit_nvlabs.pth"])
def test_encoder_only_checkpoints_load_the_encoder_and_leave_the_decoder(name, images, reference):
    with pytest.raises(ValueError, match="encoder-only.*num_classes"):
        load_segformer(FIXTURES / name, input_shape=SIZE)
    model = load_segformer(FIXTURES / name, input_shape=SIZE, num_classes=3, decoder_channels=16,
                           layer_norm_epsilon=1e-5, stage_norm_epsilon=1e-5)
    assert all(n.startswith("decode.") for n in model.checkpoint_report["left_initialised"])
    assert len(model.checkpoint_report["left_initialised"]) == 4 * 2 + 1 + 4 + 2
    pixels, indices = images
    normalize = keras.Model(model.input, model.get_layer("normalize").output)
    stages = model.encoder.predict(normalize.predict(pixels, verbose=0), verbose=0)
    for i, stage in enumerate(stages, start=1):
        error = relative_error(stage.transpose(0, 3, 1, 2), reference[f"mit_stage{i}"][indices])
        assert error <= TOLERANCE, (i, error)


def test_old_conventions_miss_the_reference(images, reference):
    """kseg as shipped before (x / 127.5 - 1, LayerNorm 1e-6, BatchNorm 1e-3) is far off, and so is
    each convention alone: the tolerance above tells them apart."""
    pixels, indices = images
    expected = reference["logits"][indices]
    path = FIXTURES / "segformer_tiny_hf5.safetensors"
    old = load_segformer(path, input_shape=SIZE, **OLD_CONVENTIONS)
    assert relative_error(stride4_logits(old, pixels), expected) > 1e-2
    for change in (dict(normalization="symmetric"), dict(layer_norm_epsilon=1e-6), dict(stage_norm_epsilon=1e-6),
                   dict(conv_norm_epsilon=1e-6), dict(batch_norm_epsilon=1e-3)):
        model = load_segformer(path, input_shape=SIZE, **change)
        assert relative_error(stride4_logits(model, pixels), expected) > 10 * TOLERANCE, change


def test_fine_tuning_to_other_classes_resets_only_the_classifier():
    path = FIXTURES / "segformer_tiny_hf5.safetensors"
    with pytest.raises(ValueError, match="classifies 5 classes but num_classes=3.*reset_classifier"):
        load_segformer(path, input_shape=SIZE, num_classes=3)
    model = load_segformer(path, input_shape=SIZE, num_classes=3, reset_classifier=True)
    assert model.checkpoint_report["left_initialised"] == ["decode.logits.bias", "decode.logits.kernel"]
    state = read_state_dict(path)
    np.testing.assert_array_equal(model.get_layer("decode_linear2").kernel.numpy(),
                                  state["decode_head.linear_projections.1.proj.weight"].T)


@pytest.fixture(scope="module")
def hf_state():
    return read_state_dict(FIXTURES / "segformer_tiny_hf5.safetensors")


def test_missing_extra_and_misshapen_tensors_are_named(hf_state):
    name = "segformer.stages.2.blocks.0.attention.k_proj.weight"
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*stage3\.block1\.attention\.key\.kernel"):
        load_segformer({k: v for k, v in hf_state.items() if k != name}, input_shape=SIZE)
    with pytest.raises(ValueError, match="segformer.stages.0.blocks.0.attention.extra.weight"):
        load_segformer({**hf_state, "segformer.stages.0.blocks.0.attention.extra.weight": np.zeros((8, 8))},
                       input_shape=SIZE)
    bad = {**hf_state, name: np.zeros((20, 19), "float32")}
    with pytest.raises(ValueError, match=rf"{name}.*\(19, 20\).*\(20, 20\)"):
        load_segformer(bad, input_shape=SIZE)
    with pytest.raises(ValueError, match="mmsegmentation 1.x"):
        load_segformer({"backbone.layers.0.0.projection.weight": np.zeros((32, 3, 7, 7))})
    with pytest.raises(ValueError, match="not a SegFormer/MiT checkpoint.*'conv1.weight'"):
        load_segformer({"conv1.weight": np.zeros((64, 3, 7, 7))})
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_segformer(FIXTURES / "nothing.safetensors")


def test_read_state_dict_rebuilds_torch_tensors_without_torch():
    expected = dict(np.load(FIXTURES / "segformer_reader_cases.npz"))
    got = read_state_dict(FIXTURES / "segformer_reader_cases.pth")  # {"meta": objects, "state_dict": tensors}
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_safetensors_round_trip_and_bad_files(tmp_path):
    tensors = {"a": np.arange(6, dtype="float32").reshape(2, 3), "b": np.array([1, -2], "int64"),
               "c": np.array([True, False]), "d": np.ones((2, 2), "float16")}
    path = tmp_path / "w.safetensors"
    write_safetensors(path, tensors, metadata={"format": "np"})
    got = read_state_dict(path)
    assert list(got) == list(tensors)
    for k in tensors:
        assert got[k].dtype == tensors[k].dtype
        np.testing.assert_array_equal(got[k], tensors[k])
    # bfloat16: the upper 16 bits of a float32.
    header = b'{"x":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}'
    bf16 = tmp_path / "bf16.safetensors"
    bf16.write_bytes(len(header).to_bytes(8, "little") + header + np.array([1.5, -2.0], "float32").view("uint32")
                     .__rshift__(16).astype("<u2").tobytes())
    np.testing.assert_array_equal(read_state_dict(bf16)["x"], [1.5, -2.0])
    content = path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(content[:-4])
    with pytest.raises(ValueError, match=r"short.safetensors.*tensor 'd'.*spans bytes"):
        read_state_dict(tmp_path / "short.safetensors")
    (tmp_path / "header.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="header.safetensors: header length"):
        read_state_dict(tmp_path / "header.safetensors")
    (tmp_path / "legacy.pth").write_bytes(b"\x80\x02not a zip")
    with pytest.raises(ValueError, match="legacy.pth: not a torch zip archive"):
        read_state_dict(tmp_path / "legacy.pth")
    with pytest.raises(ValueError, match=r"w.h5.*unknown file type '.h5'"):
        (tmp_path / "w.h5").write_bytes(b"")
        read_state_dict(tmp_path / "w.h5")


def _reference_python():
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        return sys.executable
    return os.environ.get("KSEG_REFERENCE_PYTHON")


@pytest.mark.reference
@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_full_size_equals_transformers_live(variant, tmp_path):
    """Random full-size B0 / B2 (every tensor random), real photos at 352 x 480, 150 classes."""
    python = _reference_python()
    if not python:
        pytest.skip("torch and transformers are not installed here and KSEG_REFERENCE_PYTHON is not set")
    if not (testing.SHARED_DATA / "camvid").exists():
        pytest.skip(f"{testing.SHARED_DATA} is absent: the live case runs on its photos")
    subprocess.run([python, str(SCRIPT), "--full", variant, "--output", str(tmp_path)], check=True,
                   capture_output=True, timeout=900)
    data = np.load(tmp_path / "reference.npz")
    model = load_segformer(tmp_path, input_shape=data["images"].shape[1:])
    assert model.variant == variant and model.num_classes == 150
    pixels = data["images"].astype("float32")
    assert relative_error(stride4_logits(model, pixels), data["logits"]) <= TOLERANCE
    assert relative_error(model.predict(pixels, verbose=0).transpose(0, 3, 1, 2), data["upsampled"]) <= TOLERANCE


@pytest.mark.reference
def test_keras_hub_segformer_and_mit_move_over():
    keras_hub = pytest.importorskip("keras_hub")
    from kseg.models.segformer.segformer import IMAGENET_MEAN, IMAGENET_STD
    from kseg.weights import segformer_from_keras_hub

    keras.utils.set_random_seed(0)
    mit = keras_hub.models.MiTBackbone(
        layerwise_depths=[2, 1, 1, 2], num_layers=4, layerwise_num_heads=[1, 2, 5, 8],
        layerwise_sr_ratios=[8, 4, 2, 1], max_drop_path_rate=0.1, layerwise_patch_sizes=[7, 3, 3, 3],
        layerwise_strides=[4, 2, 2, 2], image_shape=(64, 64, 3), hidden_dims=[8, 16, 20, 32])
    segmenter = keras_hub.models.SegFormerImageSegmenter(
        backbone=keras_hub.models.SegFormerBackbone(image_encoder=mit, projection_filters=16), num_classes=5)
    rng = np.random.default_rng(0)
    for v in segmenter.weights:  # all random; activations large enough that GELU's form matters
        if "moving_variance" in v.path:
            v.assign(rng.uniform(1e-3, 1e-2, v.shape))
        elif len(v.shape) == 1:
            v.assign((1.0 if "gamma" in v.path else 0.0) + 0.2 * rng.normal(size=v.shape))
        else:
            v.assign(rng.normal(size=v.shape) * 1.5 / np.sqrt(np.prod(v.shape[:-1])))
    pixels = testing.random_images((2, 64, 64, 3), seed=5)
    normalized = (pixels / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    expected = segmenter.predict(normalized, verbose=0)

    model = segformer_from_keras_hub(segmenter)
    assert model.checkpoint_report == {"left_initialised": [], "source": "keras_hub"}
    assert relative_error(model.predict(pixels, verbose=0), expected) <= TOLERANCE
    exact = segformer_from_keras_hub(segmenter, approximate_gelu=False)  # the reference's GELU is not keras-hub's
    assert relative_error(exact.predict(pixels, verbose=0), expected) > 2 * TOLERANCE

    encoder_only = segformer_from_keras_hub(mit, num_classes=5, decoder_channels=16)
    assert all(n.startswith("decode.") for n in encoder_only.checkpoint_report["left_initialised"])
    normalize = keras.Model(encoder_only.input, encoder_only.get_layer("normalize").output)
    stages = encoder_only.encoder.predict(normalize.predict(pixels, verbose=0), verbose=0)
    for stage, level in zip(stages, ("P1", "P2", "P3", "P4")):
        want = keras.Model(mit.input, mit.pyramid_outputs[level]).predict(normalized, verbose=0)
        assert relative_error(stage, want) <= TOLERANCE, level


def test_docstring_examples_run():
    import doctest

    import kseg.weights.reading as reading

    result = doctest.testmod(reading)
    assert result.attempted > 0 and result.failed == 0
