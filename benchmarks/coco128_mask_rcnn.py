"""Mask R-CNN (small configuration) from scratch on coco128-seg (Ultralytics YOLO layout), on the CPU.

Runs the user's commands, nothing else: `kseg train --task instance --yolo-data data.yaml`
(coco128-seg's val split lists its train images, so kseg holds out --val-fraction of them by a
hash of the file names) within a time budget, then `kseg evaluate` on the held-out images. 128
real COCO photos of 80 classes are far too few to learn COCO from scratch: the mask AP is
expected to be near zero; the point is that real data in the layout most users have goes
through train -> evaluate. Writes benchmarks/results/coco128_mask_rcnn.json and prints a table.

    python3 benchmarks/coco128_mask_rcnn.py [--budget 780] [--image-size 320] [--epochs 24]
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, print_table, require_shared, write_results  # noqa: E402

NAME = "coco128_mask_rcnn"


def kseg(*args):
    """Runs `python3 -m kseg.cli ARGS` from the project root; returns (the command line, seconds)."""
    command = [sys.executable, "-m", "kseg.cli", *map(str, args)]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    line = "kseg " + " ".join(shlex.quote(str(a)) for a in args)
    return line, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=780.0, help="training seconds (default 13 minutes)")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=24, help="the cosine schedule's length (the budget may stop "
                                                               "training earlier)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--output", default=str(RESULTS / f"{NAME}_run"), help="the run folder")
    args = parser.parse_args()

    data_yaml = require_shared("coco128-seg", "data.yaml")
    output = Path(args.output)
    train_line, train_seconds = kseg(
        "train", "--task", "instance", "--yolo-data", data_yaml, "--model-config", "small",
        "--image-size", args.image_size, "--epochs", args.epochs, "--batch-size", args.batch_size,
        "--time-budget", args.budget, "--output", output, "--quiet")
    evaluate_line, evaluate_seconds = kseg("evaluate", "--run", output, "--quiet")

    run = json.loads((output / "run.json").read_text())
    metrics = json.loads((output / "metrics.json").read_text())
    evaluation = json.loads((output / "evaluation.json").read_text())
    rows = [{"iou_type": name, **{k: evaluation[key][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}}
            for key, name in (("segm", "mask"), ("bbox", "box"))]
    per_class = sorted(((k[3:], v) for k, v in evaluation["segm"].items() if k.startswith("AP/") and v is not None),
                       key=lambda item: -item[1])
    results = {
        "commands": [train_line, evaluate_line],
        "data": str(data_yaml), "image_size": [args.image_size] * 2, "batch_size": args.batch_size,
        "model_config": "small", "params": run["model"]["params"],
        "train_images": run["train"]["train_images"], "val_images": run["train"]["val_images"],
        "budget_seconds": args.budget, "epochs_run": metrics["epochs_run"],
        "steps_per_second": metrics["steps_per_second"], "train_seconds": metrics["train_seconds"],
        "wall_seconds": {"train_command": train_seconds, "evaluate_command": evaluate_seconds},
        "val_mask_AP": evaluation["segm"]["AP"], "val_mask_AP50": evaluation["segm"]["AP50"],
        "val_box_AP": evaluation["bbox"]["AP"], "val_box_AP50": evaluation["bbox"]["AP50"],
        "ap": rows, "per_class_mask_AP_scored": dict(per_class),
    }
    path = write_results(NAME, results)
    print_table(rows, ["iou_type", "AP", "AP50", "AP75", "APs", "APm", "APl"])
    print(f"{results['train_images']} training / {results['val_images']} held-out images, "
          f"{results['epochs_run']} epochs in {results['train_seconds']:.0f} s")
    print("\n".join(results["commands"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
