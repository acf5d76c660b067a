"""Tests for export.bench: runs without TensorFlow, reports, bad inputs, crash isolation."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export import bench, frames, runtime
from tests.export.test_runtime import requires_swiftshader, tiny_models

ROOT = Path(__file__).resolve().parents[2]

# Installed as sitecustomize.py: any import of tensorflow or keras fails, and is logged.
_BLOCKER = """
import os, sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            with open(os.environ["KSEG_BLOCKED_LOG"], "a") as f:
                f.write(name + "\\n")
            raise ImportError(f"{name} is blocked: the edge benchmark must not import it")
        return None

sys.meta_path.insert(0, _Block())
"""


def tensorflow_blocked(folder):
    """An environment for a subprocess in which importing tensorflow or keras fails, and the
    log file that lists the attempts (absent when there were none)."""
    site = folder / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCKER)
    blocked = folder / "blocked.log"
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), KSEG_BLOCKED_LOG=str(blocked)), blocked


@pytest.fixture(scope="module")
def models():
    return tiny_models()[0]


def test_bench_runs_without_tensorflow(models, tmp_path):
    env, blocked = tensorflow_blocked(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "export.bench", models["float"], models["argmax"], "--threads", "1",
               "--runs", "3", "--warmup", "1", "--e2e-runs", "2", "--profile",
               "--json", str(out / "r.json"), "--csv", str(out / "r.csv"), "--chart", str(out / "r.png")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not blocked.exists(), f"tried to import {blocked.read_text().split()}"

    report = json.loads((out / "r.json").read_text())
    assert [r["model"] for r in report["results"]] == ["unet_float.tflite", "unet_argmax.tflite"]
    for r in report["results"]:
        assert r["error"] is None and r["backend"] == "cpu" and r["threads"] == 1
        i = r["invoke"]
        assert i["runs"] == 3 and 0 < i["min_ms"] <= i["p50_ms"] <= i["p90_ms"] <= i["p99_ms"] <= i["max_ms"]
        assert i["min_ms"] <= i["mean_ms"] <= i["max_ms"] and i["fps"] == pytest.approx(1000 / i["mean_ms"])
        assert r["init_ms"] > 0 and r["first_inference_ms"] > 0 and r["size_bytes"] > 0
        assert 0 < r["rss_before_load_mb"] < r["peak_rss_mb"]
        e = r["end_to_end"]
        assert e["runs"] == 2 and e["mean_ms"] > 0
        assert set(e["stages_ms"]) == {"decode", "preprocess", "invoke", "postprocess", "overlay"}
    assert [m["ops"]["CONV_2D"] for m in report["models"]] == [11, 11]

    # The per-op profile covers exactly the op types describe() counts.
    for profile, model in zip(report["profiles"], report["models"]):
        assert profile["error"] is None and not profile["skipped"]
        assert {op: v["count"] for op, v in profile["by_type"].items()} == model["ops"]
        assert sum(v["share"] for v in profile["by_type"].values()) == pytest.approx(1.0)
        assert profile["sum_ms"] > 0 and profile["whole_model_ms"] > 0

    rows = list(csv.DictReader((out / "r.csv").open()))
    assert len(rows) == 2 and float(rows[0]["mean_ms"]) == pytest.approx(report["results"][0]["invoke"]["mean_ms"])
    chart = np.asarray(Image.open(out / "r.png"))
    assert chart.ndim == 3 and chart.shape[0] >= 300
    assert "unet_float.tflite" in result.stdout and "per-op profile" in result.stdout


def _bad_inputs(models, tmp_path):
    image = tmp_path / "not_an_image.png"
    image.write_text("no pixels here")
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((1, 32, 32, 3), np.float32))
    wide = tmp_path / "float64.npy"
    np.save(wide, np.zeros((1, 64, 64, 3), np.float64))
    return {
        "missing model": ([str(tmp_path / "nope.tflite")], "nope.tflite", "no such file"),
        "not a flatbuffer": ([models["text"]], models["text"], "not a TFLite flatbuffer"),
        "truncated": ([models["truncated"]], models["truncated"], "truncated or corrupt"),
        "flex ops": ([models["flex"]], models["flex"], "FlexCropAndResize"),
        "wrong input size": ([models["float"], "--input", str(small)], str(small), "expected shape [1, 64, 64, 3]"),
        "wrong input dtype": ([models["float"], "--input", str(wide)], str(wide), "dtype float64"),
        "unreadable image": ([models["float"], "--image", str(image)], str(image), "Pillow cannot read"),
        "missing image": ([models["float"], "--image", str(tmp_path / "gone.png")], "gone.png", "no such image"),
    }


@pytest.mark.parametrize("case", ["missing model", "not a flatbuffer", "truncated", "flex ops", "wrong input size",
                                  "wrong input dtype", "unreadable image", "missing image"])
def test_bad_input_is_one_line_and_exit_code_2(models, tmp_path, capsys, case):
    argv, name, problem = _bad_inputs(models, tmp_path)[case]
    assert bench.main(argv + ["--runs", "1"]) == bench.EXIT_BAD_INPUT  # returned: this process survived
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and name in err and problem in err


def test_a_failing_configuration_is_reported_and_the_run_goes_on(models, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = bench.main([models["float"], "--runs", "1", "--e2e-runs", "0", "--timeout", "0.01", "--json", str(out)])
    assert code == bench.EXIT_FAILED
    (row,) = json.loads(out.read_text())["results"]
    assert "timed out" in row["error"] and row["model"] == "unet_float.tflite"
    assert "FAILED" in capsys.readouterr().out


def test_quantized_model_end_to_end_in_process(models):
    """The image pipeline quantizes for a uint8 input and argmaxes the quantized logits."""
    info = runtime.describe(runtime.read_model(models["int8"]))
    detail, reason = frames.image_input(info)
    assert reason is None
    with runtime.Runner(models["int8"]) as runner:
        picture, stages = frames.segment_file(runner, frames.default_image(), detail)
    assert picture.dtype == np.uint8 and picture.shape == (256, 256, 3)
    assert stages["invoke"] > 0


def test_prepare_image_normalizes_and_quantizes():
    image = Image.fromarray(np.full((8, 8, 3), 255, np.uint8))
    float_input = {"shape": (1, 4, 4, 3), "dtype": "float32", "quantization": (0.0, 0)}
    x = frames.prepare_image(image, float_input, ([127.5], [127.5]))
    assert x.shape == (1, 4, 4, 3) and x.dtype == np.float32 and np.allclose(x, 1.0)
    assert np.allclose(frames.prepare_image(image, float_input), 255.0)
    int8_input = {"shape": (1, 4, 4, 1), "dtype": "int8", "quantization": (1.0, -128)}
    q = frames.prepare_image(image, int8_input)
    assert q.dtype == np.int8 and (q == 127).all()


def test_class_map_prefers_the_in_graph_map():
    logits = np.zeros((1, 4, 4, 3), np.float32)
    logits[..., 2] = 1.0
    ids = np.ones((1, 4, 4), np.int32)
    plain = {"quantization": (0.0, 0)}
    mask, k = frames.class_map([logits, ids], [plain, plain])
    assert mask.shape == (4, 4) and (mask == 1).all()
    mask, k = frames.class_map([logits], [plain])
    assert (mask == 2).all() and k == 3


def gpu_row(model, tmp_path):
    """The result row of `model` (a file or a package) benchmarked on the GPU accelerator alone."""
    out = tmp_path / "r.json"
    assert bench.main([model, "--gpu", "--no-cpu", "--runs", "2", "--warmup", "0", "--e2e-runs", "1",
                       "--json", str(out)]) == bench.EXIT_OK
    (row,) = json.loads(out.read_text())["results"]
    assert row["backend"] == "gpu" and row["error"] is None
    return row


@requires_swiftshader
def test_gpu_configuration_reports_full_acceleration(models, tmp_path):
    row = gpu_row(models["float"], tmp_path)
    assert row["fully_accelerated"] is True and row["invoke_includes_output_read"] is True
