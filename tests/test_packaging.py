"""The project set-up that CI and users rely on: README commands, .ci/run, dependencies."""

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EDGE_REQUIREMENTS = ("numpy", "pillow", "ai-edge-litert", "flatbuffers")  # `pip install .`, in setup.cfg's order
TRAIN_ONLY = ("tensorflow", "keras", "tensorboard", "scipy", "pycocotools", "pyyaml")
TRAINING_COMMANDS = {  # each with arguments that parse, so that only the missing TensorFlow stops it
    "train": [], "evaluate": ["--run", "run"], "predict": ["--run", "run", "a.png", "--output", "out"],
    "export": ["--run", "run"], "demo": [], "convert": ["model.pth", "--output", "out"],
}


def readme_commands():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", quick)


def test_readme_quick_start_has_exactly_two_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("kseg demo")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def _requirements(text):
    return [line.strip().lower() for line in text.strip().splitlines() if line.strip()]


def test_dependencies_follow_the_stack():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    edge = _requirements(config["options"]["install_requires"])
    assert [re.split(r"[=<>]", r)[0] for r in edge] == list(EDGE_REQUIREMENTS)  # the edge runtime only
    extras = config["options.extras_require"]
    train, test = _requirements(extras["train"]), _requirements(extras["test"])
    for name in ("tensorflow==2.21", "keras", "scipy", "pycocotools", "pyyaml", "tensorboard"):
        assert any(r.startswith(name) for r in train), name
    assert "kseg[train]" in test
    for dropped in ("tensorflow-addons", "keras-cv", "tflite-runtime", "matplotlib"):
        assert not any(dropped in r for r in edge + train + test)
    assert "kseg = kseg.cli:main" in config["options.entry_points"]["console_scripts"]


def test_embedded_isbi_sample_is_complete():
    from kseg.data import find_pairs
    from kseg.data.samples import isbi_sample_dirs

    pairs = find_pairs(*isbi_sample_dirs())
    assert len(pairs) == 10


def test_public_api_is_explicit():
    import kseg

    for name in kseg.__all__:
        assert getattr(kseg, name) is not None
    code = "import kseg, kseg.utils, kseg.viz, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _edge_env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}


def _run(args, cwd, check=True):
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=_edge_env(), capture_output=True, text=True, timeout=600)
    if check and out.returncode:
        raise AssertionError(f"{' '.join(map(str, args))} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def _labelled_model():
    """A 3-class .tflite (uint8 frames in, logits out, 32x48) with labels metadata, made with TensorFlow."""
    import keras
    import numpy as np

    from export.metadata import add_metadata
    from export.tflite import convert, device_model

    image = keras.Input(shape=(32, 48, 3), batch_size=1, name="image")
    conv = keras.layers.Conv2D(3, 1)
    model = keras.Model(image, conv(image))
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    kernel[0, 0, 0, 1] = kernel[0, 0, 1, 2] = 0.1
    conv.set_weights([kernel, np.array([0.0, -12.8, -12.8], np.float32)])
    content = convert(device_model(model, input_type="uint8", output="logits"))
    return add_metadata(content, labels=["background", "red", "green"], name="pixels", version="1",
                        mean=(0.0,) * 3, std=(1.0,) * 3, activation="softmax")


@pytest.fixture(scope="module")
def edge_install(tmp_path_factory):
    """README's edge install (`pip install .` of this tree) in a fresh venv without system packages.

    The tree is copied first so that no stale build/ folder of the checkout goes into the wheel.
    The test needs no network: pip installs with `--no-index` from the folder of wheels named by
    KSEG_EDGE_WHEELHOUSE, which `.ci/run` fills with `pip download` of the edge requirements (and
    the build's setuptools and wheel); without it the test skips, or fails under
    KSEG_REQUIRE_EDGE_INSTALL=1 (CI).
    Returns (venv folder, seconds for venv + install, a folder with model.tflite and clip.y4m).
    """
    wheelhouse = os.environ.get("KSEG_EDGE_WHEELHOUSE", "")
    if not wheelhouse or not Path(wheelhouse).is_dir():
        reason = (f"KSEG_EDGE_WHEELHOUSE={wheelhouse!r} is not a folder of wheels: the edge install test installs "
                  "offline from one (.ci/run makes it with pip download)")
        if os.environ.get("KSEG_REQUIRE_EDGE_INSTALL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    import numpy as np

    from export.video_io import write_y4m

    work = tmp_path_factory.mktemp("edge")
    source = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("kseg", "export"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    start = time.perf_counter()
    _run([sys.executable, "-m", "venv", work / "venv"], cwd=work)
    _run([work / "venv" / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", "--find-links", wheelhouse, source],
         cwd=work)
    seconds = time.perf_counter() - start
    files = work / "files"
    files.mkdir()
    (files / "model.tflite").write_bytes(_labelled_model())
    rng = np.random.default_rng(0)
    write_y4m(files / "clip.y4m", [rng.integers(0, 256, (64, 96, 3), dtype="uint8") for _ in range(4)], fps=10)
    return work / "venv", seconds, files


def test_edge_install_has_no_tensorflow_and_a_consistent_environment(edge_install):
    venv, seconds, files = edge_install
    python = venv / "bin" / "python"
    listed = json.loads(_run([python, "-m", "pip", "list", "--format", "json"], cwd=files).stdout)
    names = {p["name"].lower().replace("_", "-") for p in listed}
    assert {"kseg", *EDGE_REQUIREMENTS} <= names
    assert not names & set(TRAIN_ONLY), sorted(names)
    _run([python, "-m", "pip", "check"], cwd=files)
    refused = _run([python, "-c", "import tensorflow"], cwd=files, check=False)
    assert refused.returncode == 1 and "No module named 'tensorflow'" in refused.stderr
    assert seconds < 300, f"venv + pip install took {seconds:.0f} s"


def test_edge_install_runs_bench_video_and_metadata_reader(edge_install):
    from export.video_io import read_y4m

    venv, _, files = edge_install
    kseg = venv / "bin" / "kseg"
    _run([kseg, "bench", "model.tflite", "--threads", "1", "--warmup", "1", "--runs", "3", "--e2e-runs", "1",
          "--json", "bench.json"], cwd=files)
    (result,) = json.loads((files / "bench.json").read_text())["results"]
    assert (result["model"], result["error"], result["invoke"]["runs"], result["end_to_end"]["runs"]) == (
        "model.tflite", None, 3, 1)
    _run([kseg, "demo-video", "--model", "model.tflite", "--input", "clip.y4m", "--output", "blur.y4m",
          "--effect", "blur", "--threads", "1"], cwd=files)
    assert len(list(read_y4m(files / "blur.y4m"))) == 4
    code = ("import json, sys; from export.metadata import read_metadata; "
            "m = read_metadata(open('model.tflite', 'rb').read()); "
            "print(json.dumps([m['labels'], m['activation'], 'tensorflow' in sys.modules]))")
    out = _run([venv / "bin" / "python", "-c", code], cwd=files)
    assert json.loads(out.stdout) == [["background", "red", "green"], "softmax", False]


def test_edge_install_draws_outlines(edge_install):
    from export.video_io import read_y4m

    venv, _, files = edge_install
    _run([venv / "bin" / "kseg", "demo-video", "--model", "model.tflite", "--input", "clip.y4m",
          "--output", "outlines.y4m", "--effect", "outlines", "--threads", "1"], cwd=files)
    assert len(list(read_y4m(files / "outlines.y4m"))) == 4


NEEDS_TENSORFLOW = 'kseg {} needs TensorFlow, which this install lacks: pip install "kseg[train]"'


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_edge_install_refuses_training_commands_in_one_line(edge_install, command):
    venv, _, files = edge_install
    out = _run([venv / "bin" / "kseg", command, *TRAINING_COMMANDS[command]], cwd=files, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (2, "", NEEDS_TENSORFLOW.format(command) + "\n")
