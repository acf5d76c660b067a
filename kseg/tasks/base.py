"""The interface every kseg task implements (semantic, instance, panoptic), and what a run
folder says about itself (`RunInfo`).

A task owns one problem: its data spec, how its inputs are read, its model, its losses and
metrics, evaluation and prediction. `kseg.tasks.train`, `evaluate_run`, `predict_run` and
`load_run` are written once against this interface (as Model Garden's vision tasks are).
"""

import dataclasses
import os

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


@dataclasses.dataclass
class RunInfo:
    """What a run folder holds, read back from its run.json.

    Attributes:
        task: the task name ("semantic", "instance", "panoptic").
        run_json: run.json's dict; "data" is the spec below, the rest as written.
        spec: the data spec (`DataSpec`, `InstanceDataSpec`, `PanopticDataSpec`).
        model_path: the model file evaluate/predict/export use by default (best.keras, or
            final.keras of a detection run without a best epoch).
    """

    task: str
    run_json: dict
    spec: object
    model_path: str


class Task:
    """One segmentation problem: the pieces a run is made of.

    Subclasses set the class attributes and implement the methods below; `train`,
    `evaluate_run` and `predict_run` use nothing else.

    Attributes:
        name: run.json's "task".
        spec_class: the data spec class, saved in run.json's "data".
        models: the model names the task trains (the first is the default).
        data_options: the keyword arguments of `make_spec` (the data options of `kseg train`).
        evaluate_options: the data keyword arguments `evaluate_run` takes (other data to score on).
    """

    name = None
    spec_class = None
    models = ()
    data_options = ()
    evaluate_options = ()

    def make_spec(self, **data):
        """The task's data spec from the data options of `kseg train` (Python names)."""
        raise NotImplementedError

    def load_splits(self, spec):
        """Reads and checks the data of `spec` before any training: (train, val, extra)."""
        raise NotImplementedError

    def build_model(self, *args, **kwargs):
        """An uncompiled model for the run's data."""
        raise NotImplementedError

    def build_inputs(self, spec, data, batch_size, augment=True, seed=0, shard=None, skip=0):
        """The training tf.data pipeline of `data` (one split of `load_splits`): shuffled,
        augmented, repeating, batches of `batch_size`, one input pipeline's `shard` with the
        `skip` elements a resumed run has trained on dropped."""
        raise NotImplementedError

    def build_losses(self, *args, **kwargs):
        """The loss `compile` takes, or None where the model computes its own."""
        return None

    def build_metrics(self, *args, **kwargs):
        """The metrics `compile` takes ([] where validation scores the model after each epoch)."""
        return []

    def evaluate(self, model, data, *args, **kwargs):
        """The JSON-safe report of `model` on `data` (what metrics.json and evaluation.json hold)."""
        raise NotImplementedError

    def predict(self, model, image, **kwargs):
        """The prediction of one image of any size, in its own pixels."""
        raise NotImplementedError

    def train(self, spec, output_dir, **settings):
        """Trains into the run folder `output_dir`; returns {"history", "paths", "metrics", "run"}."""
        raise NotImplementedError

    def load_run(self, run_dir):
        """run.json of a run of this task, "data" as the task's spec."""
        raise NotImplementedError

    def load_model(self, run_dir, path=None):
        """The model of `path`, default the run's (`default_model_path`), checked to be the task's."""
        raise NotImplementedError

    def default_model_path(self, run_dir):
        return os.path.join(run_dir, "best.keras")

    def evaluate_run(self, run_dir, output, model_path=None, batch_size=4, verbose=1, **data):
        """Scores a run's model on its validation data (or `data`), writes `output`; returns the report."""
        raise NotImplementedError

    def predict_run(self, run_dir, images, output_dir, model_path=None, score_threshold=None, verbose=1):
        """Writes the task's prediction files of `images` into `output_dir`; returns what it wrote."""
        raise NotImplementedError

    def format_report(self, report):
        """The fixed-width table `kseg` prints of a report."""
        raise NotImplementedError

    def check_options(self, given, allowed, what):
        """Raises when `given` (a dict of options, None = not given) holds one outside `allowed`."""
        unknown = [f"`{k}`" for k, v in given.items() if v is not None and k not in allowed]
        if unknown:
            expected = f" (expected some of {', '.join(f'`{k}`' for k in allowed)})" if allowed else ""
            raise ValueError(f"{', '.join(unknown)}: not an option of {what}{expected}")


def image_files(inputs):
    """The image files of `inputs` (files, or folders whose .png/.jpg/.jpeg/.bmp files are
    taken in name order).

    Raises:
        FileNotFoundError: an input that is neither a file nor a folder, or no image at all.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = []
    for item in map(str, inputs):
        if os.path.isdir(item):
            files += sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"input {item!r} is neither an image file nor a folder.")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {inputs}.")
    return files
