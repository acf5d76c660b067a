"""What the instance and panoptic tasks share: the detection loop, run loading, evaluation of a
run on its validation examples and the options of `kseg train` for detection data."""

import os

from kseg.data.instance_pipeline import instance_dataset
from kseg.tasks.base import Task
from kseg.training.detection_loop import train_detection
from kseg.training.detection_runs import default_model_path, load_model_file
from kseg.training.detection_spec import DEFAULT_SHAPES
from kseg.training.examples import resized
from kseg.training.finetune import config_expectation
from kseg.utils import write_json


class DetectionTask(Task):
    """A task whose model finds instances and computes its own losses (Mask R-CNN, Panoptic FPN,
    MaskFormer); `kseg.training.detection_loop.train_detection` trains it.

    Subclass attributes (besides `Task`'s):
        presets: {model name: {preset name: constructor kwargs}}.
        builders: {model name: (preset, categories, image_size, **kwargs) -> model}.
        model_classes: the classes `load_model` accepts, and their description.
        monitor: the val_* entry best.keras follows (higher is better).
        score_key, score_name: the val_* columns of the curves' second panel and its label.
        semantic: the training batches carry the semantic map.
    """

    presets = {}
    builders = {}
    model_classes = ((), "")
    monitor = score_key = score_name = None
    semantic = False

    def check_model(self, model):
        """The model name the run trains: `model`, or the task's default when None."""
        model = model or self.models[0]
        if model not in self.models:
            raise ValueError(f"`model` {model!r} for the {self.name} task, expected one of {', '.join(self.models)}")
        return model

    def build_model(self, preset, categories, image_size, model=None, **kwargs):
        """The task's `model` of a preset for the run's `categories` at `image_size` (H, W), `kwargs` on top."""
        return self.builders[self.check_model(model)](preset, categories, image_size, **kwargs)

    def build_inputs(self, spec, data, batch_size, augment=True, seed=0, shard=None, skip=0):
        """`kseg.data.instance_dataset` of the examples `data`: random flips when `augment`."""
        return instance_dataset(data, image_size=spec.image_size, max_instances=spec.max_instances,
                                batch_size=batch_size, shuffle=True, flip=augment, seed=seed, semantic=self.semantic,
                                shard=shard, skip=skip)

    def init_expectation(self, model, preset):
        """`init_model`'s `expected` for a `preset` of `model` (None: no preset given)."""
        if preset is None:
            return None
        return config_expectation(preset, self.presets[model], self.model_classes[0][0])

    def log_entries(self, report):
        """{val_* name: float or None} of a report, for the epoch logs."""
        raise NotImplementedError

    def train(self, spec, output_dir, **settings):
        """`kseg.training.detection_loop.train_detection` of this task (its arguments)."""
        return train_detection(self, spec, output_dir, **settings)

    def default_model_path(self, run_dir):
        return default_model_path(run_dir)

    def load_model(self, run_dir, path=None):
        classes, expected = self.model_classes
        return load_model_file(run_dir, path, classes, expected)

    def evaluation_examples(self, run, **data):
        """The examples a run is scored on: `data` (checked by the task) or its validation split."""
        raise NotImplementedError

    def evaluate_run(self, run_dir, output, model_path=None, batch_size=4, verbose=1, **data):
        self.check_options(data, self.evaluate_options, f"evaluating an {self.name} run")
        run = self.load_run(run_dir)
        examples = self.evaluation_examples(run, **data)
        model = self.load_model(run_dir, model_path)
        report = self.evaluate(model, resized(examples, model.image_size), run["categories"], batch_size,
                               verbose=verbose)
        report["model"] = os.path.abspath(model_path or self.default_model_path(run_dir))
        write_json(output, report)
        return {**report, "output": output}

    @staticmethod
    def shapes_or(source, shapes):
        """The image count of a synthetic set: `shapes`, default `DEFAULT_SHAPES`; None for file data."""
        if source != "shapes":
            return None
        return DEFAULT_SHAPES if shapes is None else shapes
