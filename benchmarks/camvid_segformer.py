"""CamVid (11 classes, void ignored): SegFormer-B0 and MaskFormer beside the U-Net, same resolution and CPU budget.

All train from scratch on `train` (367 images) and are scored on `val` (101), one after the
other, each for `--budget` seconds, at 288x384 (80 % of 360x480; the transformers need sides
divisible by 32), batch 8, Adam + cosine, flips, void ignored:

- the U-Net and SegFormer-B0 with kseg's semantic trainer (`kseg train`'s code);
- MaskFormer (its small decoder on SegFormer-B0's MiT-B0 encoder) with `fit` on the same
  batches, each CamVid class a stuff category; its semantic output (the sum over queries of
  class x mask probability) is scored with the same confusion-matrix evaluation.

Writes benchmarks/results/camvid_segformer.json (rows of models run earlier are kept, so
`--models maskformer` adds a row): mIoU, per-class IoU and speed.

    python3 benchmarks/camvid_segformer.py [--budget 900] [--models unet segformer_b0 maskformer]
"""

import argparse
import json
import os
import time

from common import CAMVID_CLASSES, RESULTS, camvid_spec, print_table, training_summary, write_results

# name -> (kseg model name, constructor arguments, learning rate)
MODELS = {
    "unet": ("unet", {"filters": 16, "batch_norm": True}, 2e-3),  # as benchmarks/camvid_unet.py
    "segformer_b0": ("segformer_b0", {}, 1e-3),
    "maskformer": ("maskformer", {"backbone": "mit_b0"}, 1e-3),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=900.0, help="training seconds per model")
    parser.add_argument("--size", default="288x384")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=200, help="cosine schedule length (the budget stops first)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--output", default="/tmp/kseg-camvid-segformer")
    args = parser.parse_args()

    from kseg.training import train

    size = tuple(int(v) for v in args.size.split("x"))
    spec = camvid_spec(size)
    rows, per_class = [], {}
    previous = RESULTS / "camvid_segformer.json"
    if previous.exists():  # keep the rows of models not run now
        saved = json.loads(previous.read_text())
        rows = [r for r in saved["rows"] if r["model"] not in args.models]
        per_class = {m: v for m, v in saved["per_class_iou"].items() if m not in args.models}
    for name in args.models:
        model, kwargs, lr = MODELS[name]
        if name == "maskformer":
            summary = train_maskformer(spec, kwargs, lr, args)
        else:
            result = train(spec, os.path.join(args.output, name), model=model, model_kwargs=kwargs,
                           epochs=args.epochs, batch_size=args.batch_size, learning_rate=lr, schedule="cosine",
                           time_budget=args.budget, verbose=2)
            summary = training_summary(result, args.batch_size)
        rows.append({"model": name, "params": summary["params"], "learning_rate": lr,
                     "val_mean_iou": summary["val_mean_iou"], "val_pixel_accuracy": summary["val_pixel_accuracy"],
                     "epochs_run": summary["epochs_run"], "train_seconds": round(summary["train_seconds"], 1),
                     "images_per_second": round(summary["images_per_second"], 2)})
        per_class[name] = {c["name"]: c["iou"] for c in summary["per_class"]}
    path = write_results("camvid_segformer", {
        "protocol": f"train 367 / val 101, {size[0]}x{size[1]}, void ignored, Adam + cosine over {args.epochs} "
                    f"epochs stopped by a {args.budget:.0f} s budget per model, batch {args.batch_size}, flips, "
                    "from scratch", "rows": rows, "per_class_iou": per_class})
    print_table(rows, list(rows[0]))
    print_table([{"class": c, **{m: per_class[m][c] for m in per_class}} for c in CAMVID_CLASSES],
                ["class", *per_class])
    print(f"results: {path}")


def train_maskformer(spec, kwargs, learning_rate, args):
    """MaskFormer on the semantic data: `fit` within the budget, then the confusion-matrix evaluation."""
    import keras
    import tensorflow as tf

    from kseg.training.callbacks import TimeBudget
    from kseg.training.evaluate import evaluate_model
    from kseg.models import build_model
    from kseg.training.trainer import build_schedule, load_splits, make_datasets

    train_pairs, val_pairs, _ = load_splits(spec)
    train_ds, val_ds = make_datasets(spec, train_pairs, val_pairs, args.batch_size)
    height, width = spec.image_size
    void = spec.ignore_class

    def as_panoptic(images, masks):  # class k -> stuff category k + 1 (channel k of "semantic"), no things
        masks = tf.cast(tf.reshape(masks, [-1, height, width]), tf.int32)
        batch = tf.shape(images)[0]
        return {"image": images, "semantic": tf.where(masks == void, 255, masks + 1),
                "boxes": tf.zeros([batch, 1, 4]), "classes": tf.zeros([batch, 1], tf.int32),
                "masks": tf.zeros([batch, 1, height, width], tf.uint8), "num_instances": tf.zeros([batch], tf.int32)}

    keras.utils.set_random_seed(0)
    model = build_model("maskformer", "small", num_classes=0, num_stuff_classes=spec.num_classes,
                        input_shape=(*spec.image_size, 3), **kwargs)
    steps = len(train_pairs) // args.batch_size
    model.compile(optimizer=keras.optimizers.Adam(build_schedule("cosine", learning_rate, args.epochs * steps),
                                                  clipnorm=10.0))
    budget = TimeBudget(args.budget)
    started = time.monotonic()
    history = model.fit(train_ds.map(as_panoptic), epochs=args.epochs, steps_per_epoch=steps, callbacks=[budget],
                        verbose=2)
    seconds = time.monotonic() - started
    forward = tf.function(lambda images: model(images, training=False)["semantic"])
    summary = evaluate_model(model, val_ds, spec.num_classes, spec.ignore_class, spec.class_names, forward=forward)
    epochs_run = len(history.history["loss"])
    return {"params": model.count_params(), "val_mean_iou": summary["mean_iou"],
            "val_pixel_accuracy": summary["pixel_accuracy"], "per_class": summary["per_class"],
            "train_seconds": seconds, "epochs_run": epochs_run,
            "images_per_second": epochs_run * steps * args.batch_size / seconds}


if __name__ == "__main__":
    main()
