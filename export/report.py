"""`kseg export`: every requested TFLite variant of a model, each checked against the Keras model.

For each variant the report gives the file size, op counts, parity with the Keras model on
real images (max / mean abs error of the outputs, argmax agreement, mIoU against the ground
truth beside the Keras model's), the GPU delegate analyzer's verdict and a real run on LiteRT's
GPU accelerator (full delegation, GPU-vs-CPU error). A variant that misses its parity tolerance
is flagged and makes `export_model` report `passed: False` (the CLI then exits non-zero).
"""

import contextlib
import io
import os
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from export import runtime, tflite
from kseg.ops.checks import check_choice
from kseg.utils import ProgressBar, atomic_write, write_json

# What each variant must reach on real images to pass. fp32 must reproduce the Keras logits;
# the reduced-precision variants must keep the per-pixel decisions: an argmax agreement
# floor well above what a broken conversion gives (about 1/K, or one class everywhere).
TOLERANCES = {
    "fp32": {"max_abs_error": 1e-4, "min_agreement": 0.999},
    "fp16": {"min_agreement": 0.99},
    "dynamic": {"min_agreement": 0.98},
    "int8": {"min_agreement": 0.95},
}
TOLERANCE_KEYS = ("max_abs_error", "min_agreement")
GPU_IMAGES = 2  # SwiftShader emulates the GPU on the CPU: slow, and only correctness is measured


def image_pairs(image_dir, mask_dir=None):
    """[(image path, mask path or None)] of a folder of images (and masks paired by stem)."""
    from kseg.data import DataError, find_pairs

    if mask_dir is not None:
        return find_pairs(image_dir, mask_dir)
    if not Path(image_dir).is_dir():
        raise DataError(f"{image_dir}: image folder not found; expected a folder of PNG/JPEG images")
    pairs = [(str(p), None) for p in sorted(Path(image_dir).iterdir())
             if p.suffix.lower() in (".png", ".jpg", ".jpeg") and not p.name.startswith(".")]
    if not pairs:
        raise DataError(f"{image_dir}: no PNG/JPEG images found; expected real images to calibrate and check the export")
    return pairs


def load_examples(pairs, *, image_size, channels, remap=None, limit=None):
    """Real images (and masks) for calibration and parity, resized to the model's size.

    Args:
        pairs: [(image path, mask path or None)], e.g. from `image_pairs`.
        image_size: (H, W) the images are resized to (bilinear; masks nearest).
        channels: 1 (grey) or 3 (RGB), as Pillow converts them.
        remap: optional {mask value: class id}.
        limit: use at most this many pairs (an int >= 1), spread evenly over the list;
            None for all of them.

    Returns:
        {"images": uint8 [N, H, W, C], "masks": int32 [N, H, W] or None, "names": [str]}.
    """
    from kseg.data import apply_remap, read_mask, remap_table
    from kseg.data.image_files import open_image

    pairs = list(pairs)
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        raise ValueError(f"limit={limit!r} (`--num-images` / `--num-calibration`): expected an int >= 1 or None "
                         "(every image)")
    if not pairs:
        raise ValueError("load_examples: no image pairs, expected at least one image")
    if limit and len(pairs) > limit:
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, limit).round().astype(int)]
    height, width = image_size
    table = remap_table(remap)
    images, masks = [], []
    for image_path, mask_path in pairs:
        image = open_image(image_path, "image").convert("L" if channels == 1 else "RGB")
        image = np.asarray(image.resize((width, height), Image.BILINEAR), np.uint8)
        images.append(image.reshape(height, width, channels))
        if mask_path is not None:
            mask = read_mask(mask_path)
            mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST), np.int32)
            masks.append(apply_remap(mask, table))
    return {
        "images": np.stack(images),
        "masks": np.stack(masks) if len(masks) == len(images) else None,
        "names": [Path(p).name for p, _ in pairs],
    }


def export_model(model, output_dir, *, examples, calibration=None, variants=tflite.VARIANTS, image_size=None,
                 input_type="uint8", output="logits", rgb_input=False, int8_io="uint8", labels=None, ignore_class=None,
                 name=None, version="1", metadata=True, gpu=True, allow_flex=False, tolerances=None, verbose=True):
    """Exports `model` to the requested TFLite variants and checks each one.

    Args:
        model: a kseg Keras model (raw pixels in, logits out).
        output_dir: folder for `<name>_<variant>.tflite`, `export_report.json` and `.md`.
        examples: `load_examples(...)` output: the real images (and masks) parity is measured on.
        calibration: uint8 images [N, H, W, C] that calibrate the int8 variant (default:
            `examples["images"]`; use different images where you have them).
        variants: any of tflite.VARIANTS.
        image_size, input_type, output, rgb_input: see `tflite.device_model`.
        int8_io: "uint8" or "float32" inputs/outputs of the int8 variant.
        labels: class names (default "class_0", ...); embedded in the model's metadata.
        ignore_class: ground-truth label that the mIoU ignores.
        name, version: recorded in the file names and the metadata.
        metadata: embed TFLite metadata (labels, normalization, ...) for MediaPipe and apps.
        gpu: run each variant on LiteRT's GPU accelerator (in a child process).
        allow_flex: allow select-TF (Flex) ops.
        tolerances: {variant: {key: value}} overriding TOLERANCES (keys TOLERANCE_KEYS).
        verbose: print progress.

    Returns:
        The report dict (also written as JSON and Markdown); `report["passed"]` is False when
        a variant misses its tolerance.
    """
    for variant in variants:
        check_choice("variants", variant, tflite.VARIANTS)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    name = name or model.name
    fixed = tflite.device_model(model, image_size, input_type=input_type, output=output, rgb_input=rgb_input)
    num_classes = int(model.output.shape[-1])
    labels = list(labels) if labels else [f"class_{k}" for k in range(num_classes)]
    if len(labels) != num_classes:
        raise ValueError(f"labels: got {len(labels)} names {labels}; the model has {num_classes} classes.")
    inputs = _model_inputs(examples["images"], fixed)
    calibration_inputs = _model_inputs(examples["images"] if calibration is None else calibration, fixed)
    tol = {v: {**TOLERANCES[v], **(tolerances or {}).get(v, {})} for v in TOLERANCES}

    reference = [_canonical(_as_list(fixed(x[None], training=False)), None) for x in inputs]
    keras_miou = _mean_iou([r["classes"] for r in reference], examples["masks"], num_classes, ignore_class)
    report = {
        "model": name,
        "version": version,
        "num_classes": num_classes,
        "labels": labels,
        "input": {"shape": list(fixed.input.shape), "dtype": input_type, "rgb_input": rgb_input},
        "output": output,
        "int8_io": int8_io,
        "parity_images": len(inputs),
        "calibration_images": len(calibration_inputs),
        "keras_mean_iou": keras_miou,
        "tolerances": {v: tol[v] for v in variants},
        "variants": {},
    }
    bar = ProgressBar(len(variants), "export") if verbose else None
    for variant in variants:
        started = time.perf_counter()
        content = tflite.convert_variant(
            fixed, variant, representative=[c[None] for c in calibration_inputs], int8_io=int8_io, allow_flex=allow_flex
        )
        if metadata:
            from export.metadata import add_metadata

            content = add_metadata(
                content, labels=labels, name=name, version=str(version),
                description=f"kseg {name} ({variant}): {output} for {num_classes} classes",
                mean=(0.0,) * fixed.input.shape[-1], std=(1.0,) * fixed.input.shape[-1],
                activation="softmax" if output == "logits" else "none",
            )
        path = output_dir / f"{name}_{variant}.tflite"
        with atomic_write(path, "wb") as f:
            f.write(content)
        entry = _check_variant(content, path, inputs, reference, examples["masks"], num_classes, ignore_class, gpu)
        entry["convert_seconds"] = round(time.perf_counter() - started, 2)
        entry["mean_iou_drop"] = (
            None if entry["mean_iou"] is None or keras_miou is None else keras_miou - entry["mean_iou"]
        )
        entry["failures"] = _failures(entry, tol[variant])
        entry["passed"] = not entry["failures"]
        report["variants"][variant] = entry
        if bar:
            bar.update(1)
    if "fp32" in report["variants"]:
        base = report["variants"]["fp32"]["size_bytes"]
        for entry in report["variants"].values():
            entry["size_ratio_vs_fp32"] = base / entry["size_bytes"]
    report["passed"] = all(e["passed"] for e in report["variants"].values())
    write_json(output_dir / "export_report.json", report)
    with atomic_write(output_dir / "export_report.md") as f:
        f.write(markdown(report))
    return report


def _model_inputs(images, fixed):
    """uint8 images -> what the device model's input takes (uint8, or float32 raw pixels)."""
    images = np.asarray(images)
    expected = tuple(fixed.input.shape[1:])
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images have shape {images.shape}; the exported model takes [N, {', '.join(map(str, expected))}]"
                         " (load them with load_examples at the model's size and channels).")
    return images.astype(fixed.input.dtype)


def _as_list(outputs):
    return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def _canonical(arrays, details):
    """Outputs by role: "scores" [H, W, K] float, "class_map" [H, W] int, "confidence" [H, W]; "classes"."""
    out = {}
    for i, array in enumerate(arrays):
        detail = details[i] if details else None
        if detail is not None and detail["quantization"][0]:
            array = runtime.dequantize(array, detail)
        array = array[0]
        if array.ndim == 3:
            out["scores"] = array.astype(np.float32)
        elif np.issubdtype(array.dtype, np.integer):
            out["class_map"] = array
        else:
            out["confidence"] = array.astype(np.float32)
    out["classes"] = out["class_map"] if "class_map" in out else np.argmax(out["scores"], axis=-1)
    return out


def _mean_iou(predictions, masks, num_classes, ignore_class):
    if masks is None:
        return None
    from kseg.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(num_classes, ignore_class=ignore_class)
    matrix.update(np.asarray(masks), np.stack(predictions).astype(np.int32))
    return float(matrix.summary()["mean_iou"])


def _check_variant(content, path, inputs, reference, masks, num_classes, ignore_class, gpu):
    with runtime.Runner(content, accelerator="cpu", num_threads=2) as runner:
        feed = [_feed(x, runner.inputs[0]) for x in inputs]
        got = [_canonical(runner.run(x), runner.outputs) for x in feed]
        details = runner.inputs[0], runner.outputs
    entry = {
        "file": str(path),
        "size_bytes": len(content),
        "op_counts": tflite.op_counts(content),
        "input": _detail(details[0]),
        "outputs": [_detail(d) for d in details[1]],
        **_errors(got, reference),
        "mean_iou": _mean_iou([g["classes"] for g in got], masks, num_classes, ignore_class),
    }
    entry["gpu"] = (_gpu_check(content, path, feed[:GPU_IMAGES], got[:GPU_IMAGES], details[1]) if gpu
                    else {"skipped": "gpu=False"})
    return entry


def _feed(image, detail):
    """One image [H, W, C] as the TFLite input takes it: quantized for quantized inputs."""
    x = image[None]
    return x if x.dtype == np.dtype(detail["dtype"]) else runtime.quantize(x, detail)


def _detail(d):
    return {"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
            "quantization": [float(d["quantization"][0]), int(d["quantization"][1])]}


def _errors(got, reference):
    """Max/mean abs error per float output and argmax agreement, over all images."""
    errors = {}
    for key in ("scores", "confidence"):
        if key in reference[0] and key in got[0]:
            diff = np.concatenate([np.abs(g[key] - r[key]).ravel() for g, r in zip(got, reference)])
            errors[f"{key}_max_abs_error"] = float(diff.max())
            errors[f"{key}_mean_abs_error"] = float(diff.mean())
    agree = np.concatenate([(g["classes"] == r["classes"]).ravel() for g, r in zip(got, reference)])
    errors["agreement"] = float(agree.mean())
    float_errors = [v for k, v in errors.items() if k.endswith("_max_abs_error")]
    errors["max_abs_error"] = max(float_errors) if float_errors else None
    return errors


def _failures(entry, tolerance):
    failures = []
    limit = tolerance.get("max_abs_error")
    if limit is not None and entry["max_abs_error"] is not None and not entry["max_abs_error"] <= limit:
        failures.append(f"max abs error {entry['max_abs_error']:.3g} > {limit:g}")
    floor = tolerance.get("min_agreement")
    if floor is not None and not entry["agreement"] >= floor:
        failures.append(f"argmax agreement {entry['agreement']:.4f} < {floor:g}")
    return failures


def gpu_analyzer(content):
    """The TFLite analyzer's GPU-delegate verdict: {"compatible": bool, "incompatible_ops": [...]}."""
    import tensorflow as tf

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        tf.lite.experimental.Analyzer.analyze(model_content=content, gpu_compatibility=True)
    text = buffer.getvalue()
    ops = sorted(set(re.findall(r"GPU COMPATIBILITY WARNING: .*?(?:Op|op) (\w+)", text)))
    ops += sorted(set(re.findall(r"^\s*Op#\d+ (\w+)\(.*?GPU COMPATIBILITY WARNING", text, flags=re.M)) - set(ops))
    compatible = "looks compatible with GPU delegate" in text
    warnings = [line.strip() for line in text.splitlines() if "COMPATIBILITY WARNING" in line]
    return {"compatible": compatible, "incompatible_ops": ops, "warnings": warnings[:20]}


def _gpu_check(content, path, feed, cpu, output_details):
    result = {"analyzer": gpu_analyzer(content)}
    if not runtime.enable_gpu_emulation() and not os.environ.get("VK_ICD_FILENAMES"):
        result["skipped"] = "no Vulkan driver for LiteRT's GPU accelerator (install chromium and libvulkan1)"
        return result
    outputs, fully = [], True
    try:
        for x in feed:  # a child per image: a crash in the GPU runtime never takes this process down
            run = runtime.in_subprocess(runtime.gpu_outputs, str(path), [x], timeout=600)
            outputs.append(run["outputs"])
            fully = fully and bool(run["fully_accelerated"])
    except Exception as e:  # the child reports crashes and runtime errors as exceptions
        result["error"] = f"{type(e).__name__}: {e}"
        result["fully_accelerated"] = False
        return result
    got = [_canonical(outs, output_details) for outs in outputs]
    result["fully_accelerated"] = fully
    result["images"] = len(feed)
    result.update({f"vs_cpu_{k}": v for k, v in _errors(got, cpu).items()})
    return result


def markdown(report):
    """The report as a Markdown page: one row per variant, then the GPU findings."""
    mb = 1024 * 1024
    lines = [
        f"# Export report: {report['model']} v{report['version']}",
        "",
        f"Input {report['input']['shape']} {report['input']['dtype']}"
        + (" (RGB, converted to grey in the graph)" if report["input"]["rgb_input"] else "")
        + f"; output: {report['output']}; {report['num_classes']} classes; "
        f"parity on {report['parity_images']} real images, int8 calibrated on {report['calibration_images']}.",
        "",
        "| variant | size MB | x smaller | ops | max abs err | mean abs err | argmax agreement | mIoU | Keras mIoU | GPU analyzer | GPU fully accelerated | GPU vs CPU max err | parity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, e in report["variants"].items():
        gpu = e["gpu"]
        lines.append("| " + " | ".join([
            variant,
            f"{e['size_bytes'] / mb:.2f}",
            f"{e.get('size_ratio_vs_fp32', float('nan')):.2f}",
            str(sum(e["op_counts"].values())),
            _fmt(e["max_abs_error"]),
            _fmt(e.get("scores_mean_abs_error", e.get("confidence_mean_abs_error"))),
            f"{e['agreement']:.5f}",
            _fmt(e["mean_iou"]),
            _fmt(report["keras_mean_iou"]),
            "compatible" if gpu.get("analyzer", {}).get("compatible") else
            ("incompatible: " + ", ".join(gpu.get("analyzer", {}).get("incompatible_ops", [])) if "analyzer" in gpu else "-"),
            str(gpu.get("fully_accelerated", gpu.get("skipped", "-"))),
            _fmt(gpu.get("vs_cpu_max_abs_error")),
            "pass" if e["passed"] else "**FAIL**: " + "; ".join(e["failures"]),
        ]) + " |")
    lines.append("")
    for variant, e in report["variants"].items():
        if "error" in e["gpu"]:
            lines.append(f"- {variant} on the GPU accelerator: {e['gpu']['error']}")
    lines.append(f"Overall: {'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines) + "\n"


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float) and (abs(value) < 1e-3 and value != 0):
        return f"{value:.2e}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------- detectors
# Mask R-CNN, Panoptic FPN and MaskFormer have their own report (accuracy, parity and latency per
# variant): export.detector_report; `export.run.export_run` picks one by the run's task. Its names
# stay importable from here for the benchmarks that read them from `export.report`.
from export.detector_report import DETECTOR_TOLERANCES, detector_parity, export_detector  # noqa: E402,F401
