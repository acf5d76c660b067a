"""`kseg export` for detectors: the fp32, fp16, dynamic-range and int8 TFLite variants of a Mask
R-CNN, Panoptic FPN or MaskFormer, each checked against the Keras model.

Per variant the report gives the file size, the CPU latency (LiteRT, 2 threads), the accuracy
on held-out images with ground truth (mask AP for Mask R-CNN, PQ for the panoptic models; the
evaluation functions of kseg.training run the TFLite interpreter as their `forward`) beside the
Keras model's, and detection parity (same-class matches, box error, mask IoU, panoptic-map
agreement). A variant that loses more accuracy than its bound, or an fp32 variant that does not
reproduce Keras, is flagged and the report says `passed: False` (the CLI then exits 1). The
size and speed targets against fp32 are reported as met or missed, without failing.
"""

import contextlib
import time
from pathlib import Path

import numpy as np

from export import runtime, tflite
from export.runtime.partition import write_gpu_package
from kseg.ops.checks import check_choice
from kseg.utils import ProgressBar, atomic_write, write_json

# fp32 must reproduce Keras: every detection (same class, box within 1e-3 of the image size,
# mask IoU >= 0.99) and the panoptic map. Every variant: at most `max_accuracy_drop` points of
# mask AP (instance) or PQ (panoptic) below the Keras model's on the held-out images.
DETECTOR_TOLERANCES = {
    "fp32": {"max_box_error": 1e-3, "min_mask_iou": 0.99, "min_panoptic_agreement": 0.999, "max_accuracy_drop": 0.1},
    "fp16": {"max_accuracy_drop": 0.3},
    "dynamic": {"max_accuracy_drop": 1.0},
    "int8": {"max_accuracy_drop": 2.0},
}
# Against the fp32 variant of the same model: reported, not failed on (latency on a shared CPU is noisy).
DETECTOR_TARGETS = {"fp16": {"min_size_ratio": 1.9}, "int8": {"min_size_ratio": 3.0, "min_speedup": 1.5}}
# Variants also written as a GPU package (`<name>_<variant>.gpu/`, export.runtime.partition):
# LiteRT's GPU accelerator delegates one part of a graph, so the runs of ops between the NMS ops
# are models of their own there, run in turn with the NMS on the CPU by PartitionedRunner.
GPU_PACKAGE_VARIANTS = ("fp32", "fp16")
TOLERANCE_KEYS = ("max_box_error", "min_mask_iou", "min_panoptic_agreement", "max_accuracy_drop")


def is_panoptic(model):
    """True for a PanopticFPN or MaskFormer (scored by PQ), False for a Mask R-CNN (mask AP)."""
    from kseg.models import MaskFormer, PanopticFPN

    return isinstance(model, (PanopticFPN, MaskFormer))


def tflite_forward(content, num_threads=2):
    """images [B, H, W, 3] -> the detector's output dict (NumPy), one LiteRT call per image:
    the `forward` that kseg.training's evaluation functions take."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=content, num_threads=num_threads).get_signature_runner()

    def forward(images):
        outputs = [runner(image=np.asarray(image, np.float32)[None]) for image in np.asarray(images)]
        return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}

    return forward


def accuracy(model, examples, categories, forward=None):
    """Mask AP (Mask R-CNN) or PQ (Panoptic FPN, MaskFormer) in points (0-100) on `examples`.

    Args:
        model: the Keras detector.
        examples: held-out example dicts at the model's size (kseg.training.examples.resized).
        categories: the run's categories.
        forward: images -> outputs (e.g. `tflite_forward`); default the Keras model.

    Returns:
        {"metric": "mask_AP" or "PQ", "value": points, or None when nothing could be scored}.
    """
    from kseg import tasks

    panoptic = is_panoptic(model)
    report = tasks.get_task("panoptic" if panoptic else "instance").evaluate(model, examples, categories, batch_size=1,
                                                                             forward=forward)
    value, metric = (report["all"]["pq"], "PQ") if panoptic else (report["segm"]["AP"], "mask_AP")
    return {"metric": metric, "value": None if value is None else 100.0 * float(value)}


def cpu_latency(contents, image, runs=10, num_threads=2, rounds=5):
    """Invoke times (ms) of several `.tflite` models on LiteRT's CPU path (XNNPACK), side by side.

    The models take turns: `rounds` rounds, each timing every model `runs // rounds` times in a
    row, so a busy spell of a shared machine slows all of them rather than one.

    Args:
        contents: {name: TFLite bytes}.
        image: float32 [H, W, 3], the input of every model.
        runs: timed runs per model (after 2 warm-up runs).

    Returns:
        {name: {"median_ms", "min_ms", "runs", "threads"}}.
    """
    rounds = max(1, min(rounds, runs))
    times = {name: [] for name in contents}
    with contextlib.ExitStack() as stack:
        runners = {name: stack.enter_context(runtime.Runner(content, accelerator="cpu", num_threads=num_threads))
                   for name, content in contents.items()}
        for runner in runners.values():
            runner.set_inputs(np.asarray(image, np.float32)[None])
            runner.invoke()
            runner.invoke()
        for r in range(rounds):
            for name, runner in runners.items():
                for _ in range(runs // rounds + (r < runs % rounds)):
                    started = time.perf_counter()
                    runner.invoke()
                    times[name].append(1e3 * (time.perf_counter() - started))
    return {name: {"median_ms": float(np.median(t)), "min_ms": float(np.min(t)), "runs": len(t),
                   "threads": num_threads} for name, t in times.items()}


def detector_parity(model, content, images):
    """TFLite (ai-edge-litert, 2 threads) against Keras on images: a MaskRCNN, PanopticFPN or MaskFormer.

    Args:
        model: the Keras detector.
        content: its TFLite bytes (`tflite.detector_tflite`, any variant).
        images: float32 [H, W, 3] images at the model's input size.

    Returns:
        {"images", "detections" (Keras'), "count_equal" (images with the same count),
        "matched_same_class", "max_box_error" (fraction of the image size), "min_mask_iou",
        "mean_mask_iou"}, plus for a panoptic model "min_panoptic_agreement" and
        "mean_panoptic_agreement" (pixels, up to segment renaming) and "max_logit_error" (the
        semantic logits; MaskFormer: its semantic probabilities). A model without boxes
        (MaskFormer) leaves the detection entries at 0 and None.
    """
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=content, num_threads=2).get_signature_runner()
    rows = {"images": 0, "detections": 0, "count_equal": 0, "matched_same_class": 0, "max_box_error": 0.0}
    ious, agreements, logit_errors = [], [], []
    for image in images:
        x = np.asarray(image, np.float32)[None]
        reference = {k: np.asarray(v) for k, v in model(x, training=False).items()}
        got = runner(image=x)
        rows["images"] += 1
        if "boxes" in reference:  # a box detector (not MaskFormer)
            result = tflite.compare_detections(reference, got, model.image_size)
            rows["detections"] += result["count"][0]
            rows["count_equal"] += int(result["count"][0] == result["count"][1])
            rows["matched_same_class"] += result["matched"]
            rows["max_box_error"] = max(rows["max_box_error"], result["max_box_error"])
            ious += result["mask_ious"]
        if "panoptic" in reference:
            agreements.append(tflite.panoptic_agreement(reference["panoptic"][0], got["panoptic"][0]))
            semantic = "semantic_logits" if "semantic_logits" in reference else "semantic"
            logit_errors.append(float(np.abs(reference[semantic] - got[semantic]).max()))
    rows.update(min_mask_iou=min(ious) if ious else None, mean_mask_iou=float(np.mean(ious)) if ious else None)
    if agreements:
        rows.update(min_panoptic_agreement=min(agreements), mean_panoptic_agreement=float(np.mean(agreements)),
                    max_logit_error=max(logit_errors))
    return rows


def detector_failures(entry, limits):
    """What an entry of `export_detector`'s report misses of `limits` (a DETECTOR_TOLERANCES row)."""
    parity, failures = entry["parity"], []
    if "max_box_error" in limits:  # the parity bounds: a variant that must reproduce Keras
        if parity["matched_same_class"] < parity["detections"]:
            failures.append(f"{parity['detections'] - parity['matched_same_class']} Keras detections without a "
                            "same-class TFLite detection")
        if parity["max_box_error"] > limits["max_box_error"]:
            failures.append(f"max_box_error {parity['max_box_error']:.2e} > {limits['max_box_error']:g}")
    if limits.get("min_mask_iou") is not None and parity["min_mask_iou"] is not None \
            and parity["min_mask_iou"] < limits["min_mask_iou"]:
        failures.append(f"min_mask_iou {parity['min_mask_iou']:.4f} < {limits['min_mask_iou']:g}")
    agreement = parity.get("min_panoptic_agreement")
    if limits.get("min_panoptic_agreement") is not None and agreement is not None \
            and agreement < limits["min_panoptic_agreement"]:
        failures.append(f"min_panoptic_agreement {agreement:.5f} < {limits['min_panoptic_agreement']:g}")
    drop = entry["accuracy_drop"]
    if limits.get("max_accuracy_drop") is not None and drop is not None and drop > limits["max_accuracy_drop"]:
        failures.append(f"{entry['metric']} {drop:.2f} points below Keras > {limits['max_accuracy_drop']:g}")
    return failures


def export_detector(model, output_dir, examples, categories, *, calibration=None, variants=tflite.VARIANTS,
                    name=None, tolerances=None, float_ops=None, float_layers=None, latency_runs=10,
                    verbose=True):
    """`kseg export` for a Mask R-CNN, Panoptic FPN or MaskFormer run: every requested variant and its report.

    Writes `<name>_<variant>.tflite`, export_report.json and export_report.md in `output_dir`
    (atomically), and for the GPU_PACKAGE_VARIANTS of a graph with NMS its GPU package
    `<name>_<variant>.gpu/` (parts and manifest.json, export.runtime.partition). Each graph is
    the whole inference model, NMS and (panoptic) the fusion included, at batch 1 and the
    model's input size; float32 image in, the output dict out.

    Args:
        model: the Keras detector.
        output_dir: the folder written.
        examples: held-out example dicts with ground truth at the model's size: accuracy and
            parity are measured on them.
        categories: the run's categories.
        calibration: float32 images [N, H, W, 3] (the run's training images) that calibrate the
            int8 variant; required when "int8" is among `variants`.
        variants: any of tflite.VARIANTS.
        name: file name stem (default: the model's name).
        tolerances: {variant: {key: value}} overriding DETECTOR_TOLERANCES (keys TOLERANCE_KEYS).
        float_ops: int8: TFLite op names kept float (default tflite.DETECTOR_FLOAT_OPS).
        float_layers: int8: Keras layer names kept float (default tflite.DETECTOR_FLOAT_LAYERS).
        latency_runs: timed CPU runs per variant.
        verbose: print progress.

    Returns:
        {"model", "task", "image_size", "metric", "keras_accuracy", "images",
        "calibration_images", "tolerances", "targets", "variants": {variant: {"file",
        "size_bytes", "size_ratio_vs_fp32", "ops", "gpu_package" (fp32, fp16:
        export.runtime.partition.write_gpu_package's summary, None for one part), "cpu",
        "speedup_vs_fp32", "accuracy", "accuracy_drop", "parity", "targets_missed", "failures",
        "passed"}}, "passed"}.
    """
    for variant in variants:
        check_choice("variants", variant, tflite.VARIANTS)
    for variant, row in (tolerances or {}).items():
        check_choice("tolerances", variant, tflite.VARIANTS)
        for key in row:
            check_choice(f"tolerances[{variant!r}]", key, TOLERANCE_KEYS)
    if "int8" in variants and (calibration is None or len(calibration) == 0):
        raise ValueError("calibration: the int8 variant needs real images [N, H, W, 3] to calibrate on (the run's "
                         "training images); got none.")
    if not len(examples):
        raise ValueError("examples: no held-out images to measure the variants on; expected at least one.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    name = name or model.name
    limits = {v: {**DETECTOR_TOLERANCES[v], **(tolerances or {}).get(v, {})} for v in variants}
    images = [np.asarray(e["image"], np.float32) for e in examples]
    keras_accuracy = accuracy(model, examples, categories)
    report = {"model": name, "task": "panoptic" if is_panoptic(model) else "instance",
              "image_size": list(model.image_size), "metric": keras_accuracy["metric"],
              "keras_accuracy": keras_accuracy["value"], "images": len(images),
              "calibration_images": 0 if calibration is None else len(calibration),
              "tolerances": limits, "targets": DETECTOR_TARGETS, "variants": {}}
    representative = None if calibration is None else [np.asarray(c, np.float32)[None] for c in calibration]
    bar = ProgressBar(len(variants), "export") if verbose else None
    runs = {}  # the variants LiteRT runs: timed together at the end
    fp32 = None  # its bytes name the layers the int8 variant keeps float
    for variant in variants:
        started = time.perf_counter()
        content = tflite.detector_tflite(model, variant, representative=representative, float_ops=float_ops,
                                         float_layers=float_layers, float_model=fp32)
        fp32 = content if variant == "fp32" else fp32
        convert_seconds = time.perf_counter() - started
        path = output_dir / f"{name}_{variant}.tflite"
        with atomic_write(path, "wb") as f:
            f.write(content)
        entry = {"file": str(path), "size_bytes": len(content), "ops": tflite.op_counts(content),
                 "convert_seconds": round(convert_seconds, 1), "metric": report["metric"]}
        if variant in GPU_PACKAGE_VARIANTS:  # the GPU network and the CPU's NMS as parts run as one
            entry["gpu_package"] = write_gpu_package(content, output_dir / f"{name}_{variant}.gpu")
        if variant == "int8":  # what stays float, and why: tflite.DETECTOR_FLOAT_*
            entry["kept_float"] = {
                "ops": list(tflite.DETECTOR_FLOAT_OPS if float_ops is None else float_ops),
                "layers": list(tflite.DETECTOR_FLOAT_LAYERS if float_layers is None else float_layers)}
        try:  # a variant LiteRT cannot run, or whose outputs the metric refuses, fails its check
            got = accuracy(model, examples, categories, forward=tflite_forward(content))["value"]
            entry.update(cpu=None, accuracy=got,
                         accuracy_drop=None if got is None or keras_accuracy["value"] is None
                         else keras_accuracy["value"] - got, parity=detector_parity(model, content, images))
            entry["failures"] = detector_failures(entry, limits[variant])
            runs[variant] = content
        except Exception as e:  # LiteRT's RuntimeError, the metric's DataError
            entry.update(cpu=None, accuracy=None, accuracy_drop=None, parity=None,
                         failures=[f"does not run: {type(e).__name__}: {' '.join(str(e).split())[:300]}"])
        entry["passed"] = not entry["failures"]
        report["variants"][variant] = entry
        if bar:
            bar.update(1)
    for variant, cpu in cpu_latency(runs, images[0], latency_runs).items():
        report["variants"][variant]["cpu"] = cpu
    _against_fp32(report)
    report["passed"] = all(e["passed"] for e in report["variants"].values())
    write_json(output_dir / "export_report.json", report)
    with atomic_write(output_dir / "export_report.md") as f:
        f.write(detector_markdown(report))
    return report


def _against_fp32(report):
    """Size ratio, speed-up and the missed DETECTOR_TARGETS of each variant against fp32 (when exported)."""
    base = report["variants"].get("fp32")
    for variant, entry in report["variants"].items():
        entry["size_ratio_vs_fp32"] = None if base is None else base["size_bytes"] / entry["size_bytes"]
        entry["speedup_vs_fp32"] = (None if base is None or not base["cpu"] or not entry["cpu"]
                                    else base["cpu"]["median_ms"] / entry["cpu"]["median_ms"])
        target, missed = DETECTOR_TARGETS.get(variant, {}), []
        if base is not None and entry["size_ratio_vs_fp32"] < target.get("min_size_ratio", 0):
            missed.append(f"{entry['size_ratio_vs_fp32']:.2f}x smaller < {target['min_size_ratio']:g}x")
        if entry["speedup_vs_fp32"] is not None and entry["speedup_vs_fp32"] < target.get("min_speedup", 0):
            missed.append(f"{entry['speedup_vs_fp32']:.2f}x faster < {target['min_speedup']:g}x")
        entry["targets_missed"] = missed


def detector_markdown(report):
    """`export_detector`'s report as a Markdown page: one row per variant."""
    metric = report["metric"].replace("_", " ")
    lines = [f"# {report['model']}: TFLite variants ({report['task']}, "
             f"{report['image_size'][0]}x{report['image_size'][1]})", "",
             f"{metric} of the Keras model on {report['images']} held-out images: {_points(report['keras_accuracy'])}; "
             f"int8 calibrated on {report['calibration_images']} training images; CPU: LiteRT, 2 threads, median.", "",
             f"| variant | size MB | x smaller | CPU ms | x faster | {metric} | drop (points) | matched | "
             "min mask IoU | min panoptic agreement | targets | check |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, e in report["variants"].items():
        p = e["parity"] or {"matched_same_class": "-", "detections": "-", "min_mask_iou": None}
        lines.append("| " + " | ".join([
            variant, f"{e['size_bytes'] / 1e6:.2f}", _ratio(e["size_ratio_vs_fp32"]),
            _points(e["cpu"] and e["cpu"]["median_ms"], 1),
            _ratio(e["speedup_vs_fp32"]), _points(e["accuracy"]), _points(e["accuracy_drop"]),
            f"{p['matched_same_class']}/{p['detections']}", _points(p["min_mask_iou"], 3),
            _points(p.get("min_panoptic_agreement"), 4), "met" if not e["targets_missed"] else
            "missed: " + "; ".join(e["targets_missed"]),
            "pass" if e["passed"] else "**FAIL**: " + "; ".join(e["failures"])]) + " |")
    lines += ["", f"Overall: {'PASS' if report['passed'] else 'FAIL'}", ""]
    return "\n".join(lines)


def _points(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value):
    return "-" if value is None else f"{value:.2f}"
