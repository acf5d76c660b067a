"""The panoptic fusion op at 512x512 with 100 detections: the previous graph beside the current one.

Six runners in one process on the same inputs, interleaved run by run (the machine's cores are
shared, so only ratios measured side by side mean much): the previous unrolled graph
(benchmarks/panoptic_fusion_unrolled.py) and the current `kseg.ops.panoptic_fusion`, each in
Keras (tf.function), in LiteRT (2 threads) called through its signature (which copies the
inputs in, 105 MB of masks at 512 x 512 x 100, and the outputs out) and in LiteRT's invoke alone
on inputs set before (the op's own time, as inside Panoptic FPN, whose masks never leave the
graph). Medians and minima of wall time; every output of the four runs must agree (integers
exactly, the stuff score to 1e-6). The inputs are 100 rectangular
masks of random size and place with tied scores, and 8 semantic channels (the "thing" class and
7 stuff classes).

With --panoptic-fpn, Panoptic FPN (small configuration, random weights: static shapes make the
latency independent of them) at --size is converted with each fusion graph and timed end to end
in LiteRT the same way.

    python3 benchmarks/panoptic_fusion_time.py [--runs 15] [--size 512] [--detections 100] [--threads 2] [--panoptic-fpn]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, print_table, write_results  # noqa: E402

NAMES = ("masks", "scores", "classes", "num_detections", "semantic_logits")


def inputs(d, size, s, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros([1, d, size, size], np.float32)
    for i in range(d):
        y1, x1 = rng.integers(0, size - size // 4, size=2)
        h, w = rng.integers(size // 32, size // 3, size=2)
        masks[0, i, y1:y1 + h, x1:x1 + w] = rng.uniform(0.6, 1.0)
    scores = rng.choice(np.float32([0.4, 0.6, 0.7, 0.9]), size=[1, d])
    classes = rng.integers(1, 5, size=[1, d]).astype(np.int32)
    logits = rng.normal(size=[1, size, size, s]).astype(np.float32)
    return {"masks": masks, "scores": scores, "classes": classes, "num_detections": np.int32([d]),
            "semantic_logits": logits}


def _convert(model):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def _interleaved(runners, runs):
    """{name: [ms, ...]}: every runner once per round, `runs` rounds, after one warm-up call each."""
    for run in runners.values():
        run()
    times = {name: [] for name in runners}
    for _ in range(runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _summary(times, old, new):
    row = {}
    for name, ms in times.items():
        row[f"{name}_ms"] = round(float(np.median(ms)), 1)
        row[f"{name}_min_ms"] = round(float(np.min(ms)), 1)
    row["speedup_median"] = round(float(np.median(times[old]) / np.median(times[new])), 2)
    row["speedup_min"] = round(float(np.min(times[old]) / np.min(times[new])), 2)
    return row


def fusion_op(args):
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from benchmarks.panoptic_fusion_unrolled import unrolled_panoptic_fusion
    from kseg.layers import PanopticFusion
    from kseg.ops import panoptic_fusion as fusion_ops

    d, size, s = args.detections, args.size, args.channels
    specs = [("masks", (d, size, size), "float32"), ("scores", (d,), "float32"), ("classes", (d,), "int32"),
             ("num_detections", (), "int32"), ("semantic_logits", (size, size, s), "float32")]
    feed = inputs(d, size, s)
    tensors = {k: tf.constant(v) for k, v in feed.items()}
    runners, outputs, sizes = {}, {}, {}
    for graph, fuse in (("old", unrolled_panoptic_fusion), ("new", fusion_ops.panoptic_fusion)):
        original = fusion_ops.panoptic_fusion
        fusion_ops.panoptic_fusion = fuse  # the layer calls fusion_ops.panoptic_fusion
        try:
            layer = PanopticFusion(stuff_categories=list(range(11, 11 + s - 1)), thing_class=0)
            model_inputs = [keras.Input(shape, batch_size=1, dtype=dtype, name=name) for name, shape, dtype in specs]
            model = keras.Model(model_inputs, layer(*model_inputs))
            keras_fn = tf.function(lambda x, m=model: m(x))
            keras_fn(tensors)  # traced with this graph
            content = _convert(model)
        finally:
            fusion_ops.panoptic_fusion = original
        runner = Interpreter(model_content=content, num_threads=args.threads).get_signature_runner()
        sizes[graph] = round(len(content) / 1e3)
        runners[f"keras_{graph}"] = lambda f=keras_fn: tf.nest.map_structure(lambda v: v.numpy(), f(tensors))
        runners[f"litert_{graph}"] = lambda r=runner: r(**feed)
        interpreter = Interpreter(model_content=content, num_threads=args.threads)
        runners[f"invoke_{graph}"] = _invoke_only(interpreter, feed)
        outputs[f"keras_{graph}"] = {k: np.asarray(v) for k, v in keras_fn(tensors).items()}
        lite = runner(**feed)
        outputs[f"litert_{graph}"] = _by_content(lite, outputs[f"keras_{graph}"])
        runners[f"invoke_{graph}"]()
        invoked = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
        outputs[f"invoke_{graph}"] = _by_content(invoked, outputs[f"keras_{graph}"])
    agree = _agree(outputs)
    times = _interleaved(runners, args.runs)
    row = {"size": size, "detections": d, "channels": s, **_summary(
        {k: times[k] for k in ("litert_old", "litert_new")}, "litert_old", "litert_new")}
    keras = _summary({k: times[k] for k in ("keras_old", "keras_new")}, "keras_old", "keras_new")
    row.update({f"{k}" if k.startswith("keras") else f"keras_{k}": v for k, v in keras.items()})
    invoke = _summary({k: times[k] for k in ("invoke_old", "invoke_new")}, "invoke_old", "invoke_new")
    row.update({f"{k}" if k.startswith("invoke") else f"invoke_{k}": v for k, v in invoke.items()})
    row.update({"litert_over_keras_new": round(float(np.median(times["litert_new"]) / np.median(times["keras_new"])), 2),
                "all_outputs_agree": agree, "old_kb": sizes["old"], "new_kb": sizes["new"]})
    return row, times


def _invoke_only(interpreter, feed):
    """A runner of `interpreter.invoke()` alone, its inputs set once from `feed` (by name)."""
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        name = next(k for k in sorted(feed, key=len, reverse=True) if k in detail["name"])
        interpreter.set_tensor(detail["index"], feed[name])
    return interpreter.invoke


def _by_content(lite, keras_out):
    """LiteRT signature outputs are named output_0..: match each Keras output by shape, dtype and value."""
    out = {}
    for key, want in keras_out.items():
        same = [v for v in lite.values() if v.shape == want.shape and v.dtype == want.dtype and _close(v, want)]
        out[key] = same[0] if same else None
    return out


def _close(a, b):
    return np.allclose(a, b, rtol=0, atol=1e-6) if a.dtype == np.float32 else np.array_equal(a, b)


def _agree(outputs):
    first = outputs["keras_new"]
    return all(out[k] is not None and _close(out[k], first[k]) for out in outputs.values() for k in first)


def panoptic_fpn(args):
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from benchmarks.panoptic_fusion_unrolled import unrolled_panoptic_fusion
    from export.tflite import detector_tflite, panoptic_agreement
    from kseg.models import build_model, model_presets
    from kseg.ops import panoptic_fusion as fusion_ops

    keras.utils.set_random_seed(0)
    size = args.size
    image = np.random.default_rng(1).uniform(0, 255, [1, size, size, 3]).astype(np.float32)
    runners, maps = {}, {}
    for graph, fuse in (("old", unrolled_panoptic_fusion), ("new", fusion_ops.panoptic_fusion)):
        original = fusion_ops.panoptic_fusion
        fusion_ops.panoptic_fusion = fuse
        try:
            keras.utils.set_random_seed(0)
            model = build_model("panoptic_fpn", "small", num_classes=3, num_stuff_classes=3,
                                input_shape=(size, size, 3))
            content = detector_tflite(model)
        finally:
            fusion_ops.panoptic_fusion = original
        runner = Interpreter(model_content=content, num_threads=args.threads).get_signature_runner()
        runners[f"panoptic_fpn_{graph}"] = lambda r=runner: r(image=image)
        maps[graph] = runner(image=image)["panoptic"][0]
    times = _interleaved(runners, args.runs)
    row = {"size": size, "detections": model_presets("panoptic_fpn")["small"]["max_detections"],
           **_summary(times, "panoptic_fpn_old", "panoptic_fpn_new"),
           "panoptic_agreement": float(panoptic_agreement(maps["old"], maps["new"]))}
    return row, times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads (results file gains _<n>threads if not 2)")
    parser.add_argument("--panoptic-fpn", action="store_true", help="also time Panoptic FPN end to end")
    args = parser.parse_args()

    row, times = fusion_op(args)
    results = {"machine": machine(), "runs": args.runs, "threads": args.threads, "row": row, "raw": times}
    print_table([row], list(row))
    if args.panoptic_fpn:
        fpn_row, fpn_times = panoptic_fpn(args)
        results.update({"panoptic_fpn": fpn_row, "panoptic_fpn_raw": fpn_times})
        print_table([fpn_row], list(fpn_row))
    name = "panoptic_fusion_time" + ("" if args.threads == 2 else f"_{args.threads}threads")
    path = write_results(name, results)
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
