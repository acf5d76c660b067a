"""One `train`, `evaluate_run`, `predict_run` and `load_run` for every task: the Python API
behind `kseg train`, `kseg evaluate` and `kseg predict`, with the same options under their
Python names (`learning_rate` for --lr, `model_kwargs` for --set, `preset` for --model-config).

Like the command, the API takes the run folder's lock (`kseg.utils.run_lock`) while it writes
into it: `train` throughout the training, `evaluate_run` and `predict_run` when their output
lies inside the run folder (a reader writing elsewhere runs beside a live training).
"""

import os

from kseg.tasks.base import RunInfo
from kseg.tasks.instance import InstanceTask
from kseg.tasks.panoptic import PanopticTask
from kseg.tasks.semantic import SemanticTask
from kseg.training.spec import run_task
from kseg.utils.run_lock import lock_if_inside

TASKS = {"semantic": SemanticTask(), "instance": InstanceTask(), "panoptic": PanopticTask()}


def get_task(name):
    """The task called `name` ("semantic", "instance" or "panoptic")."""
    if name not in TASKS:
        raise ValueError(f"`task` {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name]


def task_of_run(run_dir):
    """The task a run folder was trained for (run.json's "task", "semantic" when absent)."""
    return get_task(run_task(run_dir, tuple(TASKS)))


def train(output_dir, task="semantic", spec=None, model=None, preset=None, model_kwargs=None, init=None, epochs=50,
          steps_per_epoch=None, batch_size=4, learning_rate=1e-3, schedule="cosine", augment=True, strategy="default",
          cpu_replicas=None, lr_reference_batch=None, mixed_precision=False, jit_compile=False, time_budget=None,
          seed=0, verbose=1, loss=None, class_weights=None, **data):
    """Trains a model of `task` and writes the run folder `output_dir` (what `kseg train` does).

    Args:
        output_dir: the run folder (created; rerunning the same call resumes a killed run).
        task: "semantic", "instance" or "panoptic".
        spec: the task's data spec (`DataSpec`, `InstanceDataSpec`, `PanopticDataSpec`); or
        **data: its data options instead (`kseg train`'s data flags by Python name, e.g.
            images=, masks=, num_classes= (semantic); shapes=, coco_json=, label_maps=,
            yolo_data= (instance); panoptic_json=, panoptic_pngs= (panoptic); image_size=,
            val_fraction=, ...); the split seed is `seed`.
        model: a model name: semantic any of `kseg.models.MODEL_NAMES` (default "unet"),
            instance "mask_rcnn", panoptic "panoptic_fpn" (default) or "maskformer".
        preset: detectors: "small" (default), "mobilenet" (Mask R-CNN, Panoptic FPN) or "resnet50".
        model_kwargs: constructor arguments on top of the preset.
        init: a .keras file to fine-tune (its architecture and weights; `kseg.training.finetune`).
        epochs, steps_per_epoch, batch_size, learning_rate, schedule, augment, strategy,
            cpu_replicas, lr_reference_batch, mixed_precision, jit_compile, time_budget, seed,
            verbose: as `kseg.training.train` (batch_size is the global batch).
        loss, class_weights: semantic only (default "ce"; `kseg.training.build_loss`).

    Returns:
        {"history", "paths", "metrics" (metrics.json; None on a worker other than the chief),
        "run" (run.json)}.

    Raises:
        ValueError: naming the argument, the value seen and the value expected.
        RunFolderBusy: another process writes `output_dir`.
    """
    task = get_task(task)
    if spec is None:
        spec = task.make_spec(split_seed=seed, **data)
    elif data:
        raise ValueError(f"`spec` and {', '.join(f'`{k}`' for k in sorted(data))}: expected a data spec or its "
                         "options, not both")
    settings = dict(model=model, preset=preset, model_kwargs=model_kwargs, init=init, epochs=epochs,
                    steps_per_epoch=steps_per_epoch, batch_size=batch_size, learning_rate=learning_rate,
                    schedule=schedule, augment=augment, strategy=strategy, cpu_replicas=cpu_replicas,
                    lr_reference_batch=lr_reference_batch, mixed_precision=mixed_precision, jit_compile=jit_compile,
                    time_budget=time_budget, seed=seed, verbose=verbose)
    if task.name == "semantic":
        settings.update(loss=loss or "ce", class_weights=class_weights)
    elif not isinstance(augment, bool):
        raise ValueError(f"`augment` {augment!r}: the {task.name} task takes True or False (random flips)")
    else:
        task.check_options({"loss": loss, "class_weights": class_weights}, (), f"the {task.name} task (its model "
                           "computes its own losses)")
    return task.train(spec, output_dir, **settings)


def evaluate_run(run_dir, model_path=None, output=None, batch_size=4, verbose=1, **data):
    """Scores a run's model on its validation data, or on other data (what `kseg evaluate` does).

    Args:
        run_dir: a run folder written by `train` (its task is read from run.json).
        model_path: the model file (default: the run's best.keras).
        output: the JSON report (default `run_dir`/evaluation.json).
        batch_size: images per forward pass.
        verbose: a progress bar.
        **data: other data to score on: semantic images=, masks=; instance images= with
            coco_json= or label_maps=, or yolo_data=; panoptic panoptic_json=,
            panoptic_pngs=, images=.

    Returns:
        the report written to `output` (semantic: per-class IoU/Dice and mIoU; instance: COCO
        mask/box AP; panoptic: PQ/SQ/RQ), plus "output".
    """
    task = task_of_run(run_dir)
    output = output or os.path.join(run_dir, "evaluation.json")
    with lock_if_inside(run_dir, output):
        return task.evaluate_run(run_dir, output, model_path=model_path, batch_size=batch_size, verbose=verbose,
                                 **data)


def predict_run(run_dir, images, output_dir, model_path=None, score_threshold=None, verbose=1):
    """Writes the predictions of a run's model for image files (what `kseg predict` does).

    Args:
        run_dir: a run folder written by `train`.
        images: an image file or folder, or a list of them.
        output_dir: created if missing; files are written atomically: semantic
            `<stem>_mask.png` + `<stem>_overlay.png`; instance `<stem>_instances.png` +
            `<stem>_instances.json`; panoptic `<stem>_panoptic.png` + `panoptic.json`.
        model_path: the model file (default: the run's best.keras).
        score_threshold: instance runs: detections kept (default 0.5).

    Returns:
        semantic and instance: {image path: (file, file)}; panoptic: {"pictures", "json"}.
    """
    task = task_of_run(run_dir)
    with lock_if_inside(run_dir, output_dir):
        return task.predict_run(run_dir, images, output_dir, model_path=model_path, score_threshold=score_threshold,
                                verbose=verbose)


def load_run(run_dir):
    """What a run folder holds: a `RunInfo` (task name, run.json dict with "data" as the task's
    spec, the spec, the default model path).

    Raises:
        FileNotFoundError: no run.json.
        ValueError: naming the file, the field, the value seen and the value expected.
    """
    task = task_of_run(run_dir)
    run = task.load_run(run_dir)
    return RunInfo(task=task.name, run_json=run, spec=run["data"], model_path=task.default_model_path(run_dir))
