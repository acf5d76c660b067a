"""`kseg convert` (kseg.weights.convert): checkpoint -> .keras, then `kseg train --init` on it."""

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from kseg import cli
from kseg.weights.convert import convert, detect_kind
from kseg.weights.segformer import load_segformer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SIZE = (64, 96)


@pytest.mark.parametrize("name", ["segformer_tiny_hf5.safetensors", "segformer_tiny_hf4.bin",
                                  "segformer_tiny_nvlabs.pth", "segformer_tiny_mit_hf.safetensors"])
def test_detects_segformer_checkpoints(name):
    assert detect_kind(FIXTURES / name) == "segformer"


def test_detects_torchvision_mask_rcnn_and_folders(tmp_path):
    np.savez(tmp_path / "maskrcnn.npz", **{"backbone.body.conv1.weight": np.zeros((2, 3, 1, 1), "float32"),
                                           "roi_heads.box_predictor.cls_score.weight": np.zeros((3, 2), "float32")})
    assert detect_kind(tmp_path / "maskrcnn.npz") == "mask_rcnn_torchvision"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "segformer"}))
    assert detect_kind(hf) == "segformer"
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "metadata.json").write_text("{}")
    assert detect_kind(hub) == "keras_hub_segformer"


def test_unknown_sources_fail_naming_them(tmp_path):
    np.savez(tmp_path / "resnet.npz", **{"conv1.weight": np.zeros((2, 3, 1, 1), "float32")})
    with pytest.raises(ValueError, match=r"resnet.npz: cannot tell which model this checkpoint holds \(first tensor "
                                         r"names \['conv1.weight'\]\)"):
        detect_kind(tmp_path / "resnet.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: a folder that is neither a Hugging Face model"):
        detect_kind(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"--kind 'yolo': expected one of segformer, mask_rcnn_torchvision"):
        convert(FIXTURES / "segformer_tiny_hf5.safetensors", tmp_path / "m.keras", kind="yolo")
    with pytest.raises(ValueError, match=r"--output 'm.h5': expected a file name ending in .keras"):
        convert(FIXTURES / "segformer_tiny_hf5.safetensors", "m.h5")
    with pytest.raises(FileNotFoundError, match=r"nothing.pth: no such checkpoint"):
        convert(tmp_path / "nothing.pth", tmp_path / "m.keras")


def test_segformer_round_trip_gives_the_loaders_model(tmp_path):
    checkpoint = FIXTURES / "segformer_tiny_hf5.safetensors"
    output = tmp_path / "segformer.keras"
    result = convert(checkpoint, output, image_size=SIZE)
    assert result["kind"] == "segformer" and result["model"] == "SegFormer" and result["image_size"] == list(SIZE)
    assert sorted(os.listdir(tmp_path)) == ["segformer.keras"]  # written atomically: no temporary left
    converted = keras.models.load_model(output, safe_mode=True)
    direct = load_segformer(checkpoint, input_shape=SIZE + (3,))
    images = np.random.default_rng(0).uniform(0, 255, (2,) + SIZE + (3,)).astype("float32")
    np.testing.assert_array_equal(converted.predict(images, verbose=0), direct.predict(images, verbose=0))
    assert converted.get_config() == direct.get_config()


def test_cli_convert_then_init(tmp_path, capsys):
    output = tmp_path / "model.keras"
    code = cli.main(["convert", str(FIXTURES / "segformer_tiny_mit_hf.safetensors"), "--output", str(output),
                     "--image-size", "64", "--num-classes", "2", "--set", "decoder_channels=16"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "a SegFormer (2 classes, 64x64) from the segformer checkpoint" in printed and "left initialised" in printed
    from kseg.training.finetune import init_model, task_families

    model, report = init_model(output, num_classes=2, size=(64, 64, 3), families=task_families("semantic"))
    assert report["left_initialised"] == [] and report["model"] == "SegFormer"
    converted = keras.models.load_model(output)
    for got, want in zip(model.weights, converted.weights):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert cli.main(["convert", str(FIXTURES / "segformer_tiny_hf5.safetensors"), "--output", str(output),
                     "--kind", "mask_rcnn_torchvision", "--reset-classifier"]) == 2
    assert "--reset-classifier is for SegFormer checkpoints" in capsys.readouterr().err


@pytest.mark.slow
def test_torchvision_mask_rcnn_round_trip(tmp_path):
    """The seeded full-size state dict of tests/fixtures/mask_rcnn_torchvision.npz (44.5M weights),
    converted with `kseg convert`, reloads as the loader's own model: same outputs."""
    from kseg.weights.mask_rcnn_torchvision import mask_rcnn_from_torchvision
    from tests.models.test_mask_rcnn_torchvision import _config, _state_dict

    reference = np.load(FIXTURES / "mask_rcnn_torchvision.npz")
    checkpoint = tmp_path / "maskrcnn_resnet50_fpn.npz"
    np.savez(checkpoint, **_state_dict(reference))
    output = tmp_path / "mask_rcnn.keras"
    code = cli.main(["convert", str(checkpoint), "--output", str(output), "--image-size", "128x160",
                     *[f"--set={item}" for item in reference["config"]]])
    assert code == 0
    checkpoint_size = os.path.getsize(checkpoint)
    converted = keras.models.load_model(output, safe_mode=True)
    direct = mask_rcnn_from_torchvision(checkpoint, (128, 160), **_config(reference))
    assert type(converted).__name__ == "TorchvisionMaskRCNN" and converted.num_classes == 90
    assert converted.get_config() == direct.get_config()
    image = np.random.default_rng(1).uniform(0, 255, (1, 128, 160, 3)).astype("float32")
    got, want = converted(image), direct(image)
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
    assert os.path.getsize(output) > 0.9 * checkpoint_size  # every weight is in the file
