"""The `fit` of every kseg run folder (semantic, instance, panoptic): callbacks, resume,
which worker writes, the final model and its report.

A run resumes when the same command is run again into the same folder: `BackupAndRestore`
(kseg's atomic one) restores the weights, the optimizer and the epoch, and the input stream
skips the batches already trained on, so the resumed run sees the data the uninterrupted run
would have seen. Every file is written atomically (temporary name, then rename).

One process writes a run folder: the chief holds its lock (`kseg.utils.run_lock`) while it
trains, and a second writer is refused at once. A write that fails (disk full, quota,
read-only or unwritable folder, I/O error) stops the run with a `WriteError` naming the file,
what the folder kept and what to do; the backup stays until the final files are written, so
the same command resumes after any of them.
"""

import contextlib
import csv
import errno
import math
import os
import shutil
import time

import keras
import numpy as np

from kseg.training import callbacks as kcallbacks
from kseg.training.strategy import (
    check_global_batch,
    distributed_dataset,
    get_strategy,
    is_chief,
    scaled_learning_rate,
    synchronize_batch_norm,
)
from kseg.utils import atomic_path, write_json
from kseg.utils.io import WriteError, is_write_error
from kseg.utils.run_lock import check_run_folder_free, run_lock

RUN_FILES = ("best.keras", "final.keras", "history.csv", "curves.png", "metrics.json", "run.json")


def run_paths(output_dir):
    """{file name: path} of the files of a run folder."""
    return {name: os.path.join(output_dir, name) for name in RUN_FILES}


def backup_dir(output_dir):
    return os.path.join(output_dir, "backup")


def resume_epoch(output_dir):
    """The epoch a run into `output_dir` starts at: 0, or the epoch its backup holds."""
    return kcallbacks.BackupAndRestore.saved_epoch(backup_dir(output_dir))


def start_run(*, epochs, steps_per_epoch, batch_size, learning_rate, seed, strategy, cpu_replicas, lr_reference_batch,
              output_dir=None):
    """What every `kseg train` task does first: checks the lengths (errors name the argument), makes
    the strategy, refuses a run folder another process writes (`output_dir`, checked by the
    chief; `fit_run` holds its lock), checks that the global batch splits over its replicas,
    scales the learning rate, and seeds Keras/TF/NumPy. Returns (the `tf.distribute.Strategy`,
    the learning rate)."""
    for name, value in (("`epochs`", epochs), ("`batch_size`", batch_size), ("`steps_per_epoch`", steps_per_epoch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} {value!r}: expected an int >= 1")
    dist = get_strategy(strategy, cpu_replicas=cpu_replicas)
    if output_dir is not None and is_chief(dist):
        check_run_folder_free(output_dir)  # at once, before the data is read and the model built
    check_global_batch(dist, batch_size)
    rate = scaled_learning_rate(learning_rate, batch_size, lr_reference_batch)
    keras.utils.set_random_seed(seed)
    return dist, rate


def distribution_record(dist, strategy, rate, lr_reference_batch, mixed_precision, jit_compile):
    """The entries of run.json's "train" that say how a run was distributed and compiled."""
    return {"learning_rate": rate, "lr_reference_batch": lr_reference_batch, "strategy": strategy,
            "replicas": dist.num_replicas_in_sync, "mixed_precision": mixed_precision, "jit_compile": jit_compile}


def training_input(strategy, build, batch_size, output_dir, steps_per_epoch):
    """The training dataset of a run: `build(batch, shard, skip)` per input pipeline, skipping
    the elements of the epochs a resumed run has already trained."""
    done = resume_epoch(output_dir) * steps_per_epoch

    def pipeline(batch, shard):
        block = shard[2] if shard else batch
        return build(batch, shard, done * block)

    return distributed_dataset(strategy, pipeline, batch_size)


def run_writer(output_dir, strategy):
    """The lock a training holds on its run folder: the chief's (`run_lock`); the other
    workers of a multi-worker run write nothing and take none."""
    return run_lock(output_dir) if is_chief(strategy) else contextlib.nullcontext()


FIXES = {
    errno.ENOSPC: "free space on the file system of {folder}",
    errno.EDQUOT: "free space or raise the disk quota of {folder}",
    errno.EROFS: "make the file system of {folder} writable (it is read-only now)",
    errno.EACCES: "give this user write permission in {folder}",
    errno.EPERM: "give this user write permission in {folder}",
    errno.EIO: "check the storage of {folder} (an I/O error: see the kernel log)",
}


def write_failure_advice(output_dir, code):
    """What a run folder kept after a failed write, and what to do then (a `WriteError`'s advice).

    Args:
        output_dir: the run folder.
        code: the errno of the failed write (`FIXES` names the fix of each).

    Returns:
        "Kept in RUN: best.keras, the backup of epoch E (...), history.csv up to epoch N (...).
        To go on, <fix>, then rerun the same command: it resumes from the backup of epoch E."
    """
    paths = run_paths(output_dir)
    kept = [name for name in ("best.keras", "final.keras") if os.path.exists(paths[name])]
    try:
        saved = resume_epoch(output_dir)
    except ValueError:
        saved = 0
    if saved:
        kept.append(f"the backup of epoch {saved} ({backup_dir(output_dir)})")
    try:
        with open(paths["history.csv"], newline="") as f:
            rows = max(len(list(csv.reader(f))) - 1, 0)  # whole rows after the header: it is written atomically
    except OSError:
        rows = 0
    if rows:
        kept.append(f"history.csv up to epoch {rows}")
    resume = (f"it resumes from the backup of epoch {saved}" if saved
              else "it starts over (no epoch was backed up yet)")
    fix = FIXES.get(code, "fix the cause").format(folder=output_dir)
    return (f"Kept in {output_dir}: {', '.join(kept) or 'no complete checkpoint yet'} (every file under its "
            f"final name is complete). To go on, {fix}, then rerun the same command: {resume}.")


def remove_partial_files(output_dir):
    """Deletes the temporary files a killed run left half-written (`.tmp-*`, never loaded: the
    final names are only ever complete files); returns their names."""
    removed = []
    for folder in (output_dir, backup_dir(output_dir)):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(".tmp-"):
                    os.remove(os.path.join(folder, name))
                    removed.append(name)
    return removed


def fit_run(net, run, output_dir, train_ds, *, validation, monitor, curves, evaluate, load, time_budget, verbose):
    """Trains a compiled model with `fit` into a run folder, then scores its best model.

    The chief holds the run folder's lock throughout (`run_writer`).

    Args:
        net: a compiled model (built in the strategy's scope; its BatchNormalization layers
            are synchronized across replicas here).
        run: the run.json dict; its "train" holds epochs and steps_per_epoch.
        output_dir: the run folder.
        train_ds: the training input (`training_input`).
        validation: a callback adding `monitor` (and other val_* entries) to the epoch logs.
        monitor: the val_* log of best.keras (higher is better).
        curves: (png path, history csv path) -> the callback that draws the curves.
        evaluate: model -> the JSON-safe report of metrics.json.
        load: () -> the run's best model (the final one when there is no best.keras).
        time_budget: seconds; stop after the first epoch that ends past them.
        verbose: Keras' progress bar.

    Returns:
        {"history", "paths", "metrics", "run"}; on a worker other than the chief, which writes
        nothing, "metrics" is None.

    Raises:
        RunFolderBusy: another process writes `output_dir`.
        WriteError: a file of the run could not be written; its message names the file, what
            the folder kept and what to do.
    """
    with run_writer(output_dir, net.distribute_strategy):
        try:
            return _fit(net, run, output_dir, train_ds, validation=validation, monitor=monitor, curves=curves,
                        evaluate=evaluate, load=load, time_budget=time_budget, verbose=verbose)
        except OSError as err:
            if not is_write_error(err):
                raise
            raise WriteError(err.filename or output_dir, err.errno,
                             advice=write_failure_advice(output_dir, err.errno)) from err


def _fit(net, run, output_dir, train_ds, *, validation, monitor, curves, evaluate, load, time_budget, verbose):
    chief = is_chief(net.distribute_strategy)
    synchronize_batch_norm(net, net.distribute_strategy)
    paths = run_paths(output_dir)
    backup = backup_dir(output_dir)
    first_epoch = resume_epoch(output_dir)
    if chief:
        os.makedirs(output_dir, exist_ok=True)
        remove_partial_files(output_dir)
        write_json(paths["run.json"], run)
    callbacks = [kcallbacks.TimeBudget(time_budget), kcallbacks.StopOnNonFiniteLoss(paths["best.keras"], backup)]
    if chief:  # the order of epoch ends: score, keep the best, log, draw, then back up
        best = kcallbacks.BestCheckpoint(paths["best.keras"], monitor=monitor, mode="max")
        previous = kcallbacks.read_history_csv(paths["history.csv"]).get(monitor, []) if os.path.isdir(backup) else []
        kept = previous[:first_epoch]
        if np.isfinite(kept).any():  # resuming: the best so far is in the history
            best.best = float(np.nanmax(kept))
        callbacks += [validation, best, kcallbacks.ResumableCSVLogger(paths["history.csv"], backup),
                      curves(paths["curves.png"], paths["history.csv"]),
                      kcallbacks.TensorBoardLogs(os.path.join(output_dir, "logs"), write_graph=False)]
    callbacks.append(kcallbacks.BackupAndRestore(backup, writer=chief, delete_checkpoint=False))

    settings = run["train"]
    start = time.monotonic()
    history = net.fit(train_ds, epochs=settings["epochs"], steps_per_epoch=settings["steps_per_epoch"],
                      callbacks=callbacks, verbose=verbose if chief else 0)
    train_seconds = time.monotonic() - start
    if not chief:
        return {"history": history.history, "paths": paths, "metrics": None, "run": run}
    with atomic_path(paths["final.keras"]) as tmp:
        net.save(tmp)
    report = evaluate(load())
    epochs_run = len(history.history.get("loss", []))
    report.update(train_seconds=train_seconds, epochs_run=epochs_run, resumed_at_epoch=first_epoch,
                  epochs_done=first_epoch + epochs_run,
                  steps_per_second=epochs_run * settings["steps_per_epoch"] / train_seconds if train_seconds > 0
                  else math.nan)
    write_json(paths["metrics.json"], report)
    shutil.rmtree(backup, ignore_errors=True)  # only now: a failure above resumes from it
    return {"history": history.history, "paths": paths, "metrics": report, "run": run}
