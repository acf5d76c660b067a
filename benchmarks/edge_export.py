"""Edge export: size, latency and mIoU of every TFLite variant of the ISBI-trained U-Nets.

For the ISBI U-Net (benchmarks/isbi_unet.py, crops protocol) and the mobile U-Net
(benchmarks/isbi_mobile_unet.py), both at 256x256 with a uint8 input:
  - `kseg export`'s checks: parity with Keras, mIoU of each variant on the 24 validation tiles
    (native-resolution 256x256 tiles of slices 24-29; int8 calibrated on the 96 training tiles),
    GPU delegation on LiteRT's GPU accelerator (SwiftShader here);
  - `kseg bench` latency at 2 threads (CPU interpreter, XNNPACK), all variants side by side in one
    run, repeated for --rounds rounds; ratios use the median over rounds of each mean;
  - the fp32 model's achieved GFLOP/s (conv/matmul FLOPs / median latency) against this CPU's
    peak: the theoretical FMA peak from its vector width and clock, and a measured float32
    GEMM (numpy's BLAS) on the same threads.
Targets (issue: edge deployment): int8 >= 3.5x smaller and >= 1.5x faster than fp32, fp16 2x
smaller; mIoU drop int8 <= 1 point, fp16 <= 0.1 point.

    python benchmarks/edge_export.py --unet RUN/best.keras --mobile RUN/recalibrated.keras
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, isbi_tiles, print_table, write_results

TARGETS = {"int8_smaller": 3.5, "int8_faster": 1.5, "fp16_smaller": 2.0, "int8_miou_drop_points": 1.0,
           "fp16_miou_drop_points": 0.1}


def cpu_peak(threads):
    """This CPU's float32 peak on `threads` threads, measured, beside the nominal-clock figure.

    The nominal figure (the "cpu MHz" this VM reports x FMA lanes x 2 FLOPs x 2 FMA pipes) is
    not a bound here: the cores boost well above it. The bound is measured by
    benchmarks/fma_peak.c (independent FMA chains on every thread), when gcc is available.
    """
    text = Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
    mhz = max(float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    peak = {"nominal_ghz": mhz / 1000, "fp32_lanes": lanes,
            "nominal_peak_gflops": threads * mhz / 1000 * lanes * 2 * 2, "measured_fma_peak_gflops": None}
    source = Path(__file__).with_name("fma_peak.c")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(["gcc", "-O2", "-march=native", "-pthread", str(source), "-o", f"{tmp}/fma_peak"],
                           check=True, capture_output=True)
            out = subprocess.check_output([f"{tmp}/fma_peak", str(threads), "1"], text=True).split()
            peak["measured_fma_peak_gflops"] = float(out[0])
            peak["effective_ghz"] = float(out[0]) / (threads * int(out[1]) * 2 * 2)
        except (OSError, subprocess.CalledProcessError) as e:
            peak["fma_peak_error"] = f"{type(e).__name__}: {e}"
    return peak


def measured_gemm_gflops(threads, n=2048, repeats=5):
    """float32 GEMM rate of numpy's BLAS on `threads` threads, in a child (thread env is read at load)."""
    code = (f"import numpy as np, time; a = np.random.rand({n}, {n}).astype('f4'); b = a.copy(); a @ b; "
            f"t = time.perf_counter(); [a @ b for _ in range({repeats})]; "
            f"print(2 * {n}**3 * {repeats} / (time.perf_counter() - t) / 1e9)")
    env = {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    return float(subprocess.check_output([sys.executable, "-c", code], env=env, text=True).strip())


def bench(files, threads, runs, out):
    """`kseg bench` (as the module) over `files`; returns {file stem: invoke summary dict}."""
    cmd = [sys.executable, "-m", "export.bench", *map(str, files), "--threads", str(threads), "--runs", str(runs),
           "--warmup", "5", "--e2e-runs", "10", "--json", f"{out}.json", "--csv", f"{out}.csv", "--chart", f"{out}.png"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    report = json.loads(Path(f"{out}.json").read_text())
    return {Path(r["path"]).stem: r for r in report["results"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-only", action="store_true",
                        help="keep the latency/export figures of results/edge_export.json, re-measure only the CPU peak")
    parser.add_argument("--unet", help="ISBI-trained U-Net (.keras, e.g. the isbi_unet.py run's best.keras)")
    parser.add_argument("--mobile", help="ISBI-trained mobile U-Net (.keras, isbi_mobile_unet.py's recalibrated.keras)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=None, help="folder for the .tflite files and reports (default: temporary)")
    args = parser.parse_args()
    if args.peak_only:
        from common import RESULTS

        return finish(json.loads((RESULTS / "edge_export.json").read_text()), args.threads)
    if not (args.unet and args.mobile):
        parser.error("--unet and --mobile are required (unless --peak-only)")

    import keras

    import kseg.losses  # noqa: F401  (registers what the .keras files name)
    import kseg.metrics  # noqa: F401
    import kseg.models  # noqa: F401
    from export.report import export_model, image_pairs, load_examples
    from export.runtime import describe

    work = Path(args.output or tempfile.mkdtemp(prefix="kseg-edge-"))
    tiles = isbi_tiles(work / "tiles")
    remap = {0: 0, 255: 1}
    val = load_examples(image_pairs(*tiles["val"]), image_size=(256, 256), channels=1, remap=remap)
    calibration = load_examples(image_pairs(tiles["train"][0]), image_size=(256, 256), channels=1)["images"]
    results = {"setup": {"threads": args.threads, "runs": args.runs, "rounds": args.rounds,
                         "parity_images": len(val["images"]), "calibration_images": len(calibration),
                         "input": "uint8 [1, 256, 256, 1]", "cpu_runtime": "ai-edge-litert Interpreter (XNNPACK)"},
               "targets": TARGETS, "models": {}}
    for name, path in (("unet", args.unet), ("mobile_unet", args.mobile)):
        model = keras.models.load_model(path)
        started = time.perf_counter()
        report = export_model(model, work / name, examples=val, calibration=calibration, image_size=(256, 256),
                              input_type="uint8", labels=["membrane", "cell"], name=name, verbose=True)
        export_seconds = time.perf_counter() - started
        files = [Path(e["file"]) for e in report["variants"].values()]
        rounds = [bench(files, args.threads, args.runs, work / f"{name}_bench_{r}") for r in range(args.rounds)]
        entry = {"source": str(path), "params": model.count_params(), "export_seconds": export_seconds,
                 "keras_mean_iou": report["keras_mean_iou"], "passed": report["passed"], "variants": {}}
        flops = describe(files[0].read_bytes())["flops"]["total"]
        for variant, e in report["variants"].items():
            stem = Path(e["file"]).stem
            means = [r[stem]["invoke"]["mean_ms"] for r in rounds]
            p50s = [r[stem]["invoke"]["p50_ms"] for r in rounds]
            e2e = [r[stem]["end_to_end"]["mean_ms"] for r in rounds if r[stem].get("end_to_end")]
            entry["variants"][variant] = {
                "size_bytes": e["size_bytes"], "size_ratio_vs_fp32": e["size_ratio_vs_fp32"],
                "mean_ms_rounds": means, "mean_ms": float(np.median(means)), "p50_ms": float(np.median(p50s)),
                "end_to_end_ms": float(np.median(e2e)) if e2e else None,
                "peak_rss_mb": rounds[-1][stem].get("peak_rss_mb"),
                "mean_iou": e["mean_iou"], "mean_iou_drop_points": 100 * e["mean_iou_drop"],
                "agreement": e["agreement"], "max_abs_error": e["max_abs_error"], "parity_passed": e["passed"],
                "gpu_fully_accelerated": e["gpu"].get("fully_accelerated"),
                "gpu_analyzer_compatible": e["gpu"].get("analyzer", {}).get("compatible"),
                "gpu_vs_cpu_max_abs_error": e["gpu"].get("vs_cpu_max_abs_error"),
            }
        base = entry["variants"]["fp32"]["mean_ms"]
        for variant, v in entry["variants"].items():
            v["speedup_vs_fp32"] = base / v["mean_ms"]
        entry["fp32_flops"] = flops
        entry["fp32_gflops_per_second"] = flops / (entry["variants"]["fp32"]["p50_ms"] / 1000) / 1e9
        int8, fp16 = entry["variants"]["int8"], entry["variants"]["fp16"]
        entry["targets_met"] = {
            "int8_smaller": int8["size_ratio_vs_fp32"] >= TARGETS["int8_smaller"],
            "int8_faster": int8["speedup_vs_fp32"] >= TARGETS["int8_faster"],
            "fp16_smaller": fp16["size_ratio_vs_fp32"] >= 0.995 * TARGETS["fp16_smaller"],
            "int8_miou_drop": int8["mean_iou_drop_points"] <= TARGETS["int8_miou_drop_points"],
            "fp16_miou_drop": fp16["mean_iou_drop_points"] <= TARGETS["fp16_miou_drop_points"],
        }
        results["models"][name] = entry
    finish(results, args.threads)


def table_rows(results):
    return [{"model": name, "variant": variant, "MB": v["size_bytes"] / 2**20, "x smaller": v["size_ratio_vs_fp32"],
             "mean ms": v["mean_ms"], "x faster": v["speedup_vs_fp32"], "e2e ms": v["end_to_end_ms"],
             "mIoU": v["mean_iou"], "drop pts": v["mean_iou_drop_points"], "agree": v["agreement"],
             "GPU full": v["gpu_fully_accelerated"]}
            for name, entry in results["models"].items() for variant, v in entry["variants"].items()]


def finish(results, threads):
    """Measures the CPU peak, adds the fp32 models' fractions of it, writes and prints everything."""
    peak = cpu_peak(threads)
    peak["measured_gemm_gflops"] = measured_gemm_gflops(threads)
    results["cpu"] = peak
    for entry in results["models"].values():
        fma = peak["measured_fma_peak_gflops"]
        entry["fp32_fraction_of_fma_peak"] = entry["fp32_gflops_per_second"] / fma if fma else None
        entry["fp32_fraction_of_gemm"] = entry["fp32_gflops_per_second"] / peak["measured_gemm_gflops"]
        entry.pop("fp32_fraction_of_peak", None)
    path = write_results("edge_export", {k: v for k, v in results.items() if k not in ("benchmark", "machine")})
    rows = table_rows(results)
    print_table(rows, list(rows[0]))
    for name, entry in results["models"].items():
        fraction = entry["fp32_fraction_of_fma_peak"]
        print(f"{name}: fp32 {entry['fp32_flops'] / 1e9:.2f} GFLOP/frame at {entry['fp32_gflops_per_second']:.1f} GFLOP/s = "
              + (f"{100 * fraction:.1f}% of the measured {peak['measured_fma_peak_gflops']:.0f} GFLOP/s FMA peak, "
                 if fraction else "(no FMA peak: gcc missing), ")
              + f"{100 * entry['fp32_fraction_of_gemm']:.1f}% of numpy's {peak['measured_gemm_gflops']:.0f} GFLOP/s GEMM; "
              f"targets met: {entry['targets_met']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
