"""Panoptic FPN to TFLite, fusion included: panoptic-map parity with Keras at real sizes.

Takes the model `shapes_panoptic.py` trains (128x128), rebuilds it at each --sizes with
the same weights (every layer is size-independent), converts it with the builtin-op ROI
Align (export.tflite.detector_tflite; no Flex) and compares TFLite (ai-edge-litert, 2
threads) with Keras (export.report.detector_parity: detections, and the panoptic id maps
pixel by pixel up to a renaming of segment ids) on held-out synthetic scenes drawn at that
size and on the two real COCO photos of ../shared/data/coco-panoptic-sample (when present)
resized to it.
Also times both runtimes side by side.

    python3 benchmarks/panoptic_fpn_export.py [--sizes 128 512] [--images 10]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, SHARED_DATA, print_table, write_results  # noqa: E402


def inputs_at(size, count):
    """(name, float32 [1, size, size, 3]) pairs: synthetic scenes, then the COCO sample photos."""
    from kseg import data as kdata
    from kseg.data.panoptic_shapes import panoptic_shapes_examples

    scenes = panoptic_shapes_examples(count, seed=7, image_size=(size, size), max_instances=6, min_size=size // 8)
    out = [(f"scene {i}", e["image"][None].astype(np.float32)) for i, e in enumerate(scenes)]
    photos = SHARED_DATA / "coco-panoptic-sample" / "input_images"
    for path in sorted(photos.glob("*.jpg")) if photos.is_dir() else []:
        image = kdata.read_image(str(path), channels=3)
        out.append((f"coco {path.stem}", np.asarray(kdata.resize_image(image, (size, size)))[None]))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(RESULTS / "shapes_panoptic_fpn_run" / "best.keras"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--images", type=int, default=10, help="synthetic scenes per size")
    args = parser.parse_args()

    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from export.report import detector_parity
    from export.tflite import detector_tflite
    from kseg.models.panoptic_fpn import PanopticFPN

    trained = keras.models.load_model(args.model)
    rows = []
    for size in args.sizes:
        model = PanopticFPN.from_config({**trained.get_config(), "input_shape": (size, size, 3)})
        model.set_weights(trained.get_weights())
        started = time.perf_counter()
        content = detector_tflite(model)
        convert_s = time.perf_counter() - started
        inputs = inputs_at(size, args.images)
        parity = detector_parity(model, content, [x[0] for _, x in inputs])
        runner = Interpreter(model_content=content, num_threads=2).get_signature_runner()
        forward = tf.function(lambda x, m=model: m(x, training=False))
        keras_ms, lite_ms = [], []
        for _, x in inputs:  # side by side, image by image
            t0 = time.perf_counter()
            np.asarray(forward(x)["panoptic"])
            t1 = time.perf_counter()
            runner(image=x)
            lite_ms.append(1e3 * (time.perf_counter() - t1))
            keras_ms.append(1e3 * (t1 - t0))
        rows.append({"size": size, **{k: parity[k] for k in (
                         "images", "detections", "count_equal", "min_panoptic_agreement", "mean_panoptic_agreement",
                         "max_logit_error", "max_box_error", "min_mask_iou")},
                     "keras_ms": float(np.median(keras_ms[1:])), "litert_ms": float(np.median(lite_ms[1:])),
                     "model_mb": round(len(content) / 1e6, 2), "convert_s": round(convert_s, 1)})
        print(f"size {size}: done", flush=True)
    path = write_results("panoptic_fpn_export", {"model": args.model, "rows": rows})
    print_table(rows, list(rows[0]))
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
