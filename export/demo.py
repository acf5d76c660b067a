"""`kseg demo`: the product in a few minutes on the embedded ISBI 2012 sample, no download.

train (a fixed number of seeded steps, `kseg.training.demo`) -> evaluate on the 2 held-out
pairs -> export fp32 and int8 TFLite with the parity report (`export.report`) -> benchmark
both on 2 CPU threads (`export.bench`) -> overlay, training curves and latency chart, and a
one-screen summary (`summary_text`).

Files under the output folder:
    run/                      the `kseg train` run folder (best.keras, curves.png, metrics.json, ...)
    overlay.png               held-out images: input, ground truth, prediction
    export/                   isbi_unet_{fp32,int8}.tflite, export_report.{json,md}
    bench.json, bench.txt     the latency benchmark (`export.bench`) and its table
    latency.png               mean invoke latency per variant
    summary.txt, summary.json the summary printed at the end
"""

import argparse
import contextlib
import json
import os
import time

from kseg.utils import atomic_write, write_json

VARIANTS = ("fp32", "int8")


def run(output_dir="kseg-demo", threads=2, verbose=1, **train_kwargs):
    """Trains, evaluates, exports, benchmarks and draws; holds the run folder's lock throughout.

    Args:
        output_dir: folder for every file (see the module doc).
        threads: CPU threads of the benchmark (an int >= 1).
        verbose: progress output (0: none).
        **train_kwargs: `kseg.training.demo.train_demo`'s (epochs, steps_per_epoch,
            image_size, filters, seed).

    Returns:
        {"mean_iou": {"keras", "fp32", "int8"}, "agreement": {variant: argmax agreement with
         Keras}, "size_bytes": {variant}, "latency_ms": {variant: mean invoke ms},
         "end_to_end_ms": {variant}, "parity_passed", "steps", "train_seconds",
         "total_seconds", "files": {what: path}}; also written as summary.json.

    Raises:
        RunFolderBusy: another process writes `output_dir`/run.
    """
    from kseg.training.demo import check_settings, train_demo
    from kseg.utils.run_lock import run_lock

    check_settings(threads=threads, **train_kwargs)  # before the run folder is created
    start = time.monotonic()
    with run_lock(os.path.join(output_dir, "run")):
        trained = train_demo(output_dir, verbose=verbose, **train_kwargs)
        exported = _export(trained, os.path.join(output_dir, "export"), verbose)
        latency = _bench([exported["variants"][v]["file"] for v in VARIANTS], output_dir, threads)
    variants = exported["variants"]
    files = {"run folder": trained["run"], "model": trained["model"], "curves": trained["curves"],
             "overlay": trained["overlay"], **{v: variants[v]["file"] for v in VARIANTS},
             "parity report": os.path.join(output_dir, "export", "export_report.md"),
             "benchmark": latency["json"], "latency chart": latency["chart"],
             "summary": os.path.join(output_dir, "summary.txt")}
    summary = {
        "mean_iou": {"keras": exported["keras_mean_iou"], **{v: variants[v]["mean_iou"] for v in VARIANTS}},
        "run_mean_iou": trained["mean_iou"],
        "agreement": {v: variants[v]["agreement"] for v in VARIANTS},
        "size_bytes": {v: variants[v]["size_bytes"] for v in VARIANTS},
        "latency_ms": latency["invoke_ms"],
        "end_to_end_ms": latency["end_to_end_ms"],
        "threads": threads,
        "parity_passed": bool(exported["passed"]),
        "steps": trained["steps"],
        "train_seconds": trained["train_seconds"],
        "total_seconds": time.monotonic() - start,
        "held_out": [os.path.basename(p) for p, _ in trained["val_pairs"]],
        "files": files,
    }
    write_json(os.path.join(output_dir, "summary.json"), summary)
    with atomic_write(files["summary"]) as f:
        f.write(summary_text(summary) + "\n")
    return summary


def _export(trained, export_dir, verbose):
    """fp32 and int8 files with the parity report on the held-out pairs (int8 calibrated on training images)."""
    import keras

    from export.report import export_model, load_examples

    spec = trained["spec"]
    reading = dict(image_size=spec.image_size, channels=spec.channels, remap=spec.remap)
    return export_model(
        keras.models.load_model(trained["model"]), export_dir, examples=load_examples(trained["val_pairs"], **reading),
        calibration=load_examples(trained["train_pairs"], **reading)["images"], variants=VARIANTS,
        labels=spec.class_names, name="isbi_unet", gpu=False, verbose=bool(verbose),
    )


def _bench(paths, output_dir, threads):
    """`export.bench` on the CPU with `threads` threads: its JSON, table and latency chart."""
    from export import bench

    args = bench.add_arguments(argparse.ArgumentParser()).parse_args([str(p) for p in paths])
    args.threads = [threads]
    args.json = os.path.join(output_dir, "bench.json")
    args.chart = os.path.join(output_dir, "latency.png")
    with atomic_write(os.path.join(output_dir, "bench.txt")) as f, contextlib.redirect_stdout(f), \
            contextlib.redirect_stderr(f):
        status = bench.run(args)
    if status != 0:
        raise RuntimeError(f"the benchmark of {paths} failed (exit status {status}); see "
                           f"{os.path.join(output_dir, 'bench.txt')} and {args.json}")
    with open(args.json, encoding="utf-8") as f:
        results = json.load(f)["results"]
    by_variant = {v: next(r for r in results if r["path"] == str(path)) for v, path in zip(VARIANTS, paths)}
    return {"json": args.json, "chart": args.chart,
            "invoke_ms": {v: r["invoke"]["mean_ms"] for v, r in by_variant.items()},
            "end_to_end_ms": {v: (r.get("end_to_end") or {}).get("mean_ms") for v, r in by_variant.items()}}


def summary_text(summary):
    """The one-screen summary of `run`'s dict: accuracy, parity, size, latency and files."""
    miou, agree, size, ms, e2e = (summary[k] for k in ("mean_iou", "agreement", "size_bytes", "latency_ms",
                                                     "end_to_end_ms"))
    threads = f"ms x{summary['threads']}"
    lines = [
        f"kseg demo: U-Net on the embedded ISBI 2012 sample, {summary['steps']} training steps "
        f"({summary['train_seconds']:.0f} s), {summary['total_seconds']:.0f} s in all",
        f"held-out pairs: {', '.join(summary['held_out'])}",
        "",
        f"{'':8}{'mIoU':>8}{'agreement':>11}{'size':>10}{threads:>9}{'e2e ms':>9}",
        f"{'Keras':8}{miou['keras']:>8.4f}{'':>11}{'':>10}{'':>9}{'':>9}",
    ]
    for v in VARIANTS:
        lines.append(f"{v:8}{miou[v]:>8.4f}{agree[v]:>10.2%} {size[v] / 2**20:>7.2f} MB{ms[v]:>9.2f}"
                     f"{(e2e[v] if e2e[v] is not None else float('nan')):>9.2f}")
    lines += ["", f"parity: {'passed' if summary['parity_passed'] else 'FAILED'} (export/export_report.md)", "",
              "files:"]
    width = max(len(k) for k in summary["files"])
    lines += [f"  {k:<{width}}  {p}" for k, p in summary["files"].items()]
    return "\n".join(line.rstrip() for line in lines)
