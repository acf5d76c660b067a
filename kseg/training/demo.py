"""`kseg demo`'s training part: a small U-Net on the ISBI 2012 sample embedded in the package.

Trains a U-Net (16 base filters, batch norm) for a fixed number of seeded steps on 8 of the
10 embedded 256x256 pairs, with the batch-norm statistics recomputed for the weights of every
epoch (`kseg.training.recalibrate`: with Keras' momentum 0.99 the moving averages of a
120-step run still hold 30 % of their initial values and inference collapses to one class);
evaluates it on the 2 held-out pairs and writes an overlay figure and the training curves.
No download; the result does not depend on how busy the machine is (no time budget).

The whole product demo (export, parity, latency) composes this with `export.demo`.
"""

import os

import numpy as np

from kseg import viz
from kseg.data.samples import ISBI_CLASSES, ISBI_REMAP, isbi_sample_dirs
from kseg.training.spec import DataSpec

COLORS = np.array([[230, 60, 60], [40, 40, 40]], dtype=np.uint8)  # membrane red, cell untinted


def demo_spec(image_size=256):
    """The `DataSpec` of the embedded ISBI sample at `image_size` x `image_size` (grey, 2 classes)."""
    images, labels = isbi_sample_dirs()
    return DataSpec(
        images=str(images), masks=str(labels), num_classes=2, remap=ISBI_REMAP, channels=1,
        image_size=(image_size, image_size), class_names=list(ISBI_CLASSES), val_fraction=0.2,
    )


def check_settings(**settings):
    """Raises a ValueError naming the first of `settings` (epochs, steps_per_epoch, image_size,
    filters, threads) that is not an int >= 1, or an image_size that is not a multiple of 16."""
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` {value!r}: expected an int >= 1")
    if settings.get("image_size", 16) % 16:
        raise ValueError(f"`image_size` {settings['image_size']}: expected a multiple of 16 (the U-Net pools 4 times)")


def run_demo(output_dir="kseg-demo", **kwargs):
    """`train_demo` holding the lock of the run folder `output_dir`/run (`kseg.utils.run_lock`):
    a second demo into the same folder is refused at once. Returns `train_demo`'s dict."""
    from kseg.utils.run_lock import run_lock

    with run_lock(os.path.join(output_dir, "run")):
        return train_demo(output_dir, **kwargs)


def train_demo(output_dir="kseg-demo", epochs=12, steps_per_epoch=10, image_size=256, filters=16, seed=0,
               verbose=1):
    """Trains, evaluates and draws the demo model (the caller holds the run folder's lock).

    Args:
        output_dir: folder for run/ (a `kseg train` run folder), overlay.png.
        epochs, steps_per_epoch: the fixed length of training (batch 4, cosine-decayed Adam
            from 2e-3); the defaults are 120 steps.
        image_size: side the 256x256 sample is resized to (smaller: faster tests).
        filters: channels of the U-Net's first level.
        seed: seeds the weights and the data order.
        verbose: Keras' progress bar.

    Returns:
        {"mean_iou": held-out mIoU of run/best.keras, "per_class_iou": {name: IoU},
         "model": path of best.keras, "run": run folder, "overlay", "curves": PNG paths,
         "train_seconds", "steps": steps trained, "spec": the `DataSpec`,
         "train_pairs", "val_pairs": [(image path, mask path)]}.
    """
    import keras

    from kseg.data import apply_remap, read_image, read_mask, remap_table
    from kseg.training.predict import predict_logits
    from kseg.training.trainer import split, train

    check_settings(epochs=epochs, steps_per_epoch=steps_per_epoch, image_size=image_size, filters=filters)
    spec = demo_spec(image_size)
    run_dir = os.path.join(output_dir, "run")
    result = train(
        spec, run_dir, model="unet", model_kwargs={"filters": filters, "batch_norm": True}, epochs=epochs,
        steps_per_epoch=steps_per_epoch, batch_size=4, learning_rate=2e-3, schedule="cosine", loss="ce",
        seed=seed, precise_batch_norm=True, verbose=verbose,
    )
    model = keras.models.load_model(result["paths"]["best.keras"])
    train_pairs, val_pairs = split(spec)
    table = remap_table(spec.remap)
    rows = []
    for image_path, mask_path in val_pairs:
        image = read_image(image_path, channels=1)
        truth = apply_remap(read_mask(mask_path), table)
        pred = predict_logits(model, image, spec.image_size).argmax(-1)
        rows.append(viz.side_by_side(
            [image[..., 0].astype(np.uint8),
             viz.overlay(image, truth, palette=COLORS, alpha=0.6, skip_classes=(1,)),
             viz.overlay(image, pred, palette=COLORS, alpha=0.6, skip_classes=(1,))],
            titles=[os.path.basename(image_path), "ground truth (membrane red)", "prediction"],
        ))
    overlay_path = os.path.join(output_dir, "overlay.png")
    viz.save_png(overlay_path, np.concatenate(rows, axis=0))
    metrics = result["metrics"]
    return {
        "mean_iou": float(metrics["mean_iou"]),
        "per_class_iou": {r["name"]: r["iou"] for r in metrics["per_class"]},
        "model": result["paths"]["best.keras"],
        "run": run_dir,
        "overlay": overlay_path,
        "curves": result["paths"]["curves.png"],
        "train_seconds": float(metrics["train_seconds"]),
        "steps": epochs * steps_per_epoch,
        "spec": spec,
        "train_pairs": train_pairs,
        "val_pairs": val_pairs,
    }
