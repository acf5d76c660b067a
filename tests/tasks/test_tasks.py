"""kseg.tasks: the Python API equals the command (same run from the same options), evaluate_run and
predict_run of every task work from Python and take the run lock, errors name the Python argument
in the API and the flag in the command, and the TensorFlow check of `kseg`."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from kseg import cli, tasks
from kseg.training.callbacks import read_history_csv
from kseg.utils.run_lock import RunFolderBusy
from tests.training.test_training import write_blob_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = 3
# A tiny U-Net run, as Python arguments and as the flags of `kseg train`.
SEMANTIC = dict(model="unet", model_kwargs={"filters": 4, "depth": 2}, num_classes=2, remap={0: 0, 255: 1},
                channels=1, image_size=(32, 32), epochs=2, steps_per_epoch=3, batch_size=2, learning_rate=3e-3,
                seed=SEED, verbose=0)
SEMANTIC_FLAGS = ["--model", "unet", "--set", "filters=4", "--set", "depth=2", "--num-classes", "2", "--remap",
                  "0:0,255:1", "--channels", "1", "--image-size", "32", "--epochs", "2", "--steps-per-epoch", "3",
                  "--batch-size", "2", "--lr", "3e-3", "--seed", str(SEED), "--quiet"]
DETECTION = dict(shapes=8, image_size=(64, 64), epochs=1, steps_per_epoch=1, batch_size=2, verbose=0)
TIMING = ("train_seconds", "steps_per_second")


def read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    images, masks = write_blob_folder(tmp_path_factory.mktemp("tasks") / "data", count=8, size=32)
    return images, masks


@pytest.fixture(scope="module")
def semantic_run(blobs, tmp_path_factory):
    run = tmp_path_factory.mktemp("semantic") / "run"
    tasks.train(str(run), task="semantic", images=blobs[0], masks=blobs[1], **SEMANTIC)
    return run


@pytest.fixture(scope="module")
def detection_runs(tmp_path_factory):
    """{task: run folder} of a 1-step Mask R-CNN and Panoptic FPN on 8 synthetic images, trained from Python."""
    runs = {}
    for task in ("instance", "panoptic"):
        runs[task] = tmp_path_factory.mktemp(task) / "run"
        tasks.train(str(runs[task]), task=task, **DETECTION)
    return runs


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


_HOLDER = textwrap.dedent("""
    import sys, time
    from kseg.utils.run_lock import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


@pytest.fixture
def hold():
    """hold(run) -> a process that holds the lock of the run folder until the test ends."""
    holders = []

    def start(run):
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], cwd=ROOT, stdout=subprocess.PIPE,
                                  text=True, env=dict(os.environ, PYTHONPATH=ROOT))
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held"
        return holder

    yield start
    for holder in holders:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_tasks_train_and_kseg_train_write_the_same_run(semantic_run, blobs, tmp_path):
    command_run = tmp_path / "command"
    assert cli.main(["train", "--images", blobs[0], "--masks", blobs[1], *SEMANTIC_FLAGS,
                     "--output", str(command_run)]) == 0
    assert read_json(semantic_run / "run.json") == read_json(command_run / "run.json")
    python_metrics, command_metrics = (read_json(run / "metrics.json") for run in (semantic_run, command_run))
    for key in TIMING:
        assert python_metrics.pop(key) > 0 and command_metrics.pop(key) > 0
    assert python_metrics == command_metrics
    assert python_metrics["epochs_done"] == 2 and python_metrics["mean_iou"] > 0
    histories = [read_history_csv(run / "history.csv") for run in (semantic_run, command_run)]
    assert histories[0].pop("seconds") and histories[1].pop("seconds")  # wall time: the one column that differs
    assert histories[0] == histories[1] and len(histories[0]["loss"]) == 2


def test_load_run_names_the_task_spec_and_model(semantic_run, blobs):
    info = tasks.load_run(str(semantic_run))
    assert info.task == "semantic" and info.model_path == os.path.join(str(semantic_run), "best.keras")
    assert info.spec.images == os.path.abspath(blobs[0]) and info.spec.num_classes == 2
    assert info.run_json["data"] is info.spec and info.run_json["model"]["kwargs"] == {"filters": 4, "depth": 2}


def test_semantic_evaluate_and_predict_from_python_equal_the_command(semantic_run, images, tmp_path, capsys):
    report = tasks.evaluate_run(str(semantic_run), output=str(tmp_path / "python.json"), verbose=0)
    assert report.pop("output") == str(tmp_path / "python.json")
    assert report == read_json(tmp_path / "python.json")
    assert report["mean_iou"] == read_json(semantic_run / "metrics.json")["mean_iou"]  # best.keras, the same images
    assert cli.main(["evaluate", "--run", str(semantic_run), "--output", str(tmp_path / "command.json"),
                     "--quiet"]) == 0
    assert read_json(tmp_path / "command.json") == report
    written = tasks.predict_run(str(semantic_run), str(images), str(tmp_path / "python"), verbose=0)
    assert sorted(os.path.basename(m) for m, _ in written.values()) == ["0_mask.png", "1_mask.png"]
    assert cli.main(["predict", "--run", str(semantic_run), str(images), "--output", str(tmp_path / "command"),
                     "--quiet"]) == 0
    for name in ("0_mask.png", "1_mask.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "python" / name)),
                                      np.asarray(Image.open(tmp_path / "command" / name)))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["instance", "panoptic"])
def test_detection_evaluate_and_predict_from_python_equal_the_command(detection_runs, task, images, tmp_path):
    run = detection_runs[task]
    assert tasks.load_run(str(run)).task == task
    report = tasks.evaluate_run(str(run), output=str(tmp_path / "python.json"), batch_size=2, verbose=0)
    assert report.pop("output") == str(tmp_path / "python.json") and report["images"] >= 1
    assert cli.main(["evaluate", "--run", str(run), "--output", str(tmp_path / "command.json"), "--batch-size", "2",
                     "--quiet"]) == 0
    assert read_json(tmp_path / "command.json") == report == read_json(tmp_path / "python.json")
    written = tasks.predict_run(str(run), [str(images)], str(tmp_path / "python"), verbose=0)
    assert cli.main(["predict", "--run", str(run), str(images), "--output", str(tmp_path / "command"),
                     "--quiet"]) == 0
    files = sorted(f for f in os.listdir(tmp_path / "python") if f.endswith(".png"))
    assert files == sorted(f for f in os.listdir(tmp_path / "command") if f.endswith(".png")) and len(files) == 2
    for name in files:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "python" / name)),
                                      np.asarray(Image.open(tmp_path / "command" / name)))
    assert len(written["pictures"] if task == "panoptic" else written) == 2


def test_semantic_evaluate_and_predict_take_the_run_lock(semantic_run, images, tmp_path, hold):
    holder = hold(semantic_run)
    with pytest.raises(RunFolderBusy, match=f"process {holder.pid}"):
        tasks.evaluate_run(str(semantic_run), verbose=0)
    with pytest.raises(RunFolderBusy, match=f"process {holder.pid}"):
        tasks.predict_run(str(semantic_run), str(images), str(semantic_run / "predictions"), verbose=0)
    assert not (semantic_run / "evaluation.json").exists() and not (semantic_run / "predictions").exists()
    assert tasks.evaluate_run(str(semantic_run), output=str(tmp_path / "beside.json"), verbose=0)["mean_iou"] >= 0
    assert len(tasks.predict_run(str(semantic_run), str(images), str(tmp_path / "beside"), verbose=0)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("task", ["instance", "panoptic"])
def test_detection_evaluate_and_predict_take_the_run_lock(detection_runs, task, images, tmp_path, hold):
    run = detection_runs[task]
    holder = hold(run)
    with pytest.raises(RunFolderBusy, match=f"process {holder.pid}"):
        tasks.evaluate_run(str(run), batch_size=2, verbose=0)
    with pytest.raises(RunFolderBusy, match=f"process {holder.pid}"):
        tasks.predict_run(str(run), str(images), str(run / "predictions"), verbose=0)
    assert not (run / "evaluation.json").exists() and not (run / "predictions").exists()
    assert tasks.evaluate_run(str(run), output=str(tmp_path / "beside.json"), batch_size=2, verbose=0)["images"] >= 1


# (Python call, its message, the flags of `kseg train`, the command's message)
ERRORS = {
    "image size": (dict(task="instance", shapes=8, image_size=(64, 65)), "`image_size` 64x65: expected H and W "
                   "divisible by 32", ["--task", "instance", "--shapes", "8", "--image-size", "64x65"],
                   "--image-size 64x65: expected H and W divisible by 32"),
    "val fraction": (dict(task="panoptic", shapes=8, val_fraction=1.5), "`val_fraction` 1.5: expected a number in "
                     "(0, 1)", ["--task", "panoptic", "--shapes", "8", "--val-fraction", "1.5"],
                     "--val-fraction 1.5: expected a number in (0, 1)"),
    "epochs": (dict(task="instance", shapes=8, epochs=0), "`epochs` 0: expected an int >= 1",
               ["--task", "instance", "--shapes", "8", "--epochs", "0"], "--epochs 0: expected an int >= 1"),
    "two sources": (dict(task="instance", shapes=8, label_maps="x"), "`shapes` and `label_maps`: expected one "
                    "instance data source", ["--task", "instance", "--shapes", "8", "--label-maps", "x"],
                    "--shapes and --label-maps: expected one instance data source"),
    "constructor arguments": (dict(task="instance", shapes=4, image_size=(64, 64), model_kwargs={"no_such": 1}),
                              "mask_rcnn rejected the `model_kwargs` ['no_such']",
                              ["--task", "instance", "--shapes", "4", "--image-size", "64", "--set", "no_such=1"],
                              "mask_rcnn rejected the --set ['no_such']"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_the_argument_in_python_and_the_flag_in_the_command(case, tmp_path, capsys):
    call, message, flags, command_message = ERRORS[case]
    with pytest.raises(ValueError) as raised:
        tasks.train(str(tmp_path / "python"), verbose=0, **call)
    assert message in str(raised.value) and "--" not in str(raised.value)
    assert cli.main(["train", *flags, "--output", str(tmp_path / "command"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert command_message in err and "`" not in err


def test_the_command_maps_argument_names_to_its_flags():
    parser = cli.build_parser()
    message = ("`learning_rate` 0, `model_kwargs` x, `preset` y, `split_seed`, `val_*`, `batch_size` 3, "
               "`filters` must be positive, `no_such_argument`")
    assert cli.flag_message(message, parser, "train") == (
        "--lr 0, --set x, --model-config y, --seed, --val-*, --batch-size 3, `filters` must be positive, "
        "`no_such_argument`")
    assert cli.flag_message("`masks`: not an option", parser, "evaluate") == "--masks: not an option"


def test_evaluate_and_predict_options_of_another_task_are_named(semantic_run, tmp_path):
    with pytest.raises(ValueError, match="`coco_json`: not an option of evaluating a semantic run"):
        tasks.evaluate_run(str(semantic_run), coco_json="x.json", images="y")
    with pytest.raises(ValueError, match="`score_threshold`: not an option of predicting with a semantic run"):
        tasks.predict_run(str(semantic_run), str(tmp_path), str(tmp_path / "out"), score_threshold=0.3)
    with pytest.raises(ValueError, match="`task` 'depth': expected one of semantic, instance, panoptic"):
        tasks.get_task("depth")


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export", "demo", "convert", "launch"])
def test_commands_that_need_tensorflow_say_so_on_an_install_without_it(command, monkeypatch, capsys):
    argv = {"train": ["train", "--task", "instance"], "evaluate": ["evaluate", "--run", "r"],
            "predict": ["predict", "--run", "r", "x.png", "--output", "o"], "export": ["export", "--run", "r"],
            "demo": ["demo"], "convert": ["convert", "x.pth", "--output", "y.keras"],
            "launch": ["launch", "--", "train"]}[command]
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else
                        real(name, *a))
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (f'kseg {command} needs TensorFlow, which this install lacks: '
                                       'pip install "kseg[train]"\n')


def test_bench_runs_its_own_checks_without_tensorflow(monkeypatch, capsys, tmp_path):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else
                        real(name, *a))
    code = cli.main(["bench", str(tmp_path / "missing.tflite")])
    assert code != 0 and "TensorFlow" not in capsys.readouterr().err
