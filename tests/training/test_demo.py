"""`kseg demo`: the whole pipeline's files and summary, and batch norm that holds at inference."""

import json
import os

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

SMALL = dict(image_size=64, filters=4)  # seconds instead of minutes; the same code path


def test_demo_writes_every_file_and_the_summary(tmp_path):
    from export.demo import run, summary_text

    out = tmp_path / "demo"
    result = run(str(out), epochs=2, steps_per_epoch=2, verbose=0, **SMALL)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result))
    for name, path in summary["files"].items():
        assert os.path.exists(path), f"{name}: {path} was not written"
    for name in ("run/best.keras", "run/curves.png", "run/metrics.json", "overlay.png", "export/isbi_unet_fp32.tflite",
                 "export/isbi_unet_int8.tflite", "export/export_report.json", "export/export_report.md", "bench.json",
                 "bench.txt", "latency.png", "summary.txt"):
        assert (out / name).is_file(), name
    assert summary["steps"] == 4 and summary["threads"] == 2
    report = json.loads((out / "export" / "export_report.json").read_text())
    assert summary["mean_iou"] == {"keras": report["keras_mean_iou"], "fp32": report["variants"]["fp32"]["mean_iou"],
                                   "int8": report["variants"]["int8"]["mean_iou"]}
    assert summary["agreement"]["fp32"] >= 0.999  # fp32 reproduces the Keras model
    assert summary["size_bytes"]["int8"] < summary["size_bytes"]["fp32"] / 2
    bench = json.loads((out / "bench.json").read_text())["results"]
    assert [r["threads"] for r in bench] == [2, 2] and all(r["error"] is None for r in bench)
    assert summary["latency_ms"] == {v: r["invoke"]["mean_ms"] for v, r in zip(("fp32", "int8"), bench)}
    assert Image.open(out / "latency.png").size[0] >= 640
    text = (out / "summary.txt").read_text()
    assert text.strip() == summary_text(result)
    for v in ("Keras", "fp32", "int8"):
        assert any(line.startswith(v) and f"{summary['mean_iou'][v.lower()]:.4f}" in line for line in text.splitlines())
    assert len(text.splitlines()) <= 30  # one screen


def test_demo_refuses_bad_lengths(tmp_path, capsys):
    from kseg import cli

    assert cli.main(["demo", "--output", str(tmp_path / "d"), "--steps-per-epoch", "0"]) == 2
    assert "--steps-per-epoch 0: expected an int >= 1" in capsys.readouterr().err
    assert cli.main(["demo", "--output", str(tmp_path / "d"), "--threads", "0"]) == 2
    assert "--threads 0: expected an int >= 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before the run folder is made
    from kseg.training.demo import train_demo

    with pytest.raises(ValueError, match="`image_size` 40: expected a multiple of 16"):
        train_demo(str(tmp_path / "d"), image_size=40)


def test_demo_batch_norm_statistics_are_those_of_the_final_weights(tmp_path):
    """After a few steps Keras' moving averages (momentum 0.99) still hold mostly their initial
    values; the demo's model must carry the population statistics of its weights, so that
    inference mode predicts what training mode (batch statistics) predicts, not one class."""
    import keras

    from kseg.training.demo import train_demo
    from kseg.training.recalibrate import batch_norm_layers, recalibrate_on_batches
    from kseg.training.trainer import split, val_dataset

    result = train_demo(str(tmp_path / "demo"), epochs=2, steps_per_epoch=3, image_size=64, filters=8, verbose=0)
    model = keras.models.load_model(result["model"])
    spec = result["spec"]
    held_out = np.concatenate([x for x, _ in val_dataset(spec, split(spec)[1], 4)])
    inference = model(held_out, training=False).numpy().argmax(-1)
    batch_stats = model(held_out, training=True).numpy().argmax(-1)
    assert len(np.unique(inference)) == 2, "inference mode predicts one class everywhere"
    assert (inference == batch_stats).mean() >= 0.9
    # The statistics are those of the training images for these weights: recomputing them moves each
    # mean by under 2 % of its standard deviation and each variance by under 2 % (float32 convolutions
    # on several threads give about 0.2 %); Keras' moving averages after 6 steps are off by 50 % or more.
    layers = batch_norm_layers(model)
    saved = [(b.moving_mean.numpy(), b.moving_variance.numpy()) for b in layers]
    recalibrate_on_batches(model, val_dataset(spec, split(spec)[0], 4))
    for b, (mean, variance) in zip(layers, saved):
        std = np.sqrt(b.moving_variance.numpy())
        assert np.abs(b.moving_mean.numpy() - mean).max() <= 0.02 * std.min(), b.name
        np.testing.assert_allclose(variance, b.moving_variance.numpy(), rtol=0.02, err_msg=b.name)


def test_recalibration_runs_before_the_wrapped_epoch_end(tmp_path):
    import keras

    from kseg.training.recalibrate import BatchNormRecalibration

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(inputs))
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(32, 4)).astype("float32")
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.layers[-1].moving_mean.numpy().copy())

    callback = BatchNormRecalibration([data[:16], data[16:]], then=[Probe()])
    callback.set_model(model)
    callback.on_epoch_end(0)
    np.testing.assert_allclose(seen[0], data.mean(0), rtol=1e-5)
    empty = BatchNormRecalibration([])
    empty.set_model(model)
    with pytest.raises(ValueError, match="batches: expected at least one batch"):
        empty.on_epoch_end(1)
