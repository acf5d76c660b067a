"""`kseg demo`: the out-of-the-box run on the ISBI 2012 sample embedded in the package.

Trains a small U-Net (16 base filters, batch norm) on 8 of the 10 embedded 256x256 pairs,
evaluates it on the 2 held-out pairs, and writes an overlay figure and the training curves.
Runs in a few minutes on 2 CPU cores, with no download.
"""

import os

import numpy as np

from kseg import viz
from kseg.data.samples import ISBI_CLASSES, ISBI_REMAP, isbi_sample_dirs
from kseg.training.spec import DataSpec


def demo_spec():
    images, labels = isbi_sample_dirs()
    return DataSpec(
        images=str(images), masks=str(labels), num_classes=2, remap=ISBI_REMAP, channels=1,
        image_size=(256, 256), class_names=list(ISBI_CLASSES), val_fraction=0.2,
    )


def run_demo(output_dir="kseg-demo", epochs=60, time_budget=150.0, verbose=1):
    """Trains, evaluates and draws; returns {"mean_iou", "overlay", "curves", "train_seconds", ...}.

    Holds the lock of the run folder `output_dir`/run throughout (`kseg.utils.run_lock`): a
    second demo into the same folder is refused at once.
    """
    from kseg.utils.run_lock import run_lock

    with run_lock(os.path.join(output_dir, "run")):
        return _run_demo(output_dir, epochs, time_budget, verbose)


def _run_demo(output_dir, epochs, time_budget, verbose):
    import keras

    from kseg.data import apply_remap, read_image, read_mask, remap_table
    from kseg.training.predict import predict_logits
    from kseg.training.trainer import split, train

    spec = demo_spec()
    run_dir = os.path.join(output_dir, "run")
    result = train(
        spec, run_dir, model="unet", model_kwargs={"filters": 16, "batch_norm": True}, epochs=epochs,
        steps_per_epoch=8, batch_size=4, learning_rate=2e-3, schedule="cosine", loss="ce",
        time_budget=time_budget, verbose=verbose,
    )
    model = keras.models.load_model(result["paths"]["best.keras"])
    _, val_pairs = split(spec)
    table = remap_table(spec.remap)
    colors = np.array([[230, 60, 60], [40, 40, 40]], dtype=np.uint8)  # membrane red, cell untinted
    rows = []
    for image_path, mask_path in val_pairs:
        image = read_image(image_path, channels=1)
        truth = apply_remap(read_mask(mask_path), table)
        pred = predict_logits(model, image, spec.image_size).argmax(-1)
        rows.append(viz.side_by_side(
            [image[..., 0].astype(np.uint8),
             viz.overlay(image, truth, palette=colors, alpha=0.6, skip_classes=(1,)),
             viz.overlay(image, pred, palette=colors, alpha=0.6, skip_classes=(1,))],
            titles=[os.path.basename(image_path), "ground truth (membrane red)", "prediction"],
        ))
    overlay_path = os.path.join(output_dir, "overlay.png")
    viz.save_png(overlay_path, np.concatenate(rows, axis=0))
    metrics = result["metrics"]
    summary = {
        "mean_iou": round(float(metrics["mean_iou"]), 4),
        "per_class_iou": {r["name"]: r["iou"] for r in metrics["per_class"]},
        "overlay": overlay_path,
        "curves": result["paths"]["curves.png"],
        "train_seconds": round(metrics["train_seconds"], 1),
        "run": run_dir,
    }
    if verbose:
        print(f"held-out mIoU on {len(val_pairs)} ISBI pairs: {summary['mean_iou']:.4f}")
    return summary
