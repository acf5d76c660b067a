"""A detector's GPU package (export.runtime.partition) in the edge tools: `kseg bench` and `kseg demo-video`
run the package folder as one model, as they run its `.tflite`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export import bench, runtime, video, video_io
from export.runtime.partition import split_model, write_partitioned
from tests.export.test_bench import gpu_row
from tests.export.test_demo_video_detectors import detector  # noqa: F401 (a fixture)
from tests.export.test_runtime import requires_swiftshader, tiny_models

ROOT = Path(__file__).resolve().parents[2]


def _package(path, folder):
    """`path`'s .tflite cut into three parts (GPU, CPU, GPU thirds of its ops) in `folder`."""
    content = runtime.read_model(path)
    count = len(runtime.parse_model(content).subgraphs[0].operators)
    plan = ["gpu"] * (count // 3) + ["cpu"] * (count // 3)
    plan += ["gpu"] * (count - len(plan))
    parts, manifest = split_model(content, plan)
    assert [p["device"] for p in manifest["parts"]] == ["gpu", "cpu", "gpu"]
    return write_partitioned(folder, parts, manifest)


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    """The tiny float U-Net of test_runtime and its three-part package."""
    path = tiny_models()[0]["float"]
    return {"file": path, "package": str(_package(path, tmp_path_factory.mktemp("pkg") / "unet_fp32.gpu"))}


def test_a_package_describes_as_its_file_with_its_parts(unet):
    whole, package = runtime.describe_path(unet["file"]), runtime.describe_path(unet["package"])
    assert whole["package"] is None
    assert package["package"]["crossings"] == 2 and [p["device"] for p in package["package"]["parts"]] == [
        "gpu", "cpu", "gpu"]
    assert sum(p["ops"] for p in package["package"]["parts"]) == whole["num_ops"] == package["num_ops"]
    assert package["ops"] == whole["ops"] and package["flops"]["total"] == whole["flops"]["total"]
    for key in ("inputs", "outputs", "signature_outputs", "metadata"):
        assert package[key] == whole[key], key
    assert package["size_bytes"] >= whole["size_bytes"] * 0.9  # the weights, once each (no op shares them)


def test_bench_times_a_package_beside_its_file(unet, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main([unet["file"], unet["package"], "--threads", "1", "--runs", "3", "--warmup", "1",
                       "--e2e-runs", "2", "--json", str(out)]) == bench.EXIT_OK
    stdout = capsys.readouterr().out
    assert "unet_fp32.gpu: " in stdout and "GPU package of 3 parts (gpu:" in stdout and "2 crossings" in stdout
    report = json.loads(out.read_text())
    file_row, package_row = report["results"]
    assert package_row["model"] == "unet_fp32.gpu" and package_row["error"] is None
    assert package_row["fully_accelerated"] is True and package_row["invoke"]["runs"] == 3
    assert package_row["end_to_end"]["runs"] == 2  # decode, invoke of the three parts, class map, overlay
    assert report["models"][1]["package"]["crossings"] == 2


@pytest.mark.parametrize("case", ["no manifest", "wrong format", "profile"])
def test_bench_names_a_bad_package(unet, tmp_path, capsys, case):
    folder = tmp_path / "bad.gpu"
    shutil.copytree(unet["package"], folder)
    extra, words = [], []
    if case == "no manifest":
        (folder / "manifest.json").unlink()
        words = ["bad.gpu: a folder without manifest.json; expected a .tflite file or a GPU package folder"]
    elif case == "wrong format":
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "format": "other/9"}))
        words = ["manifest.json: format 'other/9'; expected 'kseg.partitioned/1'", "written by kseg export"]
    else:
        extra, words = ["--profile"], ["bad.gpu: a GPU package; --profile times the ops of one .tflite file"]
    assert bench.main([str(folder), "--runs", "1", *extra]) == bench.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and all(w in err for w in words), err


@requires_swiftshader
def test_bench_runs_a_packages_gpu_parts_on_the_gpu_accelerator(unet, tmp_path):
    assert gpu_row(unet["package"], tmp_path)["fully_accelerated"] is True


def test_demo_video_draws_a_package_as_its_file(detector, tmp_path, capsys):  # noqa: F811 (the fixture)
    package = _package(detector["model"], tmp_path / "export" / "pixels_fp32.gpu")
    shutil.copy(Path(detector["model"]).parents[1] / "run.json", tmp_path / "run.json")  # the class names
    written = {}
    for name, model in (("file", detector["model"]), ("package", str(package))):
        out, report = tmp_path / f"{name}.y4m", tmp_path / f"{name}.json"
        argv = ["--model", model, "--input", detector["video"], "--output", str(out), "--threads", "1",
                "--json", str(report)]
        assert video.main(argv) == 0, capsys.readouterr().err
        stdout = capsys.readouterr().out
        assert ("GPU package of 3 parts (2 crossings)" in stdout) == (name == "package"), stdout
        written[name] = list(video_io.read_y4m(out))
        result = json.loads(report.read_text())
        assert result["detector"]["model"] == "Panoptic FPN" and result["detector"]["objects_per_frame"]["median"] == 3
    assert len(written["package"]) == 3
    for got, want in zip(written["package"], written["file"]):
        np.testing.assert_array_equal(got, want)



@requires_swiftshader
def test_demo_video_runs_a_packages_gpu_parts_on_the_gpu_accelerator(unet, tmp_path):
    """In a child process (a crash of the accelerator cannot take pytest down): --gpu on the package."""
    frames = [np.random.default_rng(i).integers(0, 255, (64, 64, 3)).astype(np.uint8) for i in range(2)]
    clip = tmp_path / "in.y4m"
    video_io.write_y4m(clip, frames, fps=10)
    written = {}
    for name, extra in (("cpu", []), ("gpu", ["--gpu"])):
        out = tmp_path / f"{name}.y4m"
        done = subprocess.run([sys.executable, "-m", "export.video", "--model", unet["package"], "--input", str(clip),
                               "--output", str(out), "--effect", "classes", *extra], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("GPU accelerator (every op on it)" in done.stdout) == (name == "gpu"), done.stdout
        assert "GPU package of 3 parts (2 crossings)" in done.stdout
        written[name] = np.stack(list(video_io.read_y4m(out)))
    assert written["gpu"].shape == written["cpu"].shape == (2, 64, 64, 3)
    same = (written["gpu"] == written["cpu"]).all(-1).mean()
    print(f"pixels drawn alike on the GPU and CPU: {same:.5f}")
    assert same > 0.99  # float32 on both; an argmax may flip where two classes' logits tie to rounding


def test_a_package_is_replaced_whole_or_not_at_all(unet, tmp_path, monkeypatch):
    parts, manifest = runtime.read_partitioned(unet["package"])
    folder = write_partitioned(tmp_path / "m.gpu", parts, manifest)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    fewer = {**manifest, "parts": manifest["parts"][:2]}  # a different package: its writing fails midway
    written = []

    def failing(self, data):
        written.append(self.name)
        if len(written) == 2:
            raise OSError(28, "No space left on device", str(self))
        return len(data)

    monkeypatch.setattr(Path, "write_bytes", failing)
    with pytest.raises(OSError, match="No space left"):
        write_partitioned(folder, parts[:2], fewer)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the earlier package, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gpu"]  # no staging folder left behind
    write_partitioned(folder, parts[:2], fewer)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "part0.tflite", "part1.tflite"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes: exists and holds no manifest.json"):
        write_partitioned(other, parts, manifest)
    assert (other / "keep.txt").read_text() == "mine"
