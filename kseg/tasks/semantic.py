"""The semantic task: a class per pixel from image/mask folders (U-Net family, SegFormer)."""

import os

import keras

from kseg import data as kdata
from kseg.models import build_model
from kseg.tasks.base import Task, image_files
from kseg.training.evaluate import evaluate_model, format_table
from kseg.training.predict import predict_files, predict_logits
from kseg.training.spec import DataSpec, load_run
from kseg.training.trainer import (
    build_loss,
    build_metrics,
    load_splits,
    split,
    train,
    train_dataset,
    val_dataset,
    validate,
)
from kseg.utils import write_json


class SemanticTask(Task):
    """Semantic segmentation: images [B, H, W, C] -> logits [B, H, W, K], masks [B, H, W] of class ids.

    The loop is `kseg.training.train` (loss and mIoU compiled into the model, per-class
    IoU/Dice after each epoch).
    """

    name = "semantic"
    spec_class = DataSpec
    models = ("unet",)  # any name of kseg.models.MODEL_NAMES; "unet" is the default
    data_options = ("images", "masks", "num_classes", "val_images", "val_masks", "val_fraction", "ignore_class",
                    "remap", "channels", "image_size", "crop_size", "class_names", "split_seed")
    evaluate_options = ("images", "masks")

    def make_spec(self, images=None, masks=None, num_classes=None, image_size=(256, 256), **data):
        """A `DataSpec` (its arguments; `image_size` None keeps file sizes)."""
        missing = [f"`{k}`" for k, v in (("images", images), ("masks", masks), ("num_classes", num_classes))
                   if v is None]
        if missing:
            raise ValueError(f"{', '.join(missing)}: required by the semantic task (image and mask folders, the "
                             "class count)")
        self.check_options(data, self.data_options, "the semantic task's data")
        return DataSpec(images=images, masks=masks, num_classes=num_classes, image_size=image_size, **data)

    def load_splits(self, spec):
        """(train pairs, val pairs, {"train"/"val": file summary}), every file checked."""
        return load_splits(spec)

    def build_model(self, spec, model="unet", **kwargs):
        """`kseg.models.build_model(model)` for the spec's classes and input shape."""
        return build_model(model, num_classes=spec.num_classes, input_shape=spec.model_input_shape, **kwargs)

    def build_inputs(self, spec, data, batch_size, augment=True, seed=0, shard=None, skip=0):
        return train_dataset(spec, data, batch_size, augment=augment, seed=seed, shard=shard, skip=skip)

    def build_losses(self, spec, loss="ce", class_weights=None):
        """A kseg loss by name (`kseg.training.LOSSES`)."""
        return build_loss(loss, spec.num_classes, spec.ignore_class, class_weights)

    def build_metrics(self, spec):
        """mIoU and pixel accuracy (`kseg.training.trainer.build_metrics`)."""
        return build_metrics(spec)

    def evaluate(self, model, data, spec, verbose=0):
        """Per-class IoU/Dice, mIoU and pixel accuracy of `model` on the dataset `data` (`val_dataset`)."""
        return evaluate_model(model, data, spec.num_classes, spec.ignore_class, spec.class_names, verbose=verbose)

    def predict(self, model, image, image_size=None):
        """Logits [H, W, K] of one image [H, W, C] at its own size (`predict_logits`)."""
        return predict_logits(model, image, image_size)

    def train(self, spec, output_dir, model=None, preset=None, **settings):
        """`kseg.training.train` (its arguments); `preset` is for detectors."""
        if preset is not None:
            raise ValueError(f"`preset` {preset!r}: the semantic task's models have none (pick one by `model`, "
                             "e.g. attention_unet, and set constructor arguments by `model_kwargs`)")
        return train(spec, output_dir, model=model, **settings)

    def load_run(self, run_dir):
        return load_run(run_dir)

    def load_model(self, run_dir, path=None):
        import kseg.losses  # noqa: F401  (registers the serializable classes a .keras file names)
        import kseg.metrics  # noqa: F401
        import kseg.models  # noqa: F401

        path = path or self.default_model_path(run_dir)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file {path} not found: expected a .keras file written by kseg train.")
        try:
            return keras.models.load_model(path, safe_mode=True)
        except Exception as e:
            raise ValueError(f"cannot load model {path}: {e}; expected a .keras file written by kseg.") from e

    def evaluate_run(self, run_dir, output, model_path=None, batch_size=4, verbose=1, **data):
        self.check_options(data, self.evaluate_options, "evaluating a semantic run")
        spec = self.load_run(run_dir)["data"]
        model = self.load_model(run_dir, model_path)
        if data.get("images"):
            pairs = kdata.find_pairs(data["images"], data.get("masks") or data["images"])
        else:
            _, pairs = split(spec)  # the run's validation pairs
        validate(spec, pairs, "evaluation")
        summary = self.evaluate(model, val_dataset(spec, pairs, batch_size), spec, verbose=verbose)
        write_json(output, summary)
        return {**summary, "output": output}

    def predict_run(self, run_dir, images, output_dir, model_path=None, score_threshold=None, verbose=1):
        self.check_options({"score_threshold": score_threshold}, (), "predicting with a semantic run")
        spec = self.load_run(run_dir)["data"]
        model = self.load_model(run_dir, model_path)
        return predict_files(model, image_files(images), output_dir, image_size=spec.image_size,
                             channels=spec.channels, num_classes=spec.num_classes, ignore_class=spec.ignore_class,
                             verbose=verbose)

    def format_report(self, report):
        return format_table(report)
