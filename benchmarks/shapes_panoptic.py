"""Panoptic FPN or MaskFormer (small configurations) learning synthetic panoptic scenes on the CPU, within a time budget.

Runs the code behind `kseg train --task panoptic --shapes N [--model maskformer]`: shapes (things) over sky,
grass and road (stuff) with exact panoptic ground truth, Panoptic Quality of the model's own
panoptic output on held-out images after every epoch. Writes
benchmarks/results/shapes_MODEL.json (PQ/SQ/RQ overall, things, stuff, per class, and the PQ
curve against training time), the run folder (curves.png) under
benchmarks/results/shapes_MODEL_run/ and a picture of held-out predictions beside their
ground truth in docs/panoptic_shapes.png (Panoptic FPN) or docs/panoptic_shapes_MODEL.png.

    python3 benchmarks/shapes_panoptic.py [--model maskformer] [--budget 1800] [--epochs 40]
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, print_table, write_results  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1800.0, help="training seconds at most (default 30 minutes)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--shapes", type=int, default=1000, help="synthetic images, 20 %% held out")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--model", choices=("panoptic_fpn", "maskformer"), default="panoptic_fpn")
    args = parser.parse_args()

    from kseg import tasks, viz
    from kseg.training.detection_data import load_panoptic_splits
    from kseg.training.detection_eval import format_pq_table
    from kseg.training.detection_predict import predict_panoptic_image
    from kseg.training.detection_runs import load_panoptic_model
    from kseg.training.detection_spec import PanopticDataSpec
    from kseg.training.examples import resized
    from kseg.training.callbacks import read_history_csv

    name = f"shapes_{args.model}"
    run_dir = RESULTS / f"{name}_run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resumed one
    size = (args.image_size, args.image_size)
    spec = PanopticDataSpec(source="shapes", image_size=size, max_instances=8, shapes=args.shapes)
    result = tasks.train(str(run_dir), task="panoptic", spec=spec, model=args.model, epochs=args.epochs,
                         steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, time_budget=args.budget, verbose=2)
    metrics = result["metrics"]
    history = read_history_csv(run_dir / "history.csv")
    curve = {"epoch": list(range(1, len(history["val_PQ"]) + 1)), "train_seconds": history.get("seconds"),
             **{k: history[k] for k in ("val_PQ", "val_SQ", "val_RQ", "val_PQ_things", "val_PQ_stuff")}}

    _, val, categories = load_panoptic_splits(spec)
    val = resized(val, size)
    model = load_panoptic_model(str(run_dir))
    pairs = []
    for i in range(4):
        example = val[i]
        predicted, segments = predict_panoptic_image(model, example["image"])
        pairs.append(np.concatenate([
            viz.panoptic_overlay(example["image"], example["panoptic"], example["segments"], categories),
            viz.panoptic_overlay(example["image"], predicted, segments, categories)], axis=1))
    picture = ROOT / "docs" / ("panoptic_shapes.png" if args.model == "panoptic_fpn" else f"panoptic_{name}.png")
    rows_of_two = [viz.side_by_side(pairs[j:j + 2], titles=[f"held-out {i}: truth | prediction" for i in (j, j + 1)])
                   for j in (0, 2)]
    viz.save_png(picture, np.concatenate(rows_of_two, axis=0))

    rows = [{"group": g, "PQ": metrics[g]["pq"], "SQ": metrics[g]["sq"], "RQ": metrics[g]["rq"],
             "categories": metrics[g]["n"]} for g in ("all", "things", "stuff")]
    path = write_results(name, {
        "image_size": list(size), "train_images": result["run"]["train"]["train_images"],
        "val_images": result["run"]["train"]["val_images"], "batch_size": args.batch_size,
        "budget_seconds": args.budget, "train_seconds": round(metrics["train_seconds"], 1),
        "epochs_run": metrics["epochs_run"], "params": result["run"]["model"]["params"],
        "model": args.model, "config": result["run"]["model"]["config"],
        "constructor": result["run"]["model"]["constructor"], "rows": rows, "per_class": metrics["per_class"], "curve": curve,
    })
    print(format_pq_table(metrics))
    print_table(rows, list(rows[0]))
    print(f"trained {metrics['train_seconds'] / 60:.1f} min, {metrics['epochs_run']} epochs; wrote {path}, "
          f"{run_dir / 'curves.png'} and {picture}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
