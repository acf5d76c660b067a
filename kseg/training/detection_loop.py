"""The training loop of instance and panoptic runs: data -> detector -> fit, written once for
every detection task (`kseg.tasks.InstanceTask`, `kseg.tasks.PanopticTask`).

The run folder holds the files of a semantic run (`kseg.training.trainer`), with the task's
score (mask AP, PQ) in place of mIoU:

    run.json        task, the data spec, categories, model preset and kwargs, training settings
    best.keras      the model of the epoch with the best validation score (atomic writes)
    final.keras     the model after the last epoch
    history.csv     one row per epoch: the losses, the val_* scores, seconds
    curves.png      loss and score curves, redrawn every epoch
    logs/, backup/  TensorBoard; BackupAndRestore (rerunning the same command resumes)
    metrics.json    the per-class report of best.keras on the validation set
"""

import os

import keras

from kseg import data as kdata
from kseg.models.base import dtype_policy_scope
from kseg.training.detection_callbacks import InstanceCurvePlot, TaskValidation
from kseg.training.detection_runs import default_model_path
from kseg.training.examples import resized
from kseg.training.finetune import init_model, task_families
from kseg.training.loop import distribution_record, fit_run, start_run, training_input
from kseg.training.trainer import build_schedule


def train_detection(task, spec, output_dir, model=None, preset=None, model_kwargs=None, epochs=50,
                    steps_per_epoch=None, batch_size=4, learning_rate=1e-3, schedule="cosine", augment=True,
                    time_budget=None, seed=0, verbose=1, strategy="default", cpu_replicas=None, mixed_precision=False,
                    jit_compile=False, lr_reference_batch=None, init=None):
    """Trains the detector of a detection task into a run folder (module docstring).

    Args:
        task: an `InstanceTask` or `PanopticTask`: its data, model, evaluation and scores.
        spec: the task's data spec.
        output_dir: the run folder (created; rerunning the same command resumes a killed run).
        model: one of `task.models` (None: the task's first).
        preset: a preset of the model (None: "small", or with `init` the file's model);
            `model_kwargs` override its constructor arguments.
        epochs, steps_per_epoch: length of training; steps default to one pass over the data.
        batch_size: images per step: the global batch, split over the strategy's replicas.
        learning_rate, schedule: peak rate of Adam (gradients clipped at norm 10) and its
            decay ("constant", "cosine", "poly"; `kseg.training.build_schedule`).
        augment: random horizontal flips.
        time_budget: stop after the epoch that ends past this many seconds of training.
        seed: seeds Keras/TF/NumPy and the data order.
        strategy, cpu_replicas, mixed_precision, jit_compile, lr_reference_batch: as
            `kseg.training.train`.
        init: a .keras file of the task's model to fine-tune (`kseg.training.finetune.init_model`):
            its architecture and weights for the run's categories and image size; `preset`,
            when given, must describe it.

    Returns:
        {"history", "paths", "metrics" (metrics.json), "run" (run.json)}.
    """
    model = task.check_model(model)
    dist, rate = start_run(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                           learning_rate=learning_rate, seed=seed, strategy=strategy, cpu_replicas=cpu_replicas,
                           lr_reference_batch=lr_reference_batch, output_dir=output_dir)
    train_examples, val_examples, categories = task.load_splits(spec)
    if not len(train_examples) or not len(val_examples):
        raise kdata.DataError(f"{len(train_examples)} training and {len(val_examples)} validation images, expected "
                              "at least one of each")
    if steps_per_epoch is None:
        steps_per_epoch = max(len(train_examples) // batch_size, 1)
    train_ds = training_input(dist, lambda batch, shard, skip: task.build_inputs(
        spec, train_examples, batch, augment=augment, seed=seed, shard=shard, skip=skip),
        batch_size, output_dir, steps_per_epoch)
    model_kwargs = dict(model_kwargs or {})
    with dtype_policy_scope("mixed_float16" if mixed_precision else None), dist.scope():
        if init is None:
            preset = preset or "small"
            net = task.build_model(preset, categories, spec.image_size, model=model, **model_kwargs)
        else:
            net, init_report = init_model(init, num_classes=len(categories), size=spec.image_size,
                                          families=task_families(model), expected=task.init_expectation(model, preset),
                                          overrides=model_kwargs)
        net.compile(optimizer=keras.optimizers.Adam(build_schedule(schedule, rate, epochs * steps_per_epoch),
                                                    clipnorm=10.0), jit_compile=jit_compile)
    val = resized(val_examples, spec.image_size)
    config = {k: v for k, v in net.get_config().items() if k not in ("name", "trainable", "dtype")}
    run = {
        "task": task.name, "data": spec.to_json(), "categories": categories,
        "model": {"name": model, "config": preset, "kwargs": model_kwargs, "constructor": config,
                  "params": int(net.count_params())},
        "init": None if init is None else init_report,
        "train": {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
                  "schedule": schedule, "augment": augment, "seed": seed,
                  **distribution_record(dist, strategy, rate, lr_reference_batch, mixed_precision, jit_compile),
                  "train_images": len(train_examples), "val_images": len(val_examples)},
    }

    def evaluate(best):
        report = task.evaluate(best, val, categories, batch_size, verbose=verbose)
        return {**report, "model": os.path.basename(default_model_path(output_dir))}

    return fit_run(
        net, run, output_dir, train_ds, time_budget=time_budget, verbose=verbose, monitor=task.monitor,
        validation=TaskValidation(task, val, categories, batch_size=batch_size),
        curves=lambda png, csv: InstanceCurvePlot(png, csv, title=f"{model} ({preset or '--init'})",
                                                  losses=net.loss_names(), score_key=task.score_key,
                                                  score_name=task.score_name),
        evaluate=evaluate, load=lambda: task.load_model(output_dir),
    )
