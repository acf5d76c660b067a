"""Mask R-CNN train and inference step time at 512x512: the small and the ResNet-50-FPN configs.

Both configurations run in one process on the same synthetic batch, interleaved config by
config per round, so machine noise hits them alike; medians over the rounds.

    python3 benchmarks/mask_rcnn_step_time.py [--steps 5] [--batch-size 1]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, print_table, write_results  # noqa: E402

SIZE = (512, 512)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per config (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from kseg.data.instance_pipeline import instance_dataset
    from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples
    from kseg.models import build_model

    examples = shapes_dataset_examples(args.batch_size, seed=0, image_size=SIZE, min_size=48)
    batch = next(iter(instance_dataset(examples, image_size=SIZE, max_instances=16, batch_size=args.batch_size,
                                       shuffle=False, flip=False)))
    configs = {"small": "small", "resnet50_fpn": "resnet50"}  # model_presets("mask_rcnn")
    models, train_fns, infer_fns = {}, {}, {}
    for name, config in configs.items():
        keras.utils.set_random_seed(0)
        model = build_model("mask_rcnn", config, num_classes=len(SHAPE_CATEGORIES), input_shape=(*SIZE, 3))
        model.compile(optimizer=keras.optimizers.SGD(0.001))
        model.make_train_function()
        models[name] = model
        train_fns[name] = lambda m=model: m.train_function(iter([batch]))
        infer_fns[name] = tf.function(lambda x, m=model: m(x, training=False))
    times = {name: {"train": [], "infer": []} for name in configs}
    for step in range(args.steps + 2):
        for name in configs:
            t0 = time.perf_counter()
            logs = train_fns[name]()
            float(logs["loss"])
            t1 = time.perf_counter()
            out = infer_fns[name](batch["image"])
            out["num_detections"].numpy()
            t2 = time.perf_counter()
            if step >= 2:
                times[name]["train"].append(t1 - t0)
                times[name]["infer"].append(t2 - t1)
        print(f"round {step + 1}/{args.steps + 2}", flush=True)
    rows = []
    for name, model in models.items():
        train, infer = np.median(times[name]["train"]), np.median(times[name]["infer"])
        rows.append({"config": name, "params": model.count_params(), "batch": args.batch_size,
                     "train_step_s": round(float(train), 3), "infer_step_s": round(float(infer), 3),
                     "train_images_per_s": round(args.batch_size / float(train), 2),
                     "infer_images_per_s": round(args.batch_size / float(infer), 2)})
    base = rows[0]
    for row in rows:
        row["train_vs_small"] = round(row["train_step_s"] / base["train_step_s"], 2)
        row["infer_vs_small"] = round(row["infer_step_s"] / base["infer_step_s"], 2)
    path = write_results("mask_rcnn_step_time", {"machine": machine(), "image_size": list(SIZE), "rows": rows,
                                                 "raw_seconds": times})
    print_table(rows, list(rows[0]))
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
