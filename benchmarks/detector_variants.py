"""Detector TFLite variants side by side: Mask R-CNN, Panoptic FPN and MaskFormer x fp32, fp16, dynamic, int8.

For each trained run folder (`kseg train --task instance|panoptic --shapes N`), the code behind
`kseg export --run`: every variant converted (int8 calibrated on the run's training images),
then on the run's held-out images: file size, CPU latency (LiteRT, 2 threads, median), mask AP
(Mask R-CNN) or PQ (panoptic) beside the Keras model's, and detection parity with Keras; for
fp32 and fp16, the ops LiteRT's GPU accelerator takes and the CPU<->GPU crossings of one
inference (export.delegation, op by op).
Writes benchmarks/results/detector_variants.json and prints one table (model x variant).

    python3 benchmarks/detector_variants.py --runs benchmarks/results/dv_mask_rcnn_run \\
        benchmarks/results/dv_panoptic_fpn_run benchmarks/results/dv_maskformer_run [--images 40]

On a shared machine, run one invocation per run folder in parallel, then the same command with
--table-only for the table and the JSON.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine, print_table, write_results  # noqa: E402


def load(run, images, calibration):
    """(model, held-out examples, categories, calibration images) of a detection run folder."""
    from kseg import tasks
    from kseg.training.examples import resized

    info = tasks.load_run(run)
    detection = tasks.get_task(info.task)
    model = detection.load_model(run)
    train, val, categories = detection.load_splits(info.spec)
    val = resized(val, model.image_size)
    train = resized(train, model.image_size)
    picks = np.linspace(0, len(train) - 1, min(calibration, len(train))).round().astype(int)
    return (model, [val[i] for i in range(min(images, len(val)))], categories,
            np.stack([np.asarray(train[int(i)]["image"], np.float32) for i in picks]))


def gpu_placement(report, variants):
    """{variant: `export.delegation.gpu_summary` + "whole_graph"} of the report's files: which
    ops LiteRT's GPU accelerator takes when each is compiled alone (on SwiftShader here), the
    CPU<->GPU crossings that implies, and whether it takes the whole graph at once (it can
    refuse there what it takes alone: BATCH_MATMUL of two computed tensors)."""
    from export import runtime
    from export.delegation import gpu_op_support, gpu_summary

    placement = {}
    for variant in (v for v in variants if v in report["variants"]):
        path = report["variants"][variant]["file"]
        try:  # the GPU runtime can crash on an op compiled alone: the child dies, the row says so
            placement[variant] = gpu_summary(runtime.in_subprocess(gpu_op_support, path, timeout=1800))
        except RuntimeError as e:
            placement[variant] = {"error": f"per-op check: {str(e).splitlines()[0][:200]}"}
        image = np.zeros([1, *report["image_size"], 3], np.float32)
        try:
            whole = runtime.in_subprocess(runtime.gpu_outputs, path, [image], timeout=900)
            placement[variant]["whole_graph"] = bool(whole["fully_accelerated"])
        except RuntimeError as e:
            placement[variant]["whole_graph"] = None
            placement[variant]["error"] = f"{placement[variant].get('error', '')} whole graph: {str(e)[:200]}".strip()
    return placement


def rows_of(report):
    """One table row per variant of an `export_detector` report (with its "gpu" placement when measured)."""
    rows = []
    r = lambda v, digits=2: None if v is None else round(v, digits)  # noqa: E731
    for variant, e in report["variants"].items():
        p = e["parity"] or {}
        rows.append({
            "model": report["model"], "variant": variant, "MB": round(e["size_bytes"] / 1e6, 2),
            "x_smaller": r(e["size_ratio_vs_fp32"]), "cpu_ms": r(e["cpu"] and e["cpu"]["median_ms"], 1),
            "x_faster": r(e["speedup_vs_fp32"]), "metric": e["metric"],
            "keras": r(report["keras_accuracy"]), "tflite": r(e["accuracy"]),
            "drop": r(e["accuracy_drop"]), "matched": f"{p.get('matched_same_class')}/{p.get('detections')}",
            "min_mask_iou": r(p.get("min_mask_iou"), 3), "mean_pan_agree": r(p.get("mean_panoptic_agreement"), 4),
            "gpu_ops": (f"{g['gpu_ops']}/{g['ops']}" if "ops" in g else "crash") if (
                g := report.get("gpu", {}).get(variant)) else None,
            "crossings": g.get("crossings") if g else None,
            "whole_graph_gpu": g.get("whole_graph") if g else None,
            "targets": "met" if not e["targets_missed"] else "; ".join(e["targets_missed"]),
            "check": "pass" if e["passed"] else "FAIL: " + "; ".join(e["failures"])})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run folders written by kseg train")
    parser.add_argument("--images", type=int, default=40, help="held-out images per model")
    parser.add_argument("--calibration", type=int, default=50, help="training images that calibrate int8")
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=["fp32", "fp16", "dynamic", "int8"])
    parser.add_argument("--gpu", nargs="*", default=["fp32", "fp16"], metavar="VARIANT",
                        help="variants whose ops are placed on LiteRT's GPU accelerator one by one (SwiftShader "
                             "here): ops taken and CPU<->GPU crossings (default fp32 fp16; none: --gpu)")
    parser.add_argument("--gpu-only", action="store_true",
                        help="no conversion: only the GPU placement (--gpu) of the files earlier invocations left")
    parser.add_argument("--table-only", action="store_true",
                        help="no conversion: the table of the reports earlier invocations left for --runs "
                             "(one invocation per run can then run in parallel)")
    args = parser.parse_args()

    reports = {}
    for run in args.runs:
        folder = RESULTS / "detector_variants_run" / Path(run).name
        if args.gpu_only:
            from kseg.utils import write_json

            write_json(folder / "gpu_placement.json",
                       gpu_placement(json.loads((folder / "export_report.json").read_text()), args.gpu))
            print(f"{run}: GPU placement done", flush=True)
        elif not args.table_only:
            from export.detector_report import export_detector
            from kseg.utils import write_json

            model, examples, categories, calibration = load(run, args.images, args.calibration)
            report = export_detector(model, folder, examples, categories, calibration=calibration,
                                     variants=args.variants, latency_runs=args.latency_runs, verbose=False)
            report["gpu"] = gpu_placement(report, args.gpu)
            write_json(folder / "gpu_placement.json", report["gpu"])
            print(f"{run}: done", flush=True)
        reports[run] = json.loads((folder / "export_report.json").read_text())
        if (folder / "gpu_placement.json").exists():
            reports[run]["gpu"] = json.loads((folder / "gpu_placement.json").read_text())
    rows = [row for report in reports.values() for row in rows_of(report)]
    if not (args.table_only or args.gpu_only) and len(args.runs) == 1:  # one of several parallel invocations: the table comes later
        print_table(rows, list(rows[0]))
        return
    path = write_results("detector_variants", {"machine": machine(), "images": args.images,
                                               "calibration_images": args.calibration, "rows": rows,
                                               "reports": reports})
    print_table(rows, list(rows[0]))
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
