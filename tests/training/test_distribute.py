"""tf.distribute training: per-worker input shards, N workers against one, SIGKILL and resume.

The runs go through the `kseg` command in fresh processes: logical devices and TF_CONFIG must
be set before TensorFlow starts, and a SIGKILL needs a process to kill.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import kseg.models.mask_rcnn  # noqa: F401  (registers the model classes final.keras names)
from kseg import data as kdata
from kseg.data.shapes import shapes_dataset_examples
from kseg.training.callbacks import BackupAndRestore
from tests.training.test_training import write_blob_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------------------ input shards


def _blob_pairs(tmp_path, count=8, size=32):
    images, masks = write_blob_folder(tmp_path / "data", count=count, size=size)
    return kdata.find_pairs(images, masks)


def _folder(pairs, batch, shard=None, skip=0, augment=True):
    return kdata.folder_dataset(pairs, image_size=(32, 32), channels=1, batch_size=batch, shuffle=True, repeat=True,
                                seed=3, drop_remainder=True, remap={0: 0, 255: 1}, shard=shard, skip=skip,
                                augment=kdata.Augment() if augment else None)


def _take(ds, steps):
    return [tuple(np.asarray(t) for t in batch) for batch in ds.take(steps)]


def test_worker_shards_rebuild_the_global_batch_exactly(tmp_path):
    pairs = _blob_pairs(tmp_path)
    whole = _take(_folder(pairs, 4), 6)
    parts = [_take(_folder(pairs, 2, shard=(i, 2, 2)), 6) for i in range(2)]
    for step, batch in enumerate(whole):
        for k in range(2):  # images, then masks: worker 0's rows, then worker 1's, augmentation included
            np.testing.assert_array_equal(np.concatenate([parts[0][step][k], parts[1][step][k]]), batch[k])


def test_worker_shards_are_disjoint_and_cover_each_epoch(tmp_path):
    pairs = _blob_pairs(tmp_path)
    steps = len(pairs) // 4  # one epoch of global batches of 4
    for epoch in range(2):
        seen = []
        for i in range(2):
            batches = _take(_folder(pairs, 2, shard=(i, 2, 2), augment=False), steps * (epoch + 1))[steps * epoch:]
            seen.append({np.asarray(image).tobytes() for images, _ in batches for image in images})
        everything = {np.asarray(kdata.resize_image(kdata.read_image(p[0], channels=1), (32, 32))).tobytes()
                      for p in pairs}
        assert seen[0].isdisjoint(seen[1])
        assert seen[0] | seen[1] == everything
        assert len(seen[0]) == len(seen[1]) == len(pairs) // 2


def test_instance_shards_rebuild_the_global_batch_and_read_only_their_examples():
    examples = shapes_dataset_examples(8, image_size=(64, 64), seed=1)
    read = []

    class Counting(list):
        def __getitem__(self, index):
            read.append(index)
            return list.__getitem__(self, index)

    def stream(batch, shard=None, source=examples, repeat=True):
        return kdata.instance_dataset(source, image_size=(64, 64), max_instances=8, batch_size=batch, seed=5,
                                      shard=shard, repeat=repeat)

    whole = list(stream(4).take(4))
    parts = [list(stream(2, (i, 2, 2)).take(4)) for i in range(2)]
    for step in range(4):
        for key in ("image", "boxes", "masks", "classes"):
            np.testing.assert_array_equal(
                np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key])
    assert len(list(stream(2, (1, 2, 2), Counting(examples), repeat=False))) == 2  # one epoch: 2 of its batches
    assert len(read) == len(set(read)) == 4  # it read its own 4 examples, once each, and not the other 4


def test_resume_skip_continues_the_uninterrupted_stream(tmp_path):
    pairs = _blob_pairs(tmp_path)
    whole = _take(_folder(pairs, 2), 7)
    resumed = _take(_folder(pairs, 2, skip=3 * 2), 4)  # a run resumed after 3 steps
    for a, b in zip(whole[3:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_batch_must_split_over_the_replicas_and_launch_checks_its_command():
    from kseg.launch import worker_command
    from kseg.training.strategy import check_global_batch, scaled_learning_rate

    class Two:
        num_replicas_in_sync = 2

    assert check_global_batch(Two(), 8) == 4
    with pytest.raises(ValueError, match=r"`batch_size` 3 is the global batch; expected a multiple of the 2"):
        check_global_batch(Two(), 3)
    assert scaled_learning_rate(1e-3, 16, 8) == pytest.approx(2e-3)
    assert scaled_learning_rate(1e-3, 16) == 1e-3
    assert worker_command(["--", "train", "--epochs", "2"])[-2:] == ["--strategy", "multi-worker"]
    with pytest.raises(ValueError, match=r"--strategy mirrored: kseg launch trains with --strategy multi-worker"):
        worker_command(["train", "--strategy", "mirrored"])
    with pytest.raises(ValueError, match=r"kseg launch runs `train`; got 'evaluate --run x'"):
        worker_command(["evaluate", "--run", "x"])


# ------------------------------------------------------------------------------ the backup


def test_backup_state_names_only_complete_consistent_files(tmp_path, monkeypatch):
    from kseg.training import callbacks as kcallbacks

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    backup = kcallbacks.BackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup.on_epoch_end(0)
    first = [np.asarray(w) for w in model.weights]

    def killed(*args, **kwargs):  # dies after the new weights file is in place, before state.json
        raise KeyboardInterrupt("killed")

    model.layers[0].kernel.assign(model.layers[0].kernel + 1.0)
    monkeypatch.setattr(kcallbacks, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        backup.on_epoch_end(1)
    monkeypatch.undo()
    assert BackupAndRestore.saved_epoch(str(tmp_path / "backup")) == 1  # still the complete state of epoch 1
    fresh = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    fresh.compile("adam", "mse")
    restore = kcallbacks.BackupAndRestore(str(tmp_path / "backup"))
    restore.set_model(fresh)
    restore.on_train_begin()
    assert fresh._initial_epoch == 1
    for w, expected in zip(fresh.weights, first):  # the weights of that epoch, not the newer file's
        np.testing.assert_array_equal(np.asarray(w), expected)

    (tmp_path / "backup" / "state.json").write_text("{trunc")
    with pytest.raises(ValueError, match=r"state.json: unreadable backup state .*Delete .*backup"):
        BackupAndRestore.saved_epoch(str(tmp_path / "backup"))


# ------------------------------------------------------------------------------ N workers vs one

_LOSS_DICT_STEP = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from kseg.data.sharding import select_elements
from kseg.models.base import LossDictTraining, SegmentationModel
from kseg.ops.replicas import global_count
from kseg.training.strategy import distributed_dataset

class Tiny(LossDictTraining, SegmentationModel):
    def __init__(self):
        inputs = keras.Input((4,))
        super().__init__(inputs=inputs, outputs=keras.layers.Dense(1, kernel_initializer="ones")(inputs))
        self._init_loss_trackers()

    @classmethod
    def loss_names(cls):
        return ("squared",)

    def compute_losses(self, batch, training=True):
        error = tf.square(self(batch["x"], training=training)[:, 0] - batch["y"])
        return {"squared": tf.reduce_sum(error * batch["w"]) / global_count(tf.reduce_sum(batch["w"]))}

rng = np.random.default_rng(0)
data = {"x": rng.normal(size=(4, 4)).astype("float32"), "y": rng.normal(size=4).astype("float32"),
        "w": np.array([1, 1, 1, 0], "float32")}  # 2 labelled rows on replica 0, 1 on replica 1

def step(strategy, clipnorm):
    with strategy.scope():
        model = Tiny()
        model.compile(optimizer=keras.optimizers.SGD(0.1, clipnorm=clipnorm))
    build = lambda batch, shard: select_elements(tf.data.Dataset.from_tensor_slices(data).repeat(), shard).batch(batch)
    model.fit(distributed_dataset(strategy, build, 4), steps_per_epoch=1, epochs=1, verbose=0)
    return np.concatenate([np.ravel(w) for w in model.get_weights()])

for clipnorm in (None, 0.05):  # 0.05: below the gradient's norm, so clipping acts
    one = step(tf.distribute.get_strategy(), clipnorm)
    two = step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), clipnorm)
    start = np.concatenate([np.ones(4), np.zeros(1)])
    print(clipnorm, float(np.abs(two - one).max() / np.abs(one - start).max()))
"""


@pytest.mark.slow
def test_loss_dictionaries_average_and_clip_the_global_batch_gradient_under_replicas():
    # SGD, unlike Adam, shows the gradient's scale: summed instead of averaged replica gradients
    # double the step, per-replica counts or per-replica clipping change it.
    done = subprocess.run([sys.executable, "-c", _LOSS_DICT_STEP], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    results = [line.split() for line in done.stdout.splitlines() if line.startswith(("None", "0.05"))]
    assert [r[0] for r in results] == ["None", "0.05"]
    for clipnorm, relative in results:
        assert float(relative) < 1e-5, (clipnorm, relative)  # float32 rounding of one step


def _kseg(*args, launch=None, wait=True, **kwargs):
    prefix = ["launch", "-n", str(launch), "--log-dir", kwargs.pop("log_dir"), "--"] if launch else []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    command = [sys.executable, "-m", "kseg.cli", *prefix, *args]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _history(run):
    with open(os.path.join(run, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _compare(run, reference, tolerance):
    """Compares two runs' trainable weights and per-epoch losses; returns the weight distance.

    The distance is ||w_run - w_reference|| / (lr * steps * sqrt(n)): Adam moves each of the n
    weights by about lr per step, so two runs on different batches are O(1) apart and runs that
    differ in float32 rounding only are orders of magnitude closer.
    """
    a, b = _weights(run), _weights(reference)
    assert len(a) == len(b)
    settings = json.load(open(os.path.join(reference, "run.json")))["train"]
    steps = settings["epochs"] * settings["steps_per_epoch"]
    difference = np.concatenate([(x - y).ravel() for x, y in zip(a, b)])
    distance = float(np.linalg.norm(difference) / (settings["learning_rate"] * steps * np.sqrt(difference.size)))
    losses = [float(r["loss"]) for r in _history(run)], [float(r["loss"]) for r in _history(reference)]
    print(f"{os.path.basename(run)} vs {os.path.basename(reference)}: weight distance {distance:.3g} (max "
          f"|difference| {np.abs(difference).max():.3g}); losses {losses}")
    assert distance <= tolerance, distance
    np.testing.assert_allclose(*losses, rtol=1e-5)
    return distance


def _weights(run):
    model = keras.models.load_model(os.path.join(run, "final.keras"))
    return [np.asarray(w) for w in model.trainable_weights]


UNET = ["train", "--model", "unet", "--set", "filters=8", "--set", "depth=2", "--num-classes", "2",
        "--remap", "0:0,255:1", "--channels", "1", "--image-size", "32", "--batch-size", "4", "--lr", "1e-3",
        "--quiet"]
LONG = ["--epochs", "3", "--steps-per-epoch", "30"]  # epochs of seconds: long enough to kill one midway
FEW_STEPS = ["--epochs", "1", "--steps-per-epoch", "4"]


@pytest.fixture(scope="module")
def unet_runs(tmp_path_factory):
    """The uninterrupted U-Net runs the killed runs are compared with: one process, and two
    workers (`kseg launch -n 2`)."""
    root = tmp_path_factory.mktemp("unet")
    images, masks = write_blob_folder(root / "data", count=16, size=32)
    data = ["--images", images, "--masks", masks]
    _kseg(*UNET, *LONG, *data, "--output", str(root / "single"))
    _kseg(*UNET, *LONG, *data, "--output", str(root / "two"), launch=2, log_dir=str(root / "logs"))
    return root, data


# N workers against one: all-reducing two half-batch gradients adds them in another order than
# one batch's gradient, a float32 rounding difference (~1e-7 relative). Adam amplifies it in
# the few weights whose gradient is near its epsilon (1e-7), and Mask R-CNN's discrete choices
# (top-k proposals, NMS, IoU thresholds) turn a rounding-sized weight change into other ROIs at
# the next step, so the comparison is over the first steps: measured distance 1e-8 (U-Net, 4
# steps) and 1.4e-4 (Mask R-CNN, 1 step, whose losses agree to 1e-7). A wrong shard or batch
# gives distances of order 1, and losses that differ at the first step.
FEW_STEPS_TOLERANCE = 1e-3


@pytest.mark.slow
def test_two_workers_train_the_unet_like_one_worker(unet_runs):
    root, data = unet_runs
    _kseg(*UNET, *FEW_STEPS, *data, "--output", str(root / "few-single"))
    _kseg(*UNET, *FEW_STEPS, *data, "--output", str(root / "few-two"), launch=2, log_dir=str(root / "logs"))
    run = json.load(open(root / "few-two" / "run.json"))
    assert run["train"]["strategy"] == "multi-worker" and run["train"]["replicas"] == 2
    assert not os.path.exists(root / "few-two" / "backup")  # the chief removed it at the end
    _compare(str(root / "few-two"), str(root / "few-single"), FEW_STEPS_TOLERANCE)


MASK_RCNN = ["train", "--task", "instance", "--shapes", "16", "--image-size", "64", "--batch-size", "4",
             "--max-instances", "8", "--quiet", "--epochs", "1", "--steps-per-epoch", "1"]


@pytest.mark.slow
def test_two_workers_train_mask_rcnn_like_one_worker(tmp_path):
    _kseg(*MASK_RCNN, "--output", str(tmp_path / "single"))
    _kseg(*MASK_RCNN, "--output", str(tmp_path / "two"), launch=2, log_dir=str(tmp_path / "logs"))
    _compare(str(tmp_path / "two"), str(tmp_path / "single"), FEW_STEPS_TOLERANCE)


# ------------------------------------------------------------------------------ SIGKILL and resume

# A resumed run restores weights and optimizer state exactly and skips the batches already
# trained on, so it repeats the uninterrupted run's arithmetic: measured identical (distance 0,
# equal losses). Restarting from scratch, or resuming on other batches, gives distances ~1e-1.
RESUME_TOLERANCE = 1e-6


def _wait_for_epoch(run, epoch, process, limit=300):
    """Waits until the run's backup holds `epoch` (or more), then returns that epoch."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {process.stderr.read()[-2000:]}")
        try:
            saved = BackupAndRestore.saved_epoch(os.path.join(run, "backup"))
        except ValueError:
            saved = 0
        if saved >= epoch:
            return saved
        time.sleep(0.05)
    pytest.fail(f"no backup of epoch {epoch} after {limit} s")


def _kill_mid_epoch(run, process, victim_pid=None):
    _wait_for_epoch(run, 1, process)
    time.sleep(0.3)  # into epoch 2 (an epoch takes seconds)
    os.kill(victim_pid or process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert BackupAndRestore.saved_epoch(os.path.join(run, "backup")) in (1, 2)
    assert not os.path.exists(os.path.join(run, "final.keras"))  # it did not finish
    for name in os.listdir(run):  # every file under its final name is complete and loads
        if name.endswith(".keras") and not name.startswith(".tmp-"):
            keras.models.load_model(os.path.join(run, name))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_finishes_like_an_uninterrupted_run(unet_runs):
    root, data = unet_runs
    run = str(root / "killed")
    _kill_mid_epoch(run, _kseg(*UNET, *LONG, *data, "--output", run, wait=False))
    _kseg(*UNET, *LONG, *data, "--output", run)
    assert [int(r["epoch"]) for r in _history(run)] == [0, 1, 2]
    assert not [name for name in os.listdir(run) if name.startswith(".tmp-")]  # a kill's leftovers removed
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    reference = json.load(open(root / "single" / "metrics.json"))
    assert metrics["epochs_done"] == 3 and metrics["resumed_at_epoch"] in (1, 2)
    assert metrics["mean_iou"] == pytest.approx(reference["mean_iou"], abs=1e-6)
    _compare(run, str(root / "single"), RESUME_TOLERANCE)


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
def test_sigkill_of_a_worker_or_the_launcher_then_rerun_resumes_the_two_worker_run(unet_runs):
    root, data = unet_runs
    run, logs = str(root / "killed-two"), str(root / "killed-logs")
    launcher = _kseg(*UNET, *LONG, *data, "--output", run, launch=2, log_dir=logs, wait=False)
    while len(_children(launcher.pid)) < 2:
        time.sleep(0.05)
    worker_1 = _children(launcher.pid)[1]
    _kill_mid_epoch(run, launcher, victim_pid=worker_1)  # the launcher stops worker 0 and fails
    assert launcher.returncode != 0 and "worker 1 exited with status -9" in launcher.stderr.read()

    launcher = _kseg(*UNET, *LONG, *data, "--output", run, launch=2, log_dir=logs, wait=False)
    while len(_children(launcher.pid)) < 2:
        time.sleep(0.05)
    workers = _children(launcher.pid)
    time.sleep(3)  # resumed and training
    os.kill(launcher.pid, signal.SIGKILL)  # the workers die with it
    launcher.wait(timeout=60)
    for pid in workers:
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
            assert time.monotonic() < deadline, f"worker {pid} outlived its launcher"
            time.sleep(0.1)

    _kseg(*UNET, *LONG, *data, "--output", run, launch=2, log_dir=logs)
    assert [int(r["epoch"]) for r in _history(run)] == [0, 1, 2]
    _compare(run, str(root / "two"), RESUME_TOLERANCE)
