"""The training loop behind `kseg train`: data -> model -> compile -> fit, with every artefact.

A run folder holds:
    run.json        what was trained on and how (read back by evaluate/predict)
    best.keras      the model of the best validation epoch (atomic writes)
    final.keras     the model after the last epoch
    history.csv     one row per epoch (rewritten atomically; resumed runs continue it)
    curves.png      loss and metric curves, redrawn every epoch
    logs/           TensorBoard
    backup/         BackupAndRestore state: rerunning the same command resumes a killed run
                    (or one stopped by a failed write); removed once the run is complete
    metrics.json    per-class IoU / Dice and mIoU of best.keras on the validation set
    .lock           the lock of the one process writing the folder (`kseg.utils.run_lock`)
"""

import os

import keras

from kseg import data as kdata
from kseg import losses as klosses
from kseg import metrics as kmetrics
from kseg.models import build_model
from kseg.models.base import dtype_policy_scope
from kseg.training import callbacks as kcallbacks
from kseg.training.evaluate import evaluate_model
from kseg.training.finetune import init_model, model_expectation, task_families
from kseg.training.loop import distribution_record, fit_run, start_run, training_input

LOSSES = ("ce", "weighted_ce", "dice", "ce_dice", "focal")
SCHEDULES = ("constant", "cosine", "poly")


def build_loss(name, num_classes, ignore_class=None, class_weights=None):
    """Loss by name; `class_weights` (K floats) is required by "weighted_ce"."""
    if name == "ce":
        return klosses.SparseCrossEntropy(ignore_class=ignore_class)
    if name == "weighted_ce":
        if class_weights is None or len(class_weights) != num_classes:
            raise ValueError(f'loss "weighted_ce" needs {num_classes} class weights; got {class_weights!r}.')
        return klosses.WeightedCrossEntropy(class_weights=list(class_weights), ignore_class=ignore_class)
    if name == "dice":
        return klosses.Dice(ignore_class=ignore_class)
    if name == "ce_dice":
        return klosses.CEDice(ignore_class=ignore_class)
    if name == "focal":
        return klosses.Focal(ignore_class=ignore_class)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}.")


def build_metrics(spec):
    """The metrics a semantic model is compiled with: mIoU and pixel accuracy (ignore_class left out)."""
    return [kmetrics.MeanIoU(spec.num_classes, ignore_class=spec.ignore_class, name="mean_iou"),
            kmetrics.PixelAccuracy(spec.num_classes, ignore_class=spec.ignore_class, name="pixel_accuracy")]


def build_schedule(name, learning_rate, total_steps):
    """Constant, cosine decay or polynomial (power 0.9, as in DeepLab) over `total_steps`."""
    if name == "constant":
        return learning_rate
    if name == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps, alpha=0.01)
    if name == "poly":
        return keras.optimizers.schedules.PolynomialDecay(
            learning_rate, decay_steps=total_steps, end_learning_rate=learning_rate * 0.01, power=0.9
        )
    raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}.")


def split(spec):
    """(train pairs, validation pairs) of `spec`: its validation folders, or a held-out share."""
    pairs = kdata.find_pairs(spec.images, spec.masks)
    if spec.val_images:
        return pairs, kdata.find_pairs(spec.val_images, spec.val_masks or spec.val_images)
    return kdata.split_pairs(pairs, val_fraction=spec.val_fraction, seed=spec.split_seed)


def validate(spec, pairs, name):
    """Checks every pair of one split before any training; returns its summary."""
    if not pairs:
        raise kdata.DataError(f"the {name} split is empty (val_fraction={spec.val_fraction}).")
    return kdata.validate_pairs(
        pairs, num_classes=spec.num_classes, ignore_class=spec.ignore_class, remap=spec.remap, channels=spec.channels
    )


def load_splits(spec):
    """Pairs and validates the training and validation files of `spec` before any training."""
    train_pairs, val_pairs = split(spec)
    summaries = {name: validate(spec, pairs, name) for name, pairs in (("train", train_pairs), ("val", val_pairs))}
    if spec.crop_size is not None:  # training windows must fit in every (resized) training image
        sizes = [tuple(spec.image_size)] if spec.image_size else [tuple(s) for s in summaries["train"]["image_sizes"]]
        small = [s for s in sizes if s[0] < spec.crop_size[0] or s[1] < spec.crop_size[1]]
        if small:
            raise kdata.DataError(
                f"`crop_size` {spec.crop_size[0]}x{spec.crop_size[1]} does not fit in training images of "
                f"{small[0][0]}x{small[0][1]}; expected a crop at most as large as every training image")
    return train_pairs, val_pairs, summaries


def _reading(spec):
    return dict(image_size=spec.image_size, channels=spec.channels, remap=spec.remap, ignore_class=spec.ignore_class)


def val_dataset(spec, pairs, batch_size):
    """Whole images, in order, read as in training (batch 1 when file sizes are kept: they may differ)."""
    return kdata.folder_dataset(pairs, batch_size=batch_size if spec.image_size else 1, **_reading(spec))


def make_datasets(spec, train_pairs, val_pairs, batch_size, augment=True, seed=0):
    """(train, val) tf.data pipelines; the training one repeats forever (fit counts steps)."""
    return train_dataset(spec, train_pairs, batch_size, augment, seed), val_dataset(spec, val_pairs, batch_size)


def train_dataset(spec, pairs, batch_size, augment=True, seed=0, shard=None, skip=0):
    """The training pipeline: shuffled, augmented, repeating forever (fit counts steps).

    `shard` and `skip` select one input pipeline's share of the stream and drop what a resumed
    run has trained on (`kseg.data.sharding`).
    """
    augmenter = build_augment(augment, spec.ignore_class)
    return kdata.folder_dataset(
        pairs, batch_size=batch_size, augment=augmenter, shuffle=True, repeat=True, seed=seed,
        drop_remainder=True, crop_size=spec.crop_size, shard=shard, skip=skip, **_reading(spec),
    )


def build_augment(augment, ignore_class):
    """The `kdata.Augment` of `train`'s `augment` argument, or None for no augmentation.

    Args:
        augment: True (every default of `kdata.Augment`), False/None (none), or a dict of
            `kdata.Augment` arguments that replace its defaults, e.g. {"rot90": False,
            "elastic_prob": 0.0} for upright photos.
        ignore_class: the data's ignore id, the mask value of padded pixels.

    Raises:
        ValueError: naming `augment`, when it is neither a bool nor a dict of `Augment`
            arguments (`ignore_class` comes from the data, not from here).
    """
    if augment is None or augment is False:
        return None
    if augment is True:
        return kdata.Augment(ignore_class=ignore_class)
    if not isinstance(augment, dict):
        raise ValueError(f"`augment` {augment!r}: expected True, False or a dict of kseg.data.Augment arguments")
    allowed = [k for k in kdata.Augment().get_config() if k != "ignore_class"]
    unknown = sorted(set(augment) - set(allowed))
    if unknown:
        raise ValueError(f"`augment` key(s) {', '.join(map(repr, unknown))}: expected some of {', '.join(allowed)}")
    try:
        return kdata.Augment(ignore_class=ignore_class, **augment)
    except ValueError as error:
        raise ValueError(f"`augment`: {error}") from None


def _validation(spec, train_pairs, val_ds, batch_size, loss, precise_batch_norm):
    """The epoch-end validation, after a batch-norm recalibration on the training images when asked."""
    validation = kcallbacks.Validation(val_ds, spec.num_classes, spec.ignore_class, loss=loss)
    if not precise_batch_norm:
        return validation
    from kseg.training.recalibrate import BatchNormRecalibration

    return BatchNormRecalibration(val_dataset(spec, train_pairs, batch_size), then=[validation])


def train(
    spec,
    output_dir,
    model=None,
    model_kwargs=None,
    epochs=50,
    steps_per_epoch=None,
    batch_size=4,
    learning_rate=1e-3,
    schedule="cosine",
    loss="ce",
    class_weights=None,
    augment=True,
    strategy="default",
    cpu_replicas=None,
    mixed_precision=False,
    jit_compile=False,
    lr_reference_batch=None,
    time_budget=None,
    seed=0,
    verbose=1,
    init=None,
    precise_batch_norm=False,
):
    """Trains a model on folders of images and masks and writes a run folder (see module doc).

    Args:
        spec: a `DataSpec`.
        output_dir: the run folder (created; rerunning into it resumes a killed run).
        model: a name of `kseg.models.MODEL_NAMES`; `model_kwargs` go to its constructor.
            None: "unet", or with `init` the file's model.
        epochs, steps_per_epoch: length of training; steps default to one pass over the data.
        batch_size: global batch size (split over the replicas of the strategy).
        learning_rate, schedule: peak learning rate of Adam and its decay ("constant",
            "cosine", "poly"). The rate belongs to the global batch, so the same command
            trains the same way on 1 or N devices; see `lr_reference_batch`.
        loss: one of `LOSSES`. class_weights: K floats, or "median_frequency" to compute
            them from the training masks (used by "weighted_ce").
        augment: joint flip/rot90/scale/elastic/photometric augmentation of training pairs:
            True, False, or a dict of `kseg.data.Augment` arguments (`build_augment`).
        strategy, cpu_replicas: see `kseg.training.get_strategy`.
        mixed_precision: compute in float16 (logits and loss stay float32).
        jit_compile: compile the training step with XLA.
        lr_reference_batch: `learning_rate` is the rate of this global batch; it is scaled
            linearly to `batch_size` (`kseg.training.strategy.scaled_learning_rate`).
        time_budget: stop after the epoch that ends past this many seconds of training.
        seed: seeds Keras/TF/NumPy and the data order.
        init: a .keras file to fine-tune (`kseg.training.finetune.init_model`): its
            architecture and weights, the run's classes and size; `model`, when given, must
            name its architecture; `model_kwargs` override its constructor arguments.

    Returns:
        A dict with the history, the paths written and the validation metrics of best.keras
        (None on a worker other than the chief).
    """
    build_augment(augment, spec.ignore_class)  # a bad `augment` fails before the run folder is made
    dist, rate = start_run(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                           learning_rate=learning_rate, seed=seed, strategy=strategy, cpu_replicas=cpu_replicas,
                           lr_reference_batch=lr_reference_batch, output_dir=output_dir)
    train_pairs, val_pairs, summaries = load_splits(spec)
    if class_weights == "median_frequency":  # from the counts the file checks already made
        counts = summaries["train"]
        class_weights = klosses.median_frequency_weights_from_counts(
            counts["class_pixels"], counts["class_image_pixels"]
        ).tolist()
    if steps_per_epoch is None:
        steps_per_epoch = max(len(train_pairs) // batch_size, 1)
    val_ds = val_dataset(spec, val_pairs, batch_size)
    train_ds = training_input(dist, lambda batch, shard, skip: train_dataset(
        spec, train_pairs, batch, augment=augment, seed=seed, shard=shard, skip=skip),
        batch_size, output_dir, steps_per_epoch)

    model_kwargs = dict(model_kwargs or {})
    with dtype_policy_scope("mixed_float16" if mixed_precision else None):
        with dist.scope():
            if init is None:
                net = build_model(
                    model or "unet", num_classes=spec.num_classes, input_shape=spec.model_input_shape, **model_kwargs
                )
            else:
                net, init_report = init_model(init, num_classes=spec.num_classes, size=spec.model_input_shape,
                                              families=task_families("semantic"), expected=model_expectation(model),
                                              overrides=model_kwargs)
            net.compile(
                optimizer=keras.optimizers.Adam(build_schedule(schedule, rate, epochs * steps_per_epoch)),
                loss=build_loss(loss, spec.num_classes, spec.ignore_class, class_weights),
                metrics=build_metrics(spec),
                jit_compile=jit_compile,
            )
        run = {
            "data": spec.to_json(),
            "model": {"name": model or ("unet" if init is None else type(net).__name__), "kwargs": model_kwargs,
                      "params": int(net.count_params())},
            "init": None if init is None else init_report,
            "train": dict(
                epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, schedule=schedule, loss=loss,
                class_weights=class_weights, augment=augment, seed=seed, precise_batch_norm=precise_batch_norm,
                **distribution_record(dist, strategy, rate, lr_reference_batch, mixed_precision, jit_compile),
                train_pairs=len(train_pairs), val_pairs=len(val_pairs),
                class_pixels={name: summary["class_pixels"] for name, summary in summaries.items()},
            ),
        }
        best_path = os.path.join(output_dir, "best.keras")
        return fit_run(
            net, run, output_dir, train_ds, time_budget=time_budget, verbose=verbose, monitor="val_mean_iou",
            validation=_validation(spec, train_pairs, val_ds, batch_size, net.loss, precise_batch_norm),
            curves=lambda png, csv: kcallbacks.CurvePlot(png, csv, title=run["model"]["name"]),
            evaluate=lambda best: evaluate_model(best, val_ds, spec.num_classes, spec.ignore_class,
                                                 spec.class_names, verbose=verbose),
            load=lambda: keras.models.load_model(best_path) if os.path.exists(best_path) else net,
        )
