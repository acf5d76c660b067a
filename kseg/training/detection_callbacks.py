"""Epoch-end callbacks of detection runs: validation scores in the logs, loss and score curves."""

import math

import keras
import tensorflow as tf

from kseg import viz
from kseg.models.mask_rcnn import LOSSES
from kseg.training import callbacks as kcallbacks


class TaskValidation(keras.callbacks.Callback):
    """A detection task's validation scores after every epoch, added to the logs as val_*.

    The detection counterpart of `kseg.training.callbacks.Validation`: it runs the task's
    evaluation (the code behind `kseg evaluate`) through one `tf.function` kept across
    epochs. Place it before the callbacks that read the val_* logs.

    Args:
        task: a detection task (`kseg.tasks`): its `evaluate` and `log_entries`.
        examples: sequence of example dicts at the model's input size.
        categories: [K] dicts {"id", "name"}.
        batch_size: images per forward pass.
    """

    def __init__(self, task, examples, categories, batch_size=4):
        super().__init__()
        self.task, self.examples, self.categories, self.batch_size = task, examples, categories, batch_size
        self.last, self._forward = None, None

    def on_epoch_end(self, epoch, logs=None):
        if self._forward is None:
            model = self.model
            self._forward = tf.function(lambda images: model(images, training=False), reduce_retracing=True,
                                        autograph=False)
        self.last = self.task.evaluate(self.model, self.examples, self.categories, self.batch_size,
                                       forward=self._forward)
        if logs is not None:
            logs.update({k: math.nan if v is None else float(v) for k, v in self.task.log_entries(self.last).items()})


class InstanceCurvePlot(kcallbacks.CurvePlot):
    """`CurvePlot` with the detector's losses in one panel (log scale) and its validation
    scores in another: the val_* columns whose name contains `score_key` ("_AP" for Mask
    R-CNN, "val_PQ" for Panoptic FPN)."""

    def __init__(self, path, csv_path, title="mask_rcnn", losses=LOSSES, score_key="_AP", score_name="AP"):
        super().__init__(path, csv_path, title)
        self.losses, self.score_key, self.score_name = tuple(losses), score_key, score_name

    def on_epoch_end(self, epoch, logs=None):
        history = kcallbacks.read_history_csv(self.csv_path)
        if history:
            save_instance_curves(self.path, history, self.title, self.losses, self.score_key, self.score_name)


def save_instance_curves(path, history, title="mask_rcnn", losses=LOSSES, score_key="_AP", score_name="AP"):
    """Writes loss curves (total and each part) and the validation scores side by side as one PNG."""
    from kseg.viz.chart import line_chart

    loss_curves = {k: v for k, v in history.items() if k in ("loss",) + tuple(losses)}
    scores = {k: v for k, v in history.items() if score_key in k}
    panels = [line_chart(loss_curves, title=f"{title}: losses", xlabel="epoch", ylabel="loss (log)",
                         size=(640, 420), logy=True)]
    if scores:
        panels.append(line_chart(scores, title=f"{title}: validation {score_name}", xlabel="epoch",
                                 ylabel=score_name, size=(640, 420), ylim=(0, 1)))
    viz.save_png(path, viz.side_by_side(panels))
