"""`export_run`: a run folder of any task -> its TFLite variants, files and report.

What `kseg export` does, callable from Python:

    from export import export_run
    report = export_run("runs/isbi")                  # RUN/export/*.tflite, export_report.{json,md}

The run's run.json says the task. A semantic run goes through `export.report.export_model`: the
image size, channels, remap, labels and ignored class come from run.json, parity is measured on
the run's validation images and int8 is calibrated on its training images (each overridable).
An instance or panoptic run (Mask R-CNN, Panoptic FPN, MaskFormer) goes through
`export.detector_report.export_detector` at the run's size, on its own data.
"""

import os

import numpy as np

from export.tflite import VARIANTS

# export_run's arguments that only a semantic export takes, with their defaults.
SEMANTIC_ONLY = {"image_size": None, "images": None, "masks": None, "calibration": None, "channels": None,
                 "remap": None, "labels": None, "ignore_class": None, "head": "logits", "rgb_input": False}


class ExportFailed(RuntimeError):
    """A variant missed its tolerance; the files and the report were written all the same.

    Attributes:
        report: the report dict (`report["passed"]` is False).
        output_dir: the folder holding the files and export_report.{json,md}.
    """

    def __init__(self, report, output_dir):
        self.report = report
        self.output_dir = output_dir
        failed = [v for v, e in report["variants"].items() if not e["passed"]]
        super().__init__(f"variant(s) {', '.join(failed)} missed their tolerance; see {output_dir}/export_report.md")


def default_output_dir(run_dir):
    """Where `export_run` writes when no `output_dir` is given: RUN/export (./export without a run)."""
    return os.path.join(run_dir or ".", "export")


def export_run(run_dir=None, output_dir=None, *, variants=VARIANTS, model_path=None, image_size=None, images=None,
               masks=None, calibration=None, num_images=16, num_calibration=100, channels=None, remap=None,
               ignore_class=None, labels=None, input_type="uint8", head="logits", rgb_input=False, int8_io="uint8",
               allow_flex=False, metadata=True, gpu=True, name=None, version="1", tolerances=None, check=True,
               verbose=True):
    """Exports a trained run (or a .keras model) to TFLite variants and checks each one: `kseg export`.

    Takes the run folder's lock while it writes inside it (`kseg.utils.run_lock`).

    Args:
        run_dir: a folder written by `kseg train` (any task); None to export `model_path` alone
            (semantic models only; then `images` is required).
        output_dir: folder for `<name>_<variant>.tflite` and export_report.{json,md}
            (default `default_output_dir(run_dir)`: RUN/export).
        variants: any of "fp32", "fp16", "dynamic", "int8".
        model_path: the .keras file (default: the run's best.keras; detector runs: final.keras
            when there is no best.keras).
        image_size: (H, W) of the exported input (default: the run's image or crop size, else
            the model's).
        images, masks: folders of parity images and their masks (default: the run's validation
            pairs); masks give the mIoU per variant.
        calibration: folder of int8 calibration images (default: the run's training images,
            else `images`).
        num_images, num_calibration: parity and calibration images used (ints >= 1).
        channels: 1 or 3, the model's input channels (default: the run's, else the model's).
        remap: {mask value: class id} of `masks` (default: the run's).
        ignore_class: ground-truth label the mIoU ignores (default: the run's).
        labels: class names, a list (default: the run's).
        input_type, head, rgb_input, int8_io, allow_flex, metadata, gpu, name, version: as
            `export.report.export_model` (`head` is its `output`): semantic exports only, except
            `name`.
        tolerances: {variant: {key: value}} overriding the parity bounds; keys
            `export.report.TOLERANCE_KEYS` (semantic) or `export.detector_report.TOLERANCE_KEYS`.
        check: raise `ExportFailed` when a variant misses its tolerance (files written first).
        verbose: print progress.

    Returns:
        The report dict, as written to export_report.json (`export_model`'s or `export_detector`'s).

    Raises:
        ExportFailed: with `check`, a variant missed its tolerance.
        ValueError, OSError: bad arguments or files, naming the argument or file.
    """
    from kseg import tasks
    from kseg.utils.run_lock import lock_if_inside

    if run_dir is None and model_path is None:
        raise ValueError("`run_dir` or `model_path`: expected a run folder written by kseg train or a .keras model "
                         "file; got neither")
    if isinstance(labels, str):
        raise ValueError(f"`labels` {labels!r}: expected a list of class names")
    info = tasks.load_run(run_dir) if run_dir is not None else None
    task = tasks.get_task(info.task if info else "semantic")
    output_dir = output_dir or default_output_dir(run_dir)
    options = dict(image_size=image_size, images=images, masks=masks, calibration=calibration, channels=channels,
                   remap=remap, labels=labels, ignore_class=ignore_class, head=head, rgb_input=rgb_input)
    with lock_if_inside(run_dir, output_dir):
        if task.name == "semantic":
            report = _export_semantic(
                task, info, output_dir, model_path, variants=variants, num_images=num_images,
                num_calibration=num_calibration, input_type=input_type, int8_io=int8_io, allow_flex=allow_flex,
                metadata=metadata, gpu=gpu, name=name, version=version, tolerances=tolerances, verbose=verbose,
                **options)
        else:
            given = [f"`{key}`" for key, default in SEMANTIC_ONLY.items() if options[key] != default]
            if given:
                raise ValueError(f"{', '.join(given)}: not options of exporting an {task.name} run (it exports the "
                                 "detector at the run's size, calibrates int8 on the run's training images and "
                                 "checks every variant on its validation images)")
            report = _export_detector_run(task, info, output_dir, model_path, variants=variants,
                                          num_images=num_images, num_calibration=num_calibration, name=name,
                                          tolerances=tolerances, verbose=verbose)
    if check and not report["passed"]:
        raise ExportFailed(report, output_dir)
    return report


def markdown(report):
    """`export_run`'s report as the Markdown page it wrote (semantic or detector)."""
    from export.detector_report import detector_markdown
    from export.report import markdown as semantic_markdown

    return detector_markdown(report) if "metric" in report else semantic_markdown(report)


def check_tolerances(tolerances, keys):
    """Raises a ValueError naming `tolerances` unless it is {variant: {key in `keys`: number}}."""
    if not isinstance(tolerances, dict):
        raise ValueError(f"`tolerances` {tolerances!r}: expected {{variant: {{key: number}}}}, e.g. "
                         "{'int8': {'min_agreement': 0.97}}")
    for variant, row in tolerances.items():
        if variant not in VARIANTS:
            raise ValueError(f"`tolerances`: variant {variant!r}, expected one of {', '.join(VARIANTS)}")
        if not isinstance(row, dict):
            raise ValueError(f"`tolerances`[{variant!r}] {row!r}: expected {{key: number}}")
        for key, value in row.items():
            if key not in keys:
                raise ValueError(f"`tolerances`[{variant!r}]: key {key!r}, expected one of {', '.join(keys)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"`tolerances`[{variant!r}][{key!r}] {value!r}: expected a number")


def _export_semantic(task, info, output_dir, model_path, *, image_size, images, masks, calibration, channels, remap,
                     labels, ignore_class, head, rgb_input, num_images, num_calibration, tolerances, **options):
    """export_model on the run's data (or the given folders) at the run's (or given) size."""
    from export.report import TOLERANCE_KEYS, export_model, image_pairs, load_examples
    from kseg.training import split

    spec = info.spec if info else None
    check_tolerances(tolerances or {}, TOLERANCE_KEYS)
    model = task.load_model(None, model_path or info.model_path)
    image_size = image_size or (spec and (spec.image_size or spec.crop_size))
    channels = channels or (spec.channels if spec else int(model.input.shape[-1]))
    if images:
        pairs = image_pairs(images, masks)
    elif spec:
        _, pairs = split(spec)
    else:
        raise ValueError("`images`: exporting `model_path` without `run_dir` needs real images to check the export "
                         "on (a folder; add `masks` for mIoU)")
    if calibration:
        calibration_pairs = image_pairs(calibration)
    else:
        calibration_pairs = split(spec)[0] if spec else pairs
    if image_size is None:
        shape = model.input.shape
        if shape[1] is None or shape[2] is None:
            raise ValueError(f"`image_size`: the model's input {tuple(shape)} has a dynamic size; expected (H, W)")
        image_size = (shape[1], shape[2])
    remap = remap if remap is not None else (spec.remap if spec else None)
    # With rgb_input the exported graph takes RGB frames, so it is checked on RGB images.
    reading = dict(image_size=image_size, channels=3 if rgb_input else channels)
    examples = load_examples(pairs, remap=remap, limit=num_images, **reading)
    calibration_images = load_examples(calibration_pairs, limit=num_calibration, **reading)["images"]
    return export_model(
        model, output_dir, examples=examples, calibration=calibration_images, image_size=image_size, output=head,
        rgb_input=rgb_input, labels=labels or (spec.class_names if spec else None),
        ignore_class=ignore_class if ignore_class is not None else (spec.ignore_class if spec else None),
        tolerances=tolerances, **options)


def _export_detector_run(task, info, output_dir, model_path, *, variants, num_images, num_calibration, name,
                         tolerances, verbose):
    """export_detector at the run's size: parity on its validation examples, int8 calibrated on its training ones."""
    from export.detector_report import TOLERANCE_KEYS, export_detector
    from kseg.training.examples import resized

    check_tolerances(tolerances or {}, TOLERANCE_KEYS)
    model = task.load_model(None, model_path or info.model_path)
    train, val, categories = task.load_splits(info.spec)
    val = resized(val, model.image_size)
    examples = [val[i] for i in range(min(num_images, len(val)))]
    calibration = None
    if "int8" in variants:
        train = resized(train, model.image_size)
        picks = np.linspace(0, len(train) - 1, min(num_calibration, len(train))).round().astype(int)
        calibration = np.stack([np.asarray(train[int(i)]["image"], np.float32) for i in picks])
    return export_detector(model, output_dir, examples, categories, calibration=calibration, variants=variants,
                           name=name, tolerances=tolerances, verbose=verbose)
