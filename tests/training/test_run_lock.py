"""One writer per run folder: two real processes on one run folder, SIGKILL of the holder,
readers beside a live training, and the chief-only rule of multi-worker runs.

The trainings run through the `kseg` command in fresh processes (a lock belongs to a
process); the holder of the function-level tests is a small Python process of its own.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

from kseg.training.callbacks import BackupAndRestore
from tests.training.test_training import write_blob_folder

try:  # (imported so, the tests that drive `kseg train` also run, and fail, on code without them)
    from kseg.utils.run_lock import (LOCK_FILE, RunFolderBusy, check_run_folder_free, lock_if_inside, read_holder,
                                     run_lock)
except ImportError:
    LOCK_FILE = RunFolderBusy = check_run_folder_free = lock_if_inside = read_holder = run_lock = None

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A U-Net of a few thousand weights; 4 epochs of 20 steps take seconds each on 2 shared cores.
UNET = ["train", "--model", "unet", "--set", "filters=4", "--set", "depth=2", "--num-classes", "2", "--remap",
        "0:0,255:1", "--channels", "1", "--image-size", "32", "--batch-size", "4", "--quiet", "--epochs", "4",
        "--steps-per-epoch", "20"]


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    return env


def _kseg(*args, wait=True):
    command = [sys.executable, "-m", "kseg.cli", *map(str, args)]
    if not wait:  # (stderr: TensorFlow's start-up lines and warnings, far below a pipe's buffer)
        return subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def _wait_for_epoch(run, epoch, process, limit=300):
    """Waits until the run's backup holds `epoch` (the lock is held: training is under way)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended early: {process.stderr.read()[-2000:]}")
        try:
            if BackupAndRestore.saved_epoch(os.path.join(run, "backup")) >= epoch:
                return
        except ValueError:
            pass
        time.sleep(0.05)
    pytest.fail(f"no backup of epoch {epoch} after {limit} s")


def _history_rows(run):
    with open(os.path.join(run, "history.csv"), newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    images, masks = write_blob_folder(tmp_path_factory.mktemp("lock") / "data", count=8, size=32)
    return ["--images", images, "--masks", masks]


# ------------------------------------------------------------------------------ two processes


@pytest.mark.slow
def test_a_second_train_into_a_live_run_is_refused_at_once_and_readers_run_beside_it(tmp_path, data):
    run = str(tmp_path / "run")
    first = _kseg(*UNET, *data, "--output", run, wait=False)
    _wait_for_epoch(run, 1, first)
    first.send_signal(signal.SIGSTOP)  # paused mid-run, its lock held, while the others try

    start = time.monotonic()
    second = _kseg(*UNET, *data, "--output", run)
    refused_after = time.monotonic() - start
    assert second.returncode == 2
    assert f"run folder {run} is in use: process {first.pid} on host" in second.stderr
    assert "kseg train --model unet" in second.stderr  # the holder's command line
    assert "Traceback" not in second.stderr
    assert refused_after < 10  # before TensorFlow loads (17 s alone on this loaded 2-core machine; 0.9 s measured)

    # Readers: evaluate into another file runs beside the training; into the run folder it is refused.
    report = tmp_path / "evaluation.json"
    beside = _kseg("evaluate", "--run", run, "--output", report, "--quiet")
    assert beside.returncode == 0, beside.stderr[-2000:]
    assert json.load(open(report))["mean_iou"] >= 0
    inside = _kseg("evaluate", "--run", run, "--quiet")
    assert inside.returncode == 2 and f"process {first.pid}" in inside.stderr
    assert "--output outside the run folder" in inside.stderr
    assert not os.path.exists(os.path.join(run, "evaluation.json"))

    first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    rows = _history_rows(run)  # the first run's log alone: one header, its 4 epochs
    assert rows[0][0] == "epoch" and [r[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    assert sum(r[0] == "epoch" for r in rows) == 1 and all(len(r) == len(rows[0]) for r in rows)
    print(f"second writer refused after {refused_after:.2f} s (process start included)")


@pytest.mark.slow
def test_the_kernel_drops_the_lock_of_a_sigkilled_run_and_the_next_run_resumes(tmp_path, data):
    run = str(tmp_path / "run")
    first = _kseg(*UNET, *data, "--output", run, wait=False)
    _wait_for_epoch(run, 1, first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert read_holder(run)["pid"] == first.pid  # the lock file still names it: no stale-file check decides
    check_run_folder_free(run)  # ...the kernel does: free

    again = _kseg(*UNET, *data, "--output", run)
    assert again.returncode == 0, again.stderr[-2000:]
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["resumed_at_epoch"] >= 1 and metrics["epochs_done"] == 4
    assert [r[0] for r in _history_rows(run)] == ["epoch", "0", "1", "2", "3"]
    assert read_holder(run) == {}  # released at the end: nothing recorded


# ------------------------------------------------------------------------------ the lock itself

_HOLDER = textwrap.dedent("""
    import sys, time
    from kseg.utils.run_lock import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


@pytest.fixture
def held(tmp_path):
    """A run folder whose lock another process holds; yields (folder, that process)."""
    run = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, run], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    yield run, holder
    holder.kill()
    holder.wait()


def test_a_held_run_folder_is_refused_naming_the_folder_and_the_holder(held):
    run, holder = held
    start = time.monotonic()
    with pytest.raises(RunFolderBusy) as refused:
        with run_lock(run):
            pass
    assert time.monotonic() - start < 2  # at once: nothing waits for the holder
    message = str(refused.value)
    assert f"run folder {run} is in use: process {holder.pid} on host" in message
    assert os.path.join(run, LOCK_FILE) in message and "-c" in message  # the holder's command line
    with pytest.raises(RunFolderBusy):
        check_run_folder_free(run)
    with pytest.raises(RunFolderBusy):  # evaluate/predict/export writing into the run
        with lock_if_inside(run, os.path.join(run, "evaluation.json")):
            pass
    with lock_if_inside(run, os.path.join(os.path.dirname(run), "elsewhere.json")):
        pass  # a reader writing elsewhere takes no lock

    holder.kill()
    holder.wait()
    with run_lock(run):  # the kernel dropped the dead holder's lock
        with run_lock(run):  # reentrant within a process (kseg demo holds it around train)
            assert read_holder(run)["pid"] == os.getpid()
        assert read_holder(run)["pid"] == os.getpid()
        check_run_folder_free(run)  # this process's own lock does not refuse it
    assert read_holder(run) == {}


def _worker_strategy(task_id):
    """A stand-in strategy of worker `task_id` of two: what `is_chief` reads (its cluster resolver)."""
    import tensorflow as tf

    cluster = tf.train.ClusterSpec({"worker": ["localhost:1", "localhost:2"]})
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, task_type="worker", task_id=task_id)
    return types.SimpleNamespace(cluster_resolver=resolver)


def test_only_the_chief_of_a_multi_worker_run_takes_the_lock(held):
    from kseg.training.loop import run_writer

    run, holder = held
    with run_writer(run, _worker_strategy(1)):  # worker 1 writes nothing and takes no lock
        pass
    with pytest.raises(RunFolderBusy, match=f"process {holder.pid}"):
        with run_writer(run, _worker_strategy(0)):  # the chief does
            pass


def test_kseg_launch_refuses_a_busy_run_folder_before_starting_workers(held, tmp_path):
    run, holder = held
    done = _kseg("launch", "-n", "2", "--log-dir", tmp_path / "logs", "--", *UNET, "--images", "x", "--masks", "y",
                 "--output", run)
    assert done.returncode == 2
    assert f"run folder {run} is in use: process {holder.pid}" in done.stderr
    assert not os.path.exists(tmp_path / "logs")  # no worker started


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
def test_under_kseg_launch_the_chief_holds_the_lock(tmp_path, data):
    run = str(tmp_path / "run")
    launcher = _kseg("launch", "-n", "2", "--log-dir", tmp_path / "logs", "--", *UNET, *data, "--output", run,
                     wait=False)
    _wait_for_epoch(run, 1, launcher)
    with open(f"/proc/{launcher.pid}/task/{launcher.pid}/children") as f:
        workers = [int(p) for p in f.read().split()]
    assert read_holder(run)["pid"] == workers[0]  # worker 0, the chief; worker 1 trains without it
    refused = _kseg(*UNET, *data, "--output", run)
    assert refused.returncode == 2 and f"process {workers[0]}" in refused.stderr
    assert launcher.wait(timeout=600) == 0, launcher.stderr.read()[-2000:]
    assert [r[0] for r in _history_rows(run)] == ["epoch", "0", "1", "2", "3"]
