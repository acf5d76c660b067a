"""ROI Align's training gradient: kseg's exact one against TensorFlow's lossy CPU kernel.

TensorFlow's CPU gradient of crop_and_resize adds into the image gradient from several
threads without synchronisation, so overlapping boxes lose updates; kseg's ROI Align
replaces it with a scatter (unsorted_segment_sum). This script measures both sides in one
process, interleaved:

- correctness: N copies of one box must give N times the gradient of one box (the fraction
  of the gradient that arrives, over several runs);
- cost: the Mask R-CNN (small configuration) training step with each gradient.

    python3 benchmarks/roi_align_gradient.py [--size 256] [--batch-size 2] [--steps 15]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table, write_results  # noqa: E402


def tensorflow_gradient(canvas, crop_boxes, box_indices, n):
    """The crop in kseg's ROI Align, with TensorFlow's own registered gradient."""
    import tensorflow as tf

    return tf.image.crop_and_resize(canvas, crop_boxes, box_indices, (n, n), method="bilinear",
                                    extrapolation_value=0.0)


def arriving_fraction(crop, copies=4000, runs=5):
    """Fractions of the exact gradient that arrive for `copies` identical boxes, per run."""
    import tensorflow as tf

    canvas = tf.constant(np.random.default_rng(0).normal(size=(1, 20, 20, 64)).astype(np.float32))
    boxes = tf.constant(np.tile([[0.1, 0.1, 0.9, 0.9]], (copies, 1)).astype(np.float32))
    indices = tf.zeros([copies], tf.int32)
    fractions = []
    for _ in range(runs):
        with tf.GradientTape() as tape:
            tape.watch(canvas)
            loss = tf.reduce_sum(crop(canvas, boxes, indices, 14))
        fractions.append(float(tf.reduce_sum(tape.gradient(loss, canvas))) / (copies * 14 * 14 * 64))
    return fractions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()

    import keras

    import kseg.ops.roi_align as roi_align
    from kseg.data.instance_pipeline import instance_dataset
    from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples
    from kseg.models import build_model

    size = (args.size, args.size)
    examples = shapes_dataset_examples(args.batch_size, seed=0, image_size=size, min_size=args.size // 8)
    batch = next(iter(instance_dataset(examples, image_size=size, max_instances=16, batch_size=args.batch_size,
                                       shuffle=False, flip=False)))
    crops = {"tensorflow": tensorflow_gradient, "kseg": roi_align._crop_and_resize}
    steps = {}
    for name, crop in crops.items():
        roi_align._crop_and_resize = crop  # read when the training graph is traced, just below
        keras.utils.set_random_seed(0)
        model = build_model("mask_rcnn", "small", num_classes=len(SHAPE_CATEGORIES), input_shape=(*size, 3))
        model.compile(optimizer=keras.optimizers.SGD(0.001))
        model.make_train_function()
        steps[name] = lambda m=model: float(m.train_function(iter([batch]))["loss"])
        steps[name]()
        steps[name]()
    roi_align._crop_and_resize = crops["kseg"]
    times = {name: [] for name in crops}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, crop in crops.items():
        fractions = arriving_fraction(crop)
        rows.append({"gradient": name, "train_step_s": round(float(np.median(times[name])), 4),
                     "min_gradient_arriving": round(min(fractions), 4), "max_gradient_arriving": round(max(fractions), 4)})
    for row in rows:
        row["step_vs_tensorflow"] = round(row["train_step_s"] / rows[0]["train_step_s"], 2)
    path = write_results("roi_align_gradient", {"image_size": list(size), "batch_size": args.batch_size,
                                                "rows": rows, "raw_seconds": times})
    print_table(rows, list(rows[0]))
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
