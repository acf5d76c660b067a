"""Training callbacks: atomic best checkpoint, curve PNG, time budget, NaN guard."""

import csv
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from kseg.utils import atomic_path


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

    Reading the CSV (written by `keras.callbacks.CSVLogger(append=True)`, placed before this
    callback) keeps the whole curve when a killed run resumes from `BackupAndRestore`.
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

    Place it first among the callbacks so that CSVLogger records the "seconds" column.

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
        if self.seconds is not None and elapsed >= self.seconds:
            self.stopped_epoch = epoch
            self.model.stop_training = True


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training on a NaN/Inf loss with a message naming the step and the last checkpoint.

    Args:
        checkpoint_path: the best-checkpoint file, named in the message when it exists.
    """

    def __init__(self, checkpoint_path=None):
        super().__init__()
        self.checkpoint_path = checkpoint_path
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.model.stop_training = True
            last = self.checkpoint_path if self.checkpoint_path and os.path.exists(self.checkpoint_path) else None
            raise NonFiniteLoss(
                f"training loss became {loss} at epoch {self.epoch + 1}, step {batch + 1}; "
                f"expected a finite loss. Last good checkpoint: {last or 'none written yet'}. "
                "Lower the learning rate, check the labels against num_classes, or disable mixed precision."
            )
