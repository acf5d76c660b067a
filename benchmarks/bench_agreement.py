"""Does `python -m export.bench` agree with LiteRT's own benchmark on the same model and settings?

LiteRT ships `ai_edge_litert.tools.benchmark_litert_model`, which times `CompiledModel.run_by_name`
on the CPU accelerator. Our tool runs the same path with `--runtime compiled`. Both run as
separate processes at the same thread count, warmup and run count, interleaved
(LiteRT, ours, LiteRT, ours, ...) for several rounds so that load on the machine hits both
alike; the ratios ours / LiteRT of the means and medians should be near 1. A third arm runs
our tool on the Interpreter path (XNNPACK) to compare the two CPU runtimes.
Writes benchmarks/results/bench_agreement.json and prints a table.

    python benchmarks/bench_agreement.py [MODEL.tflite ...] [--threads 2] [--rounds 3] [--runs 30]

Without models, a U-Net (256x256x3, 8 filters, depth 4) is converted here (TensorFlow needed).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, print_table, write_results


def default_model(folder):
    """A 256x256 U-Net converted with export.tflite (random weights: latency does not care)."""
    import keras

    from export.tflite import convert
    from kseg.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("unet", num_classes=2, input_shape=(256, 256, 3), filters=8, depth=4)
    path = Path(folder) / "unet256_f8_d4.tflite"
    path.write_bytes(convert(model))
    return path


def litert_tool(model, threads, runs, warmup, folder):
    out = Path(folder) / "litert.json"
    command = [sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model", "--model", str(model),
               "--num_threads", str(threads), "--num_runs", str(runs), "--warmup_runs", str(warmup),
               "--result_json", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    latency = json.loads(out.read_text())["latency"]
    return {"mean_ms": latency["avg_ms"], "median_ms": latency["median_ms"], "init_ms": latency["init_ms"]}


def our_tool(model, threads, runs, warmup, folder, runtime="compiled"):
    out = Path(folder) / "ours.json"
    command = [sys.executable, "-m", "export.bench", str(model), "--runtime", runtime, "--threads", str(threads),
               "--runs", str(runs), "--warmup", str(warmup), "--e2e-runs", "0", "--json", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    (row,) = json.loads(out.read_text())["results"]
    return {"mean_ms": row["invoke"]["mean_ms"], "median_ms": row["invoke"]["p50_ms"], "init_ms": row["init_ms"]}


def compare(args, work):
    """Interleaved rounds of each tool on each model: (summary rows, per-round rows)."""
    models = [Path(m) for m in args.models] or [default_model(work)]
    rounds, summary = [], []
    for model in models:
        tools = {"litert": litert_tool, "ours": our_tool,
                 "ours_interpreter": lambda *a: our_tool(*a, runtime="interpreter")}
        per_tool = {t: [] for t in tools}
        for r in range(args.rounds):
            for tool, fn in tools.items():
                result = fn(model, args.threads, args.runs, args.warmup, work)
                per_tool[tool].append(result)
                rounds.append({"model": model.name, "round": r, "tool": tool, **result})
        mean = {t: statistics.mean(x["mean_ms"] for x in v) for t, v in per_tool.items()}
        median = {t: statistics.median(x["median_ms"] for x in v) for t, v in per_tool.items()}
        summary.append({
            "model": model.name, "threads": args.threads,
            "litert_mean_ms": mean["litert"], "ours_mean_ms": mean["ours"], "mean_ratio": mean["ours"] / mean["litert"],
            "litert_median_ms": median["litert"], "ours_median_ms": median["ours"],
            "median_ratio": median["ours"] / median["litert"],
            "interpreter_mean_ms": mean["ours_interpreter"], "interpreter_median_ms": median["ours_interpreter"],
            "interpreter_over_compiled_median": median["ours_interpreter"] / median["ours"],
        })
    return summary, rounds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=".tflite files (default: a U-Net converted here)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kseg-agreement-") as work:
        summary, rounds = compare(args, work)
    print_table(rounds, ["model", "round", "tool", "mean_ms", "median_ms", "init_ms"])
    print()
    print_table(summary, ["model", "threads", "litert_mean_ms", "ours_mean_ms", "mean_ratio", "litert_median_ms",
                          "ours_median_ms", "median_ratio", "interpreter_median_ms", "interpreter_over_compiled_median"])
    path = write_results("bench_agreement", {
        "settings": {"threads": args.threads, "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
                     "runtime": "CompiledModel, CPU accelerator (both tools); ours_interpreter: the Interpreter path"},
        "notes": "init_ms differs by definition: LiteRT's tool times CompiledModel.from_file only; ours also "
                 "includes reading the signature's tensor details (the first get_output_tensor_details call does "
                 "~20 ms of lazy preparation) and creating the I/O buffers, i.e. everything before the first run.",
        "summary": summary, "rounds": rounds,
    })
    print(f"results: {path}")


if __name__ == "__main__":
    main()
