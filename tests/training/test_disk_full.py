"""Write failures while training: a disk that fills mid-run (a small tmpfs the test mounts),
a read-only file system, a folder the user may not write, and the messages of the other errnos.

Every failed write names the file, says what the run folder kept and what to do; no file
under its final name is ever empty, truncated or partial; and once space is freed the same
command resumes and ends exactly as the uninterrupted run.
"""

import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kseg.training.callbacks import BackupAndRestore, ResumableCSVLogger
from kseg.utils import atomic_write, write_json
from tests.training.test_training import write_blob_folder

try:  # (imported so, the tests that drive `kseg train` also run, and fail, on code without them)
    from kseg.training.loop import FIXES, write_failure_advice
    from kseg.utils.io import WriteError
    from kseg.utils.run_lock import run_lock
except ImportError:
    FIXES = write_failure_advice = WriteError = run_lock = None

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

UNET = ["train", "--model", "unet", "--set", "filters=4", "--set", "depth=2", "--num-classes", "2", "--remap",
        "0:0,255:1", "--channels", "1", "--image-size", "32", "--batch-size", "4", "--quiet", "--epochs", "4",
        "--steps-per-epoch", "20"]


def _mount(target, options):
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a small tmpfs on tmp_path/"fs" (2 MB: the run's files need about 0.8 MB at their
    peak); yields its path; unmounts it. Skips where mounting is not permitted."""
    if not sys.platform.startswith("linux"):
        pytest.skip("mounts a tmpfs (Linux)")
    target = tmp_path / "fs"
    target.mkdir()
    mounted = _mount(target, "size=2m")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    yield target
    subprocess.run(["umount", "-l", str(target)], check=False)


def fill(folder):
    """Writes a file into `folder` until its file system is full; returns the file."""
    path = os.path.join(folder, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return path


# ------------------------------------------------------------------------------ the writers, on a full disk


def test_an_atomic_write_to_a_full_disk_names_the_file_and_keeps_the_previous_version(tmpfs):
    path = str(tmpfs / "report.json")
    write_json(path, {"epoch": 1})
    fill(tmpfs)
    with pytest.raises(WriteError) as failed:
        write_json(path, {"epoch": 2, "padding": "x" * 100000})
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == path
    assert str(failed.value) == f"could not write {path}: No space left on device (ENOSPC)"
    assert json.load(open(path)) == {"epoch": 1}
    assert sorted(os.listdir(tmpfs)) == ["filler", "report.json"]  # no temporary file left


def test_the_history_csv_keeps_whole_rows_when_the_disk_fills(tmpfs):
    path = str(tmpfs / "history.csv")
    logger = ResumableCSVLogger(path, str(tmpfs / "backup"))
    logger.on_train_begin()
    logs = {"loss": 0.5, "val_loss": 0.25}
    logger.on_epoch_end(0, logs)
    filler = fill(tmpfs)
    with pytest.raises(WriteError, match=re.escape(f"could not write {path}: No space left on device")):
        for epoch in range(1, 200):  # rows that would fit in the last page of an appended file
            logger.on_epoch_end(epoch, {"loss": 0.1 * epoch, "val_loss": 0.2})
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [["epoch", "loss", "val_loss"], ["0", "0.5", "0.25"]]
    os.remove(filler)
    logger.on_epoch_end(1, logs)
    with open(path, newline="") as f:
        assert [r[0] for r in csv.reader(f)] == ["epoch", "0", "1"]


def test_a_read_only_file_system_and_an_unwritable_folder_name_the_file(tmpfs, tmp_path):
    run = tmpfs / "run"
    run.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(WriteError) as failed:
        with run_lock(str(run)):
            pass
    assert str(failed.value) == f"could not write {run / '.lock'}: Read-only file system (EROFS)"
    with pytest.raises(WriteError, match=re.escape(f"could not write {run / 'run.json'}: Read-only file system")):
        write_json(str(run / "run.json"), {})

    # EACCES: a user without write permission (root is never refused one: a child process writes as nobody).
    folder = tmp_path / "root-only"
    folder.mkdir(mode=0o755)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            os.setgid(65534)
            os.setuid(65534)
            write_json(str(folder / "metrics.json"), {})
            os.write(write, b"written")
        except BaseException as err:
            os.write(write, str(err).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as f:
        outcome = f.read()
    if "Operation not permitted" in outcome:
        pytest.skip("cannot switch to an unprivileged user here")
    assert outcome == f"could not write {folder / 'metrics.json'}: Permission denied (EACCES)"


def test_every_write_errno_says_what_was_kept_and_what_to_do(tmp_path):
    run = tmp_path / "run"
    (run / "backup").mkdir(parents=True)
    (run / "best.keras").write_bytes(b"complete")
    (run / "backup" / "state-00003-0000000.weights.h5").write_bytes(b"complete")
    write_json(str(run / "backup" / "state.json"), {"epoch": 3, "batch": 0, "weights": "state-00003-0000000.weights.h5"})
    with atomic_write(str(run / "history.csv")) as f:
        f.write("epoch,loss\n0,0.5\n1,0.4\n2,0.3\n3,0.2\n")  # epoch 4 logged, not yet backed up
    kept = (f"Kept in {run}: best.keras, the backup of epoch 3 ({run / 'backup'}), history.csv up to epoch 4 (every "
            "file under its final name is complete).")
    fixes = {errno.ENOSPC: f"free space on the file system of {run}",
             errno.EDQUOT: f"free space or raise the disk quota of {run}",
             errno.EROFS: f"make the file system of {run} writable (it is read-only now)",
             errno.EACCES: f"give this user write permission in {run}",
             errno.EPERM: f"give this user write permission in {run}",
             errno.EIO: f"check the storage of {run} (an I/O error: see the kernel log)"}
    assert set(fixes) == set(FIXES)
    for code, fix in fixes.items():
        error = WriteError(str(run / "history.csv"), code, advice=write_failure_advice(str(run), code))
        assert str(error) == (f"could not write {run / 'history.csv'}: {os.strerror(code)} "
                              f"({errno.errorcode[code]}). {kept} To go on, {fix}, then rerun the same command: it "
                              "resumes from the backup of epoch 3.")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_failure_advice(str(empty), errno.ENOSPC).endswith(
        "rerun the same command: it starts over (no epoch was backed up yet).")


# ------------------------------------------------------------------------------ a training on a disk that fills


def _kseg(*args, wait=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    command = [sys.executable, "-m", "kseg.cli", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _rows(run):
    with open(os.path.join(run, "history.csv"), newline="") as f:
        return list(csv.reader(f))


def _final_weights(run):
    import keras

    return [np.asarray(w) for w in keras.models.load_model(os.path.join(run, "final.keras")).weights]


@pytest.mark.slow
def test_a_disk_full_mid_training_names_the_file_keeps_whole_files_and_resumes_like_an_uninterrupted_run(
        tmp_path, tmpfs):
    import keras

    images, masks = write_blob_folder(tmp_path / "data", count=8, size=32)
    command = [*UNET, "--images", images, "--masks", masks]
    reference = _kseg(*command, "--output", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]

    run = str(tmpfs / "run")
    process = _kseg(*command, "--output", run, wait=False)
    deadline = time.monotonic() + 300
    while BackupAndRestore.saved_epoch(os.path.join(run, "backup")) < 2:  # state.json is replaced atomically
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no backup of epoch 2 after 300 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGSTOP)  # the disk fills between two of its writes, whatever the machine's load
    saved = BackupAndRestore.saved_epoch(os.path.join(run, "backup"))
    logged = len(_rows(run)) - 1
    assert saved < 4, "the run ended before the disk filled"
    filler = fill(tmpfs)
    process.send_signal(signal.SIGCONT)
    assert process.wait(timeout=300) == 2
    message = process.stderr.read().strip().splitlines()[-1]
    print(message)

    named = re.match(r"kseg train: error: could not write (\S+): No space left on device \(ENOSPC\)\. ", message)
    assert named and os.path.dirname(named[1]) in (run, os.path.join(run, "backup"), os.path.join(run, "logs"))
    assert (f"Kept in {run}: best.keras, the backup of epoch {saved} ({run}/backup), history.csv up to epoch "
            f"{logged} (every file under its final name is complete). To go on, free space on the file system of "
            f"{run}, then rerun the same command: it resumes from the backup of epoch {saved}.") in message
    rows = _rows(run)  # whole: one header, whole rows, epochs in order
    assert rows[0][0] == "epoch" and [r[0] for r in rows[1:]] == [str(e) for e in range(logged)]
    assert all(len(r) == len(rows[0]) for r in rows)
    keras.models.load_model(os.path.join(run, "best.keras"))  # complete
    assert not [n for folder in (run, os.path.join(run, "backup")) for n in os.listdir(folder) if n.startswith(".tmp-")]
    assert not os.path.exists(os.path.join(run, "final.keras"))

    os.remove(filler)  # space freed: the same command resumes and finishes
    resumed = _kseg(*command, "--output", run)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["resumed_at_epoch"] == saved and metrics["epochs_done"] == 4
    assert not os.path.exists(os.path.join(run, "backup"))
    # As the uninterrupted run: the same weights and the same per-epoch losses and scores, bit for bit.
    for a, b in zip(_final_weights(run), _final_weights(tmp_path / "reference"), strict=True):
        np.testing.assert_array_equal(a, b)
    columns = [c for c in rows[0] if c != "seconds"]
    ours, theirs = _rows(run), _rows(tmp_path / "reference")
    assert ours[0] == theirs[0] and len(ours) == 5
    for name in columns:
        i = ours[0].index(name)
        assert [r[i] for r in ours] == [r[i] for r in theirs], name


@pytest.mark.slow
def test_a_disk_full_after_the_last_epoch_keeps_the_backup_and_the_rerun_only_writes_the_final_files(
        tmp_path, tmpfs, monkeypatch):
    import keras

    from kseg.training import trainer
    from tests.training.test_training import TINY, blob_spec

    spec, run = blob_spec(tmp_path), str(tmpfs / "run")
    settings = dict(model="unet", model_kwargs=TINY, epochs=2, steps_per_epoch=3, batch_size=2, verbose=0)
    scored = trainer.evaluate_model

    def full_disk_then_score(*args, **kwargs):  # the disk fills after final.keras, before metrics.json
        fill(tmpfs)
        return scored(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_model", full_disk_then_score)
    with pytest.raises(WriteError) as failed:
        trainer.train(spec, run, **settings)
    assert str(failed.value).startswith(f"could not write {run}/metrics.json: No space left on device (ENOSPC). "
                                        f"Kept in {run}: best.keras, final.keras, the backup of epoch 2 ")
    assert str(failed.value).endswith("rerun the same command: it resumes from the backup of epoch 2.")
    weights = [np.asarray(w) for w in keras.models.load_model(os.path.join(run, "final.keras")).weights]

    os.remove(os.path.join(tmpfs, "filler"))
    monkeypatch.setattr(trainer, "evaluate_model", scored)
    result = trainer.train(spec, run, **settings)
    assert result["metrics"]["resumed_at_epoch"] == 2 and result["metrics"]["epochs_run"] == 0
    assert [r[0] for r in _rows(run)] == ["epoch", "0", "1"]
    for a, b in zip(_final_weights(run), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not os.path.exists(os.path.join(run, "backup"))
