import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kseg import cli, cli_args
from tests.training.test_training import write_blob_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
    return cli.main([str(a) for a in args])


@pytest.mark.slow
def test_train_evaluate_predict_from_the_command_line(tmp_path, capsys):
    images, masks = write_blob_folder(tmp_path / "data", count=6)
    out = tmp_path / "run"
    code = run_cli("train", "--images", images, "--masks", masks, "--num-classes", 2, "--remap", "0:0,255:1",
                   "--channels", 1, "--image-size", 32, "--epochs", 2, "--batch-size", 2, "--set", "filters=4",
                   "--set", "depth=2", "--output", out, "--quiet", "--class-names", "bg,blob",
                   "--augment", "rot90=False", "--augment", "scale_range=(0.8,1.2)")
    assert code == 0
    assert "mIoU" in capsys.readouterr().out
    with open(out / "run.json") as f:
        assert json.load(f)["train"]["augment"] == {"rot90": False, "scale_range": [0.8, 1.2]}
    code = run_cli("evaluate", "--run", out, "--quiet")
    assert code == 0
    printed = capsys.readouterr().out
    assert "blob" in printed and os.path.exists(out / "evaluation.json")
    code = run_cli("predict", "--run", out, images, "--output", tmp_path / "pred", "--quiet")
    assert code == 0
    mask = np.asarray(Image.open(tmp_path / "pred" / "000_mask.png"))
    overlay = np.asarray(Image.open(tmp_path / "pred" / "000_overlay.png"))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1}
    assert overlay.shape == (32, 32, 3)
    assert len(os.listdir(tmp_path / "pred")) == 12


def test_bad_input_gives_a_named_error_and_exit_code_2(tmp_path, capsys):
    images, masks = write_blob_folder(tmp_path / "data", count=4)
    # Label 255 without a remap is out of range for 2 classes: the file must be named.
    code = run_cli("train", "--images", images, "--masks", masks, "--num-classes", 2, "--channels", 1,
                   "--image-size", 32, "--epochs", 1, "--output", tmp_path / "run", "--quiet")
    assert code == 2
    err = capsys.readouterr().err
    assert "masks" in err and "255" in err
    code = run_cli("train", "--images", tmp_path / "missing", "--masks", masks, "--num-classes", 2,
                   "--output", tmp_path / "run2", "--quiet")
    assert code == 2
    assert "missing" in capsys.readouterr().err
    code = run_cli("evaluate", "--run", tmp_path / "nowhere")
    assert code == 2
    assert "run.json" in capsys.readouterr().err


def test_augment_flags_that_cannot_apply_are_refused(tmp_path, capsys):
    images, masks = write_blob_folder(tmp_path / "data", count=4)
    common = ["--images", images, "--masks", masks, "--num-classes", 2, "--remap", "0:0,255:1", "--channels", 1,
              "--epochs", 1, "--quiet"]
    assert run_cli("train", *common, "--augment", "rot90=False", "--no-augment", "--output", tmp_path / "a") == 2
    assert "--augment and --no-augment" in capsys.readouterr().err
    assert run_cli("train", *common, "--augment", "rot_90=False", "--output", tmp_path / "b") == 2
    assert "--augment key(s) 'rot_90'" in capsys.readouterr().err
    assert run_cli("train", "--task", "instance", "--shapes", 8, "--augment", "rot90=False",
                   "--output", tmp_path / "c") == 2
    assert "--augment" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")


def test_argument_parsing():
    assert cli_args.parse_size("256") == (256, 256) and cli_args.parse_size("240x320") == (240, 320)
    assert cli_args.parse_remap("0:0,255:1") == {0: 0, 255: 1}
    assert cli_args.parse_setting("filters=32") == ("filters", 32)
    assert cli_args.parse_setting("attention=true") == ("attention", True)
    assert cli_args.parse_setting("upsampling=bilinear") == ("upsampling", "bilinear")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--images", "a", "--masks", "b", "--num-classes", "2",
                                       "--image-size", "abc"])


def test_help_does_not_import_tensorflow():
    code = ("import sys; from kseg import cli; cli.build_parser().format_help(); "
            "assert 'tensorflow' not in sys.modules, 'kseg.cli imported TensorFlow'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.slow
def test_demo_writes_overlay_and_curves(tmp_path):
    from kseg.training.demo import run_demo

    result = run_demo(str(tmp_path / "demo"), epochs=1, steps_per_epoch=2, image_size=64, filters=4, verbose=0)
    assert 0.0 <= result["mean_iou"] <= 1.0
    overlay = np.asarray(Image.open(result["overlay"]))
    assert overlay.shape[0] > 2 * 256 and overlay.shape[1] > 3 * 256  # 2 held-out rows of 3 panels
    assert os.path.exists(result["curves"])
