"""Mask R-CNN (small configuration) learning synthetic shapes on the CPU, within a time budget.

Trains on generated images with exact instance masks (kseg.data.shapes), evaluates COCO mask
and box AP (pycocotools) on held-out images after every epoch, and stops when the budget is
spent. Writes benchmarks/results/shapes_mask_rcnn.json, the AP curve (PNG) and a picture of
held-out predictions.

    python3 benchmarks/shapes_mask_rcnn.py [--budget 1200] [--image-size 128]
"""

import argparse
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine, print_table, write_results  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1200.0, help="training seconds (default 20 minutes)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--train", type=int, default=1000, help="training images")
    parser.add_argument("--val", type=int, default=100, help="held-out images")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-instances", type=int, default=8)
    args = parser.parse_args()

    import keras

    from kseg.data.instance_pipeline import instance_dataset
    from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples
    from kseg.models import build_model, model_presets
    from kseg.training.detection_eval import evaluate_instance_model
    from kseg.viz import save_line_chart

    size = (args.image_size, args.image_size)
    shape_kwargs = {"image_size": size, "max_instances": min(args.max_instances, 6), "min_size": size[0] // 8}
    train = shapes_dataset_examples(args.train, seed=1, **shape_kwargs)
    val = shapes_dataset_examples(args.val, seed=2, **shape_kwargs)
    data = instance_dataset(train, image_size=size, max_instances=args.max_instances, batch_size=args.batch_size)
    keras.utils.set_random_seed(0)
    model = build_model("mask_rcnn", "small", num_classes=len(SHAPE_CATEGORIES), input_shape=(*size, 3))
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate, clipnorm=10.0))

    curve, started, epoch = [], time.perf_counter(), 0
    while time.perf_counter() - started < args.budget:
        epoch += 1
        history = model.fit(data, steps_per_epoch=args.steps_per_epoch, epochs=1, verbose=0)
        train_seconds = time.perf_counter() - started
        scores = evaluate_instance_model(model, val, SHAPE_CATEGORIES, batch_size=8)
        row = {"epoch": epoch, "seconds": round(train_seconds, 1), "loss": round(history.history["loss"][-1], 4),
               "mask_AP": scores["segm"]["AP"], "mask_AP50": scores["segm"]["AP50"],
               "mask_AP75": scores["segm"]["AP75"], "box_AP": scores["bbox"]["AP"]}
        curve.append(row)
        print_table([row], list(row))
    final = curve[-1]
    results = {
        "machine": machine(), "image_size": list(size), "train_images": args.train, "val_images": args.val,
        "batch_size": args.batch_size, "budget_seconds": args.budget, "params": model.count_params(),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in model_presets("mask_rcnn")["small"].items()},
        "final": final, "curve": curve,
        "evaluation_seconds_excluded": "the seconds column is wall time including evaluation",
    }
    path = write_results("shapes_mask_rcnn", results)
    save_line_chart(RESULTS / "shapes_mask_rcnn_ap.png",
                    {k: ([r["seconds"] / 60 for r in curve], [r[k] for r in curve])
                     for k in ("mask_AP", "mask_AP50", "mask_AP75")},
                    title="Mask R-CNN (small) on synthetic shapes: held-out mask AP",
                    xlabel="minutes (2 CPU cores)", ylabel="AP", ylim=(0, 1))
    model.save(RESULTS / "shapes_mask_rcnn.keras")
    print_table(curve, list(curve[0]))
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
