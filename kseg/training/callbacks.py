"""Training callbacks: atomic backup and best checkpoint, resumable CSV, curve PNG, time budget,
NaN guard, TensorBoard logs whose failed writes name their folder."""

import csv
import glob
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from kseg.training.strategy import any_worker
from kseg.utils import atomic_path, atomic_write, write_json
from kseg.utils.io import WRITE_ERRNOS, WriteError


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model to `path` (`.keras`) when `monitor` improves, atomically.

    Unlike `keras.callbacks.ModelCheckpoint`, the file is written under a temporary name
    and renamed, so a run killed while saving never leaves a half-written checkpoint.

    Args:
        path: target `.keras` file.
        monitor: logged quantity, e.g. "val_mean_iou" or "val_loss".
        mode: "max" or "min".
    """

    def __init__(self, path, monitor="val_loss", mode="min"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f'`mode` must be "min" or "max"; got {mode!r}.')
        self.path = path
        self.monitor = monitor
        self.mode = mode
        self.best = -math.inf if mode == "max" else math.inf
        self.best_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        better = value > self.best if self.mode == "max" else value < self.best
        if better:
            self.best, self.best_epoch = float(value), epoch
            with atomic_path(self.path) as tmp:
                self.model.save(tmp)


class Validation(keras.callbacks.Callback):
    """Evaluates on a validation set after every epoch and adds val_loss / val_mean_iou /
    val_pixel_accuracy / val_mean_dice to the epoch logs.

    It replaces `fit(validation_data=...)`: the evaluation runs on one device with
    `kseg.training.evaluate_model`, the code behind `kseg evaluate`, so it is exact for any
    batch or image size. Keras' own validation under a multi-replica strategy fails on a
    last batch smaller than the replica count. Place it before the callbacks that read the
    val_* logs (checkpoint, CSV, curves).

    Args:
        dataset: yields (images, masks) batches.
        num_classes, ignore_class: as in training.
        loss: the training loss (for val_loss).
    """

    def __init__(self, dataset, num_classes, ignore_class=None, loss=None):
        super().__init__()
        self.dataset = dataset
        self.num_classes = num_classes
        self.ignore_class = ignore_class
        self.loss = loss
        self._forward = None

    def on_epoch_end(self, epoch, logs=None):
        from kseg.training.evaluate import evaluate_model

        if self._forward is None:  # traced once per input shape, reused every epoch
            model = self.model
            self._forward = tf.function(lambda images: model(images, training=False), reduce_retracing=True,
                                        autograph=False)
        summary = evaluate_model(self.model, self.dataset, self.num_classes, self.ignore_class, loss=self.loss,
                                 forward=self._forward, verbose=0)
        if logs is not None:
            for key in ("loss", "mean_iou", "pixel_accuracy", "mean_dice"):
                if key in summary:
                    logs[f"val_{key}"] = float(summary[key])


class CurvePlot(keras.callbacks.Callback):
    """Redraws a PNG of the training curves after every epoch from the run's history CSV.

    Reading the CSV (written by `ResumableCSVLogger`, placed before this callback) keeps the
    whole curve when a killed run resumes from `BackupAndRestore`.
    """

    def __init__(self, path, csv_path, title="training"):
        super().__init__()
        self.path = path
        self.csv_path = csv_path
        self.title = title

    def on_epoch_end(self, epoch, logs=None):
        history = read_history_csv(self.csv_path)
        if history:
            save_curves(self.path, history, self.title)


def read_history_csv(path):
    """{column: [values]} of a CSVLogger file, without its epoch and learning-rate columns."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in (rows[0].keys() if rows else []) if c not in ("epoch", "learning_rate")]
    return {c: [float(r[c]) if r[c] not in ("", None) else math.nan for r in rows] for c in columns}


def save_curves(path, history, title="training"):
    """Writes loss curves and metric curves of a Keras `history` dict side by side as one PNG."""
    from kseg.viz import save_png, side_by_side
    from kseg.viz.chart import line_chart

    losses = {k: v for k, v in history.items() if k.endswith("loss")}
    metrics = {k: v for k, v in history.items() if not k.endswith("loss") and k != "seconds"}
    # Log scale: the first epochs' losses (BN statistics still settling) would flatten the rest.
    panels = [line_chart(losses, title=f"{title}: loss", xlabel="epoch", ylabel="loss (log)", size=(640, 420),
                         logy=True)]
    if metrics:
        panels.append(line_chart(metrics, title=f"{title}: metrics", xlabel="epoch", ylabel="value", size=(640, 420)))
    save_png(path, side_by_side(panels))


class TimeBudget(keras.callbacks.Callback):
    """Logs the training seconds of every epoch ("seconds") and stops past a budget.

    Place it first among the callbacks so that CSVLogger records the "seconds" column. Under a
    multi-worker strategy, all workers stop at the first epoch past the budget on any of them.

    Args:
        seconds: stop at the end of the first epoch that ends after this many seconds of
            training, or None to only log the time.
    """

    def __init__(self, seconds=None):
        super().__init__()
        self.seconds = seconds
        self.start = None
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.monotonic() - self.start
        if logs is not None:
            logs["seconds"] = elapsed
        if self.seconds is not None and self._any_worker(elapsed >= self.seconds):
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def _any_worker(self, flag):
        # Workers' clocks differ; all stop together, or the others hang in the next collective.
        strategy = getattr(self.model, "distribute_strategy", None)
        return any_worker(strategy, flag) if strategy is not None else flag


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training on a NaN/Inf loss with a message naming the step and the last good
    checkpoints.

    Keras logs the epoch's running mean loss after each batch; it turns non-finite at the
    first batch whose loss is, so that batch is the one named. Nothing written is touched:
    best.keras and the backup hold the last finite state.

    Args:
        checkpoint_path: the best-checkpoint file, named in the message when it exists.
        backup_dir: the `BackupAndRestore` folder, whose epoch is named when it has a state.
    """

    def __init__(self, checkpoint_path=None, backup_dir=None):
        super().__init__()
        self.checkpoint_path = checkpoint_path
        self.backup_dir = backup_dir
        self.epoch = 0
        self.steps = 0

    def on_train_begin(self, logs=None):
        self.steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.model.stop_training = True
            last = self.checkpoint_path if self.checkpoint_path and os.path.exists(self.checkpoint_path) else None
            saved = BackupAndRestore.saved_epoch(self.backup_dir) if self.backup_dir else 0
            backup = (f"; the backup in {self.backup_dir} holds the state after epoch {saved}, which rerunning "
                      "the same command resumes from" if saved else "")
            raise NonFiniteLoss(
                f"training loss became {loss} at epoch {self.epoch + 1}, step {batch + 1} (step {self.steps} of "
                f"this run); expected a finite loss. Last good checkpoint: {last or 'none written yet'}{backup}. "
                "Lower the learning rate, check the labels against num_classes, or disable mixed precision."
            )


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose state survives a kill at any instant.

    Keras writes its weights and its epoch counter in place, so a kill while saving leaves a
    truncated file that the next run fails to load, or new weights with an old epoch count.
    Here every backup is a new file `state-<epoch>-<batch>.weights.h5`, renamed into place
    once complete; then `state.json`, which names it and the epoch to resume at, is replaced
    atomically; only then are older state files deleted. Whatever instant a kill hits, the
    state named by `state.json` is complete and consistent.

    Under a multi-worker strategy only the chief writes (`writer=False` elsewhere) and every
    worker restores from the chief's folder.

    Args:
        backup_dir: the folder of the state (created).
        writer: this process writes the backup (the chief).
        save_freq: "epoch" or a number of batches, as Keras'.
        delete_checkpoint: delete the folder when training ends; kseg's runs keep it until
            their final files are written, so that a failure there still resumes.
    """

    STATE = "state.json"

    def __init__(self, backup_dir, writer=True, save_freq="epoch", delete_checkpoint=True):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        self.writer = writer

    @classmethod
    def saved_epoch(cls, backup_dir):
        """The epoch a run resumes at from `backup_dir` (0 when there is no backup)."""
        state = cls._read_state(backup_dir)
        return int(state["epoch"]) if state else 0

    @classmethod
    def _read_state(cls, backup_dir):
        path = os.path.join(backup_dir, cls.STATE)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                state = json.load(f)
            weights = os.path.join(backup_dir, state["weights"])
            int(state["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: unreadable backup state ({err}); expected the JSON kseg writes. Delete "
                             f"{backup_dir} to start the run over.") from None
        if not os.path.exists(weights):
            raise ValueError(f"{path} names {weights}, which does not exist; delete {backup_dir} to start over")
        return {**state, "weights": weights}

    def _load_model(self):
        state = self._read_state(self.backup_dir)
        if state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(state["weights"])
        self.model._initial_epoch = int(state["epoch"])

    def _save_model(self):
        if not self.writer:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"state-{self._current_epoch:05d}-{self._last_batch_seen:07d}.weights.h5"
        with atomic_path(os.path.join(self.backup_dir, name), suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
        write_json(os.path.join(self.backup_dir, self.STATE),
                   {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name})
        for old in glob.glob(os.path.join(self.backup_dir, "state-*.weights.h5")):
            if os.path.basename(old) != name:
                os.remove(old)

    def on_train_end(self, logs=None):
        if self.writer:
            super().on_train_end(logs)


class ResumableCSVLogger(keras.callbacks.Callback):
    """The per-epoch CSV log of a run (the columns of `keras.callbacks.CSVLogger`), kept whole
    across kills, full disks and resumes.

    The file is rewritten atomically after every epoch, so it always holds a header and whole
    rows (a write that fails leaves the previous version: "history up to epoch N"). A run
    resumed from `backup_dir` first drops the rows at or past the epoch it resumes at (a run
    stopped after logging an epoch but before backing it up repeats that epoch).

    Args:
        filename: the CSV file.
        backup_dir: the `BackupAndRestore` folder of the run.
    """

    def __init__(self, filename, backup_dir):
        super().__init__()
        self.filename = filename
        self.backup_dir = backup_dir
        self.header = None
        self.rows = []

    def on_train_begin(self, logs=None):
        resume = BackupAndRestore.saved_epoch(self.backup_dir)
        self.header, self.rows = None, []
        if os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                rows = list(csv.reader(f))
            if rows:
                self.header = rows[0]
                self.rows = [r for r in rows[1:] if len(r) == len(self.header) and r[0].isdigit()
                             and int(r[0]) < resume]
            if rows and len(self.rows) + 1 != len(rows):
                self._write()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.header is None:
            keys = sorted(logs)
            if not any(k.startswith("val_") for k in keys):
                keys += [f"val_{k}" for k in keys]
            self.header = ["epoch"] + keys
        rows = self.rows + [[str(epoch)] + [_csv_value(logs.get(k, "NA")) for k in self.header[1:]]]
        self._write(rows)
        self.rows = rows  # once on disk

    def _write(self, rows=None):
        with atomic_write(self.filename, newline="") as f:
            csv.writer(f).writerows([self.header] + (self.rows if rows is None else rows))


def _csv_value(value):
    """A log entry as CSVLogger writes it: scalars as they are, sequences as "[a, b]"."""
    if isinstance(value, str) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return str(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return f"[{', '.join(map(str, value))}]"
    return str(value)


def errno_of(error):
    """The errno (of `WRITE_ERRNOS`) a TensorFlow error reports in its message, else None."""
    message = getattr(error, "message", "") or str(error)
    return next((code for code in sorted(WRITE_ERRNOS) if os.strerror(code) in message), None)


class TensorBoardLogs(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` whose failed writes raise `WriteError` naming its folder.

    TensorFlow's event writer reports a full disk or a read-only folder as a
    `tf.errors.OpError` whose message holds the OS error; it becomes the `WriteError` every
    other file of a run raises. Event files are append-only records, each checksummed:
    TensorBoard skips a record cut short.

    Args:
        log_dir: the folder of the event files; `**kwargs` as `keras.callbacks.TensorBoard`.
    """

    def _writing(self, method, *args):
        try:
            return method(*args)
        except tf.errors.OpError as err:
            code = errno_of(err)
            if code is None:
                raise
            raise WriteError(self.log_dir, code) from err

    def on_train_begin(self, logs=None):
        self._writing(super().on_train_begin, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._writing(super().on_epoch_end, epoch, logs)

    def on_test_end(self, logs=None):
        self._writing(super().on_test_end, logs)

    def on_train_end(self, logs=None):
        self._writing(super().on_train_end, logs)
