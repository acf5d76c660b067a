"""Panoptic FPN (small) with semantic branches of different widths, trained the same way on the panoptic shapes.

Each width trains in its own process with the same seed, data and steps (`kseg.tasks.train`,
shapes at 128 x 128); the table gives the held-out PQ (all, things, stuff) after the last epoch
and the parameter count. The small preset's 64 channels were chosen from this run against the
paper's 128 (benchmarks/panoptic_fusion_time.py --panoptic-fpn times the graph at 512).
Writes benchmarks/results/semantic_head_width.json.

    python3 benchmarks/semantic_head_width.py [--channels 128 64] [--epochs 20] [--steps-per-epoch 100]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine, print_table, write_results  # noqa: E402

_TRAIN = """
import json, sys
import keras
from kseg import tasks
from kseg.training.detection_spec import PanopticDataSpec
channels, epochs, steps, output = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
keras.utils.set_random_seed(0)
spec = PanopticDataSpec(source="shapes", image_size=(128, 128), max_instances=8, shapes=1000)
result = tasks.train(output, task="panoptic", spec=spec, model="panoptic_fpn",
                     model_kwargs={"semantic_channels": channels}, epochs=epochs, steps_per_epoch=steps,
                     batch_size=4, learning_rate=1e-3, time_budget=1e6, verbose=2)
m = result["metrics"]
print("RESULT " + json.dumps({"semantic_channels": channels, "params": result["run"]["model"]["params"],
      "train_seconds": round(m["train_seconds"], 1), "epochs": m["epochs_run"],
      **{f"PQ_{g}": round(100 * m[g]["pq"], 2) for g in ("all", "things", "stuff")}}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    with tempfile.TemporaryDirectory(prefix="kseg-width-") as work:
        children = [subprocess.Popen([sys.executable, "-c", _TRAIN, str(c), str(args.epochs), str(args.steps_per_epoch),
                                      str(Path(work) / f"run_{c}")], env=env, stdout=subprocess.PIPE, text=True)
                    for c in args.channels]  # side by side: the same machine load for every width
        rows = []
        for child in children:
            out, _ = child.communicate()
            if child.returncode:
                raise SystemExit(f"a training child failed (exit {child.returncode}); its output:\n{out[-2000:]}")
            rows.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    print_table(rows, list(rows[0]))
    path = write_results("semantic_head_width", {"machine": machine(), "epochs": args.epochs,
                                                 "steps_per_epoch": args.steps_per_epoch, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
