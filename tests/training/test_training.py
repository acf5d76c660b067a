import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kseg.training import DataSpec, build_loss, build_schedule, format_table, load_run, train
from kseg.training import callbacks as kcallbacks


def write_blob_folder(root, count=8, size=32, seed=0):
    """Grey images with bright discs (class 1) on a dark noisy background (class 0)."""
    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(2):
            cy, cx, r = rng.integers(6, size - 6), rng.integers(6, size - 6), rng.integers(3, 7)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        image = np.where(mask == 1, 190, 60) + rng.normal(0, 15, (size, size))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(images / f"{i:03d}.png")
        Image.fromarray(mask * 255).save(masks / f"{i:03d}.png")
    return str(images), str(masks)


def blob_spec(tmp_path, **kwargs):
    images, masks = write_blob_folder(tmp_path / "data")
    return DataSpec(images=images, masks=masks, num_classes=2, remap={0: 0, 255: 1}, channels=1,
                    image_size=(32, 32), class_names=["background", "blob"], val_fraction=0.25, **kwargs)


TINY = {"filters": 8, "depth": 2, "batch_norm": True}


@pytest.mark.slow
def test_train_learns_a_simple_task_and_writes_every_artefact(tmp_path):
    spec = blob_spec(tmp_path)
    out = str(tmp_path / "run")
    result = train(spec, out, model="unet", model_kwargs=TINY, epochs=25, steps_per_epoch=6, batch_size=2,
                   learning_rate=3e-3, augment=False, verbose=0)
    for name in ("run.json", "best.keras", "final.keras", "history.csv", "curves.png", "metrics.json", "logs"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not any(f.startswith(".tmp-") for f in os.listdir(out))  # atomic writes left nothing behind
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["mean_iou"] > 0.85, metrics["mean_iou"]  # bright discs on dark ground are easy
    assert [r["name"] for r in metrics["per_class"]] == ["background", "blob"]
    with open(os.path.join(out, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 25
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    run = load_run(out)
    assert run["data"] == spec or run["data"].image_size == spec.image_size
    assert run["model"]["kwargs"] == TINY
    counts = run["train"]["class_pixels"]
    assert sum(counts["train"]) + sum(counts["val"]) == 8 * 32 * 32  # every pixel of the 8 pairs, by class
    curves = np.asarray(Image.open(os.path.join(out, "curves.png")))
    assert curves.ndim == 3 and curves.std() > 10  # a real picture, not a blank canvas
    assert "mIoU" in format_table(result["metrics"])


class _Crash(keras.callbacks.Callback):
    """Simulates a killed run: dies at the start of epoch `at` (0-based)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.slow
def test_rerunning_a_killed_run_resumes_from_its_backup(tmp_path, monkeypatch):
    spec = blob_spec(tmp_path)
    out = str(tmp_path / "run")
    original_fit = keras.Model.fit

    def crashing_fit(self, *args, callbacks=None, **kwargs):
        return original_fit(self, *args, callbacks=list(callbacks) + [_Crash(3)], **kwargs)

    monkeypatch.setattr(keras.Model, "fit", crashing_fit)
    with pytest.raises(KeyboardInterrupt):
        train(spec, out, model="unet", model_kwargs=TINY, epochs=6, steps_per_epoch=2, batch_size=2, verbose=0)
    monkeypatch.setattr(keras.Model, "fit", original_fit)
    assert os.path.isdir(os.path.join(out, "backup"))
    result = train(spec, out, model="unet", model_kwargs=TINY, epochs=6, steps_per_epoch=2, batch_size=2, verbose=0)
    assert result["metrics"]["epochs_run"] == 3  # epochs 4-6 only: 1-3 were restored
    with open(os.path.join(out, "history.csv")) as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == [0, 1, 2, 3, 4, 5]
    assert not os.path.exists(os.path.join(out, "backup"))  # removed after a completed run


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", loss=lambda y, p: keras.ops.log(p * 0.0))  # -inf from the first step
    guard = kcallbacks.StopOnNonFiniteLoss(str(tmp_path / "best.keras"))
    with pytest.raises(kcallbacks.NonFiniteLoss, match=r"epoch 1, step 1.*none written yet"):
        model.fit(np.ones((4, 4)), np.ones((4, 1)), batch_size=2, callbacks=[guard], verbose=0)


def test_nan_mid_run_names_the_step_the_checkpoint_and_the_backup_and_keeps_them(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", loss="mse")
    x, y = np.ones((12, 4), "float32"), np.ones((12, 1), "float32")
    y[10] = np.nan  # in the 6th batch of 2: epoch 2 (4 steps per epoch), step 2
    best, backup = str(tmp_path / "best.keras"), str(tmp_path / "backup")
    callbacks = [kcallbacks.StopOnNonFiniteLoss(best, backup),
                 kcallbacks.BestCheckpoint(best, monitor="loss", mode="min"), kcallbacks.BackupAndRestore(backup)]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat()
    with pytest.raises(kcallbacks.NonFiniteLoss) as caught:
        model.fit(dataset, epochs=3, steps_per_epoch=4, callbacks=callbacks, verbose=0)
    message = str(caught.value)
    assert "at epoch 2, step 2 (step 6 of this run)" in message
    assert f"Last good checkpoint: {best}" in message and f"the backup in {backup} holds the state after epoch 1" in message
    before = open(best, "rb").read()
    keras.models.load_model(best)  # the last good checkpoint is intact and loads
    assert kcallbacks.BackupAndRestore.saved_epoch(backup) == 1
    assert open(best, "rb").read() == before


def test_best_checkpoint_keeps_the_best_epoch(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = kcallbacks.BestCheckpoint(str(tmp_path / "best.keras"), monitor="val_score", mode="max")
    best.set_model(model)
    for epoch, score in enumerate([0.2, 0.5, 0.4]):
        best.on_epoch_end(epoch, {"val_score": score})
    assert best.best == 0.5 and best.best_epoch == 1
    assert os.path.exists(tmp_path / "best.keras")
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_loss_and_schedule_names():
    for name in ("ce", "dice", "ce_dice", "focal"):
        assert build_loss(name, 3, ignore_class=255) is not None
    assert build_loss("weighted_ce", 2, class_weights=[1.0, 3.0]).get_config()["class_weights"] == [1.0, 3.0]
    with pytest.raises(ValueError, match="needs 2 class weights"):
        build_loss("weighted_ce", 2)
    with pytest.raises(ValueError, match="unknown loss 'l2'"):
        build_loss("l2", 2)
    cosine = build_schedule("cosine", 1e-3, 100)
    assert float(cosine(0)) == pytest.approx(1e-3) and float(cosine(100)) == pytest.approx(1e-5)
    assert build_schedule("constant", 1e-3, 10) == 1e-3


def test_data_spec_checks_class_names():
    with pytest.raises(ValueError, match="class_names` has 1 names; expected num_classes = 2"):
        DataSpec(images="a", masks="b", num_classes=2, image_size=(8, 8), class_names=["x"])


@pytest.mark.slow
def test_training_on_crops_validates_on_whole_images(tmp_path):
    images, masks = write_blob_folder(tmp_path / "data", count=6)
    spec = DataSpec(images=images, masks=masks, num_classes=2, remap={0: 0, 255: 1}, channels=1,
                    image_size=None, crop_size=(16, 16), val_fraction=0.34)
    assert spec.model_input_shape == (None, None, 1)
    result = train(spec, str(tmp_path / "run"), model="unet", model_kwargs=TINY, epochs=2, steps_per_epoch=2,
                   batch_size=2, verbose=0)
    # Validation ran on the whole 32x32 images: 2 held-out images of 1024 pixels each.
    assert result["metrics"]["num_pixels"] == 2 * 32 * 32
    assert load_run(str(tmp_path / "run"))["data"].crop_size == (16, 16)


@pytest.mark.slow
def test_mixed_precision_trains_with_float32_logits_and_restores_the_policy(tmp_path):
    spec = blob_spec(tmp_path)
    result = train(spec, str(tmp_path / "run"), model="unet", model_kwargs=TINY, epochs=2, steps_per_epoch=2,
                   batch_size=2, mixed_precision=True, verbose=0)
    assert all(np.isfinite(result["history"]["loss"]))
    assert keras.mixed_precision.global_policy().name == "float32"
    model = keras.models.load_model(result["paths"]["final.keras"])
    assert model.get_layer("enc0_1_conv").compute_dtype == "float16"
    assert model.get_layer("logits").compute_dtype == "float32"


@pytest.mark.slow
def test_mirrored_strategy_over_two_cpu_replicas(tmp_path):
    # Logical CPU devices must be configured before TensorFlow starts: a fresh process.
    import subprocess
    import sys

    images, masks = write_blob_folder(tmp_path / "data", count=6)
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "kseg.cli", "train", "--images", images, "--masks", masks, "--num-classes", "2",
         "--remap", "0:0,255:1", "--channels", "1", "--image-size", "32", "--epochs", "2", "--batch-size", "4",
         "--set", "filters=4", "--set", "depth=2", "--strategy", "mirrored", "--cpu-replicas", "2",
         "--output", str(out), "--quiet"],
        check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), capture_output=True,
    )
    run = load_run(str(out))
    assert run["train"]["replicas"] == 2 and run["train"]["strategy"] == "mirrored"
    assert json.load(open(out / "metrics.json"))["epochs_run"] == 2
    assert os.path.isdir(out / "logs")  # TensorBoard


@pytest.mark.slow
def test_median_frequency_weights_come_from_the_training_masks(tmp_path):
    from kseg.data import apply_remap, read_mask, remap_table
    from kseg.losses import median_frequency_weights
    from kseg.training.trainer import split

    spec = blob_spec(tmp_path)
    result = train(spec, str(tmp_path / "run"), model="unet", model_kwargs=TINY, epochs=1, steps_per_epoch=1,
                   batch_size=2, loss="weighted_ce", class_weights="median_frequency", verbose=0)
    train_pairs, _ = split(spec)
    table = remap_table(spec.remap)
    expected = median_frequency_weights([apply_remap(read_mask(m), table) for _, m in train_pairs], 2)
    np.testing.assert_allclose(result["run"]["train"]["class_weights"], expected, rtol=1e-12)
    assert result["run"]["train"]["class_weights"][0] < result["run"]["train"]["class_weights"][1]  # blobs rarer


def test_batch_norm_recalibration_makes_inference_match_the_batch_statistics():
    import keras

    from kseg.training import recalibrate_batch_norm

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.999)(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(keras.layers.ReLU()(x)))
    images = np.random.default_rng(0).normal(50.0, 20.0, (32, 8, 8, 2)).astype("float32")
    stale = model(images, training=False).numpy()
    target = model(images, training=True).numpy()  # statistics of all 32 images at once
    assert np.abs(stale - target).max() > 1.0  # the initial moving statistics are far off
    assert recalibrate_batch_norm(model, images, batch_size=32) == 1
    np.testing.assert_allclose(model(images, training=False).numpy(), target, atol=1e-3)
    assert model.layers[2].momentum == 0.999  # restored
    with pytest.raises(ValueError, match="shape"):
        recalibrate_batch_norm(model, np.zeros((0, 8, 8, 2)))


def _orientations(augmenter, image, seeds=12):
    """For each seed: "upright" (image or its left-right mirror) or "turned" (anything else)."""
    mask = tf.zeros(image.shape[:2], tf.int32)
    out = []
    for seed in range(seeds):
        got, _ = augmenter(image, mask, seed=[seed, 1])
        upright = np.array_equal(got.numpy(), image) or np.array_equal(got.numpy(), image[:, ::-1])
        out.append("upright" if upright else "turned")
    return out


def test_augment_options_replace_the_defaults_and_keep_photos_upright():
    from kseg.training.trainer import build_augment

    image = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)  # no symmetry: every turn shows
    still = {"scale_range": None, "elastic_prob": 0.0, "brightness": 0.0, "contrast": 0.0}
    assert "turned" in _orientations(build_augment(still, None), image)  # rot90 is on by default
    upright = build_augment({**still, "rot90": False}, None)
    assert _orientations(upright, image) == ["upright"] * 12
    assert upright.get_config() == {**build_augment(True, 255).get_config(), **still, "rot90": False,
                                    "ignore_class": None}
    assert build_augment(False, 255) is None and build_augment(True, 255).ignore_class == 255


@pytest.mark.parametrize("augment, words", [
    ({"rot_90": False}, ["`augment`", "'rot_90'", "rot90"]),
    ({"contrast": 2.0}, ["`augment`", "contrast=2.0", "[0.0, 1.0)"]),
    ({"ignore_class": 3}, ["`augment`", "'ignore_class'"]),
    ("upright", ["`augment`", "'upright'", "True, False or a dict"]),
])
def test_a_bad_augment_option_fails_before_the_run_folder_is_made(tmp_path, augment, words):
    out = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        train(blob_spec(tmp_path), str(out), model="unet", model_kwargs=TINY, epochs=1, augment=augment, verbose=0)
    for word in words:
        assert word in str(error.value), (word, str(error.value))
    assert not out.exists()
