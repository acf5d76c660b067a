"""Edge benchmark for `.tflite` models with LiteRT alone (no TensorFlow, no Keras).

    python -m export.bench unet.tflite unet_int8.tflite --threads 1 2 --gpu \\
        --json bench.json --csv bench.csv --chart bench.png --profile
    kseg bench ...                                   (the same flags)

Every (model, backend, threads) configuration runs in its own spawned child process, so a
crash in a native runtime loses one row, not the run, and each row gets its own peak RSS.
A row reports init time (load + allocate), the first inference, invoke-only latency
(mean/std/min/p50/p90/p99, FPS) on the image's prepared tensor, end-to-end latency (decode
the image with Pillow, resize, convert/normalize/quantize, invoke, argmax or the in-graph
class map, colour overlay) and memory. `--profile` adds a measured per-op profile on the CPU
interpreter path: LiteRT's Python API has no per-op profiler, so each operator is cut out
of the flatbuffer into a one-op model and timed alone at the same thread count.

Exit codes: 0 all configurations ran; 1 some configuration failed (its row says why);
2 bad input (model file, image, --input tensor, flags), reported before anything runs.
"""

import argparse
import csv
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from export import runtime
from export.frames import InputError, image_input, load_image, normalization, prepare_image, segment_file

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
_PROFILE_SECONDS_PER_OP = 0.05
_CSV_FIELDS = (
    "model", "backend", "runtime", "threads", "cores", "fully_accelerated", "size_bytes", "init_ms",
    "first_inference_ms", "runs", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "fps",
    "e2e_runs", "e2e_mean_ms", "e2e_p50_ms", "e2e_fps", "rss_start_mb", "rss_before_load_mb", "peak_rss_mb",
    "model_rss_mb", "error",
)


class BenchInputError(InputError):
    """A bad model file, image, input tensor or flag: reported as one line, exit code 2."""


# ----------------------------------------------------------------------------- command line


def add_arguments(parser):
    """Adds the benchmark's flags to an argparse parser (`python -m export.bench`, `kseg bench`)."""
    parser.add_argument("models", nargs="+", metavar="MODEL.tflite", help="one or more .tflite files, compared side by side")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], metavar="N", help="CPU thread counts (default: 2)")
    parser.add_argument("--runtime", choices=("interpreter", "compiled"), default="interpreter",
                        help="CPU path: the Interpreter (XNNPACK) or CompiledModel (what LiteRT's own benchmark uses)")
    parser.add_argument("--gpu", action="store_true", help="also run LiteRT's GPU accelerator (SwiftShader when no GPU)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU configurations (with --gpu)")
    parser.add_argument("--cores", type=int, nargs="+", metavar="CPU",
                        help="pin each child to these CPU cores (os.sched_setaffinity), e.g. to emulate a small device")
    parser.add_argument("--warmup", type=int, default=5, metavar="N", help="untimed runs first (default: 5)")
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--runs", type=int, default=50, metavar="N", help="timed invoke-only runs (default: 50)")
    runs.add_argument("--budget", type=float, metavar="SECONDS", help="time invoke-only runs for this long instead")
    parser.add_argument("--e2e-runs", type=int, default=10, metavar="N", help="end-to-end runs (default: 10; 0 skips)")
    parser.add_argument("--image", metavar="FILE", help="image for end-to-end runs (default: the embedded ISBI sample)")
    parser.add_argument("--input", metavar="FILE.npy", help="the tensor for invoke-only runs instead of the prepared image")
    parser.add_argument("--profile", action="store_true", help="per-op profile by op isolation (CPU interpreter)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="per-configuration limit")
    parser.add_argument("--json", metavar="FILE", help="write all results as JSON")
    parser.add_argument("--csv", metavar="FILE", help="write one row per configuration as CSV")
    parser.add_argument("--chart", metavar="FILE.png", help="bar chart of mean invoke latency per configuration")
    parser.add_argument("--arm64", nargs="+", metavar="CPU",
                        help="instead of timing here: run the models on these emulated ARM64 cores (cortex-a76, "
                             "cortex-a53, ...) and report agreement with x86 and instructions per inference (export.arm64)")
    parser.add_argument("--arm64-runs", type=int, default=2, metavar="N", help="inferences counted per model and core (default: 2)")
    return parser


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args):
    """Runs the benchmark described by parsed `args`; returns the exit code (0, 1 or 2)."""
    if args.arm64:  # the emulated-ARM table replaces the timing run (one thread: counts stay deterministic)
        from export.arm64.__main__ import run as run_arm64

        return run_arm64(args.models, args.arm64, runs=args.arm64_runs, image=args.image,
                         timeout=args.timeout * len(args.models), json_path=args.json)
    try:
        plan = _plan(args)
    except (InputError, runtime.ModelFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    results, profiles = [], []
    for i, config in enumerate(plan["configs"]):
        print(f"[{i + 1}/{len(plan['configs'])}] {config['model']} {config['label']} ...", file=sys.stderr, flush=True)
        try:
            results.append(runtime.in_subprocess(measure, config, timeout=args.timeout))
        except Exception as e:  # a crash or error in the child: this row fails, the run goes on
            results.append({**_row_keys(config), "error": f"{type(e).__name__}: {e}"})
            print(f"  failed: {str(e).splitlines()[0]}", file=sys.stderr)
    for config in plan["profiles"]:
        print(f"profile {config['model']} cpu x{config['threads']} ...", file=sys.stderr, flush=True)
        try:
            profiles.append(runtime.in_subprocess(profile_ops, config, timeout=args.timeout))
        except Exception as e:
            profiles.append({**_row_keys(config), "error": f"{type(e).__name__}: {e}"})
            print(f"  failed: {str(e).splitlines()[0]}", file=sys.stderr)
    report = {"tool": "export.bench", "machine": describe_machine(), "settings": plan["settings"], "models": plan["models"],
              "results": results, "profiles": profiles}
    print(format_report(report))
    try:
        _write_outputs(args, report)
    except (OSError, ValueError) as e:
        print(f"error: cannot write the results: {e}", file=sys.stderr)
        return EXIT_FAILED
    failed = any(r.get("error") for r in results + profiles)
    return EXIT_FAILED if failed else EXIT_OK


# ----------------------------------------------------------------------------- planning (parent)


def default_image():
    """The embedded ISBI 2012 sample image, found by path (importing kseg.data would load TensorFlow)."""
    import kseg

    return Path(kseg.__file__).resolve().parent / "data" / "samples" / "isbi2012" / "image" / "0.png"


def _plan(args):
    """Validates every input in the parent and lists the child configurations."""
    for flag, value, low in (("--runs", args.runs, 1), ("--warmup", args.warmup, 0), ("--e2e-runs", args.e2e_runs, 0)):
        if value is not None and value < low:
            raise BenchInputError(f"{flag} {value}: expected an integer >= {low}")
    if args.budget is not None and not args.budget > 0:
        raise BenchInputError(f"--budget {args.budget}: expected seconds > 0")
    if any(t < 1 for t in args.threads):
        raise BenchInputError(f"--threads {args.threads}: expected thread counts >= 1")
    if args.no_cpu and not args.gpu:
        raise BenchInputError("--no-cpu leaves nothing to run; add --gpu")
    if args.cores:
        available = sorted(os.sched_getaffinity(0))
        missing = sorted(set(args.cores) - set(available))
        if missing:
            raise BenchInputError(f"--cores {args.cores}: cores {missing} are not available; this process may use {available}")
    for flag in ("json", "csv", "chart"):
        out = getattr(args, flag)
        if out and Path(out).is_dir():
            raise BenchInputError(f"--{flag} {out}: is a directory; expected a file name")
    if args.gpu and not runtime.enable_gpu_emulation():
        print("warning: no Vulkan driver is configured; the GPU accelerator will probably fail", file=sys.stderr)

    models, names = [], _short_names(args.models)
    for path, name in zip(args.models, names):
        content = runtime.read_model(path)
        model = {"name": name, "path": str(path), **runtime.describe(content, name=str(path))}
        detail, _ = image_input(model)
        try:
            model["normalization"] = normalization(model["metadata"], detail["shape"][3] if detail else None)
        except InputError as e:
            raise BenchInputError(f"{path}: {e}") from None
        models.append(model)
    image_path = Path(args.image) if args.image else default_image()
    image = load_image(image_path) if (args.image or args.e2e_runs or not args.input) else None
    tensor = _load_input(args.input) if args.input else None

    configs, profiles = [], []
    runs = None if args.budget else args.runs
    for model in models:
        arrays, e2e_reason = _model_inputs(model, image, tensor, args.input)
        common = {"model": model["name"], "path": model["path"], "size_bytes": model["size_bytes"], "cores": args.cores,
                  "warmup": args.warmup, "runs": runs, "budget": args.budget, "arrays": arrays,
                  "e2e_runs": args.e2e_runs if e2e_reason is None else 0,
                  "e2e_skipped": e2e_reason or (None if args.e2e_runs else "--e2e-runs 0"),
                  "image": str(image_path), "activation": (model["metadata"] or {}).get("activation"),
                  "normalization": model["normalization"]}
        if not args.no_cpu:
            for threads in args.threads:
                label = f"cpu x{threads}" + (" compiled" if args.runtime == "compiled" else "")
                configs.append({**common, "backend": "cpu", "runtime": args.runtime, "threads": threads, "label": label})
                if args.profile:
                    profiles.append({**common, "backend": "cpu", "runtime": "interpreter", "threads": threads,
                                     "label": f"cpu x{threads}"})
        if args.gpu:
            configs.append({**common, "backend": "gpu", "runtime": "compiled", "threads": args.threads[0], "label": "gpu"})
    settings = {"warmup": args.warmup, "runs": runs, "budget_s": args.budget, "e2e_runs": args.e2e_runs,
                "image": str(image_path), "input": args.input, "cores": args.cores, "threads": args.threads,
                "runtime": args.runtime, "gpu": args.gpu, "profile": args.profile}
    return {"models": models, "configs": configs, "profiles": profiles, "settings": settings}


def _short_names(paths):
    names = [Path(p).name for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]


def _load_input(path):
    path = Path(path)
    if not path.is_file():
        raise BenchInputError(f"{path}: no such .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BenchInputError(f"{path}: not a readable .npy array ({e})") from e


def _model_inputs(model, image, tensor, tensor_path):
    """Invoke-only input arrays for one model and why end-to-end runs are skipped (or None)."""
    detail, reason = image_input(model)
    if tensor is not None:
        if len(model["inputs"]) != 1:
            raise BenchInputError(f"{tensor_path}: one tensor given, but {model['path']} has {len(model['inputs'])} inputs")
        want = model["inputs"][0]
        if tuple(tensor.shape) != tuple(want["shape"]) or tensor.dtype != np.dtype(want["dtype"]):
            raise BenchInputError(
                f"{tensor_path}: shape {list(tensor.shape)} dtype {tensor.dtype} does not fit {model['path']}'s input 0 "
                f"({want['name']}): expected shape {list(want['shape'])} dtype {want['dtype']}"
            )
        arrays = [tensor]
    elif detail is not None:
        arrays = [prepare_image(image, detail, model["normalization"])]
    else:
        rng = np.random.default_rng(0)
        arrays = [rng.uniform(0, 1, d["shape"]).astype(d["dtype"]) if np.dtype(d["dtype"]).kind == "f"
                  else np.zeros(d["shape"], d["dtype"]) for d in model["inputs"]]
    return arrays, reason


# ----------------------------------------------------------------------------- children


def _pin(cores):
    if cores:
        os.sched_setaffinity(0, set(cores))


def _rss_mb():
    """Current resident set size (MB) from /proc, or the peak where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _peak_rss_mb()


def _peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _time_loop(fn, runs=None, budget=None, min_runs=1):
    """Seconds per call of `fn`: `runs` calls, or calls until `budget` seconds have passed."""
    times, start = [], time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if runs is not None and len(times) >= runs:
            return times
        if runs is None and time.perf_counter() - start >= (budget or 0.0) and len(times) >= min_runs:
            return times


def summarize(seconds):
    """Latency statistics in ms (std is the sample standard deviation) and FPS from the mean."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    mean = float(ms.mean())
    return {"runs": int(ms.size), "mean_ms": mean, "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
            "min_ms": float(ms.min()), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "fps": 1000.0 / mean if mean > 0 else 0.0}


def _row_keys(config):
    return {k: config.get(k) for k in ("model", "path", "backend", "runtime", "threads", "cores", "label", "size_bytes")}


def measure(config):
    """One configuration, in a child process: init, first run, invoke-only and end-to-end timing, memory."""
    _pin(config["cores"])
    if config["backend"] == "gpu":
        runtime.enable_gpu_emulation()
    rss_start = _rss_mb()
    runtime.import_backend(config["runtime"])
    rss_before = _rss_mb()  # LiteRT's libraries are loaded: what follows is the model's
    runner = runtime.Runner(config["path"], accelerator=config["backend"], num_threads=config["threads"],
                            runtime=config["runtime"])
    runner.set_inputs(*config["arrays"])
    # The GPU accelerator's run returns before the GPU finishes; reading the outputs waits.
    sync = config["backend"] == "gpu"
    step = (lambda: (runner.invoke(), runner.get_outputs())) if sync else runner.invoke
    start = time.perf_counter()
    step()
    first_ms = (time.perf_counter() - start) * 1000.0
    for _ in range(config["warmup"]):
        step()
    invoke = summarize(_time_loop(step, config["runs"], config["budget"]))
    result = {**_row_keys(config), "fully_accelerated": runner.fully_accelerated, "init_ms": runner.init_ms,
              "environment_ms": runner.environment_ms,
              "first_inference_ms": first_ms, "invoke": invoke, "invoke_includes_output_read": sync, "end_to_end": None,
              "end_to_end_skipped": config["e2e_skipped"], "error": None}
    if config["e2e_runs"]:
        detail = runner.inputs[0]
        frame = lambda: segment_file(runner, config["image"], detail, config["normalization"], config["activation"])
        frame()  # the first decode warms Pillow's codecs
        stages, times = {}, []
        for _ in range(config["e2e_runs"]):
            start = time.perf_counter()
            _, parts = frame()
            times.append(time.perf_counter() - start)
            for k, v in parts.items():
                stages[k] = stages.get(k, 0.0) + v
        result["end_to_end"] = {**summarize(times), "stages_ms": {k: v * 1000.0 / len(times) for k, v in stages.items()}}
    result["rss_start_mb"] = rss_start
    result["rss_before_load_mb"] = rss_before
    result["peak_rss_mb"] = _peak_rss_mb()
    result["model_rss_mb"] = result["peak_rss_mb"] - rss_before
    runner.close()
    return result


def profile_ops(config):
    """Per-op profile by op isolation, in a child process (CPU interpreter, XNNPACK, same threads).

    Every operator of the main subgraph becomes a one-op model fed with the tensors it sees
    in a real run of the whole model; its median invoke time, less the invoke overhead of
    an empty model, is its cost. The sum over ops differs from the whole model's latency:
    XNNPACK fuses and schedules ops together, and caches stay warm across ops.
    """
    from ai_edge_litert.interpreter import Interpreter

    _pin(config["cores"])
    threads = config["threads"]
    content = runtime.read_model(config["path"])
    model = runtime.parse_model(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": it is
        reference = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    reference.allocate_tensors()
    whole = Interpreter(model_content=content, num_threads=threads)
    whole.allocate_tensors()
    for interpreter in (reference, whole):
        for d, a in zip(interpreter.get_input_details(), config["arrays"]):
            interpreter.set_tensor(d["index"], a)
    reference.invoke()
    for _ in range(3):
        whole.invoke()
    whole_ms = float(np.median(_time_loop(whole.invoke, budget=10 * _PROFILE_SECONDS_PER_OP, min_runs=5))) * 1000.0
    empty = Interpreter(model_content=runtime.empty_model({"shape": (1,), "dtype": "float32"}), num_threads=threads)
    empty.allocate_tensors()
    overhead_ms = float(np.median(_time_loop(empty.invoke, budget=_PROFILE_SECONDS_PER_OP, min_runs=5))) * 1000.0
    ops, skipped = [], []
    for index, op in enumerate(model.subgraphs[0].operators or []):
        name = runtime.op_name(model, op)
        try:
            single, inputs = runtime.single_op_model(model, content, index)
            interpreter = Interpreter(model_content=single, num_threads=threads)
            interpreter.allocate_tensors()
            for d, t in zip(interpreter.get_input_details(), inputs):
                interpreter.set_tensor(d["index"], reference.get_tensor(t))
            for _ in range(3):
                interpreter.invoke()
            times = _time_loop(interpreter.invoke, budget=_PROFILE_SECONDS_PER_OP, min_runs=5)
        except Exception as e:  # e.g. control flow or variables: listed, not guessed
            skipped.append({"index": index, "op": name, "reason": f"{type(e).__name__}: {e}"})
            continue
        raw = float(np.median(times)) * 1000.0
        ops.append({"index": index, "op": name, "ms": max(raw - overhead_ms, 0.0), "raw_ms": raw, "runs": len(times)})
        del interpreter
    total = sum(o["ms"] for o in ops)
    by_type = {}
    for o in ops:
        entry = by_type.setdefault(o["op"], {"ms": 0.0, "count": 0})
        entry["ms"] += o["ms"]
        entry["count"] += 1
    for entry in by_type.values():
        entry["share"] = entry["ms"] / total if total else 0.0
    by_type = dict(sorted(by_type.items(), key=lambda kv: -kv[1]["ms"]))
    return {**_row_keys(config), "sum_ms": total, "whole_model_ms": whole_ms, "invoke_overhead_ms": overhead_ms,
            "sum_over_whole": total / whole_ms if whole_ms else None, "by_type": by_type, "ops": ops,
            "skipped": skipped, "error": None,
            "note": "each op timed alone as a one-op model (median, less the empty-model invoke overhead); "
                    "the whole model fuses and pipelines ops, so the sum and the whole-model latency differ"}


# ----------------------------------------------------------------------------- reporting


def _fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(rows, columns):
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def format_report(report):
    """The human-readable summary printed on stdout."""
    out = []
    for m in report["models"]:
        (inp,) = m["inputs"][:1] or [None]
        spec = f"input {list(inp['shape'])} {inp['dtype']}" if inp else "no inputs"
        out.append(f"{m['name']}: {m['size_bytes'] / 1024:.1f} KiB, {m['num_ops']} ops, "
                   f"{m['flops']['total'] / 1e9:.3f} GFLOP (conv/matmul), {spec}")
    columns = ["model", "config", "full", "init ms", "first ms", "mean", "std", "p50", "p90", "p99", "FPS",
               "e2e mean", "RSS pre-model MB", "peak RSS MB"]
    rows = []
    for r in report["results"]:
        if r.get("error"):
            rows.append([r["model"], r["label"]] + ["-"] * (len(columns) - 3) + ["FAILED: " + r["error"].splitlines()[0][:80]])
            continue
        i, e = r["invoke"], r["end_to_end"] or {}
        rows.append([r["model"], r["label"], _fmt(r["fully_accelerated"]), _fmt(r["init_ms"], 1), _fmt(r["first_inference_ms"]),
                     _fmt(i["mean_ms"], 3), _fmt(i["std_ms"], 3), _fmt(i["p50_ms"], 3), _fmt(i["p90_ms"], 3),
                     _fmt(i["p99_ms"], 3), _fmt(i["fps"], 1), _fmt(e.get("mean_ms"), 3), _fmt(r["rss_before_load_mb"], 1),
                     _fmt(r["peak_rss_mb"], 1)])
    out += ["", "latency in ms: invoke only (gpu: with the output read that waits for it) and end to end "
            "(decode + prepare + invoke + class map + overlay)",
            _table(rows, columns)]
    for p in report["profiles"]:
        out.append("")
        if p.get("error"):
            out.append(f"profile {p['model']} {p['label']}: FAILED: {p['error'].splitlines()[0]}")
            continue
        out.append(f"per-op profile {p['model']} {p['label']} (interpreter, ops timed alone):")
        rows = [[op, str(v["count"]), _fmt(v["ms"], 3), f"{100 * v['share']:.1f}%"] for op, v in p["by_type"].items()]
        out.append(_table(rows, ["op", "count", "ms", "share"]))
        out.append(f"sum of ops {p['sum_ms']:.3f} ms vs whole model {p['whole_model_ms']:.3f} ms "
                   f"(ratio {p['sum_over_whole']:.2f}; invoke overhead {1000 * p['invoke_overhead_ms']:.1f} us)")
        skipped = {}
        for s in p["skipped"]:
            skipped.setdefault((s["op"], s["reason"]), []).append(s["index"])
        for (op, reason), indices in skipped.items():
            out.append(f"  not profiled: {len(indices)} x {op} (ops {_ranges(indices)}): {reason}")
    return "\n".join(out)


def _ranges(indices):
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts, start = [], None
    for i, k in enumerate(indices):
        if start is None:
            start = k
        if i + 1 == len(indices) or indices[i + 1] != k + 1:
            parts.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ", ".join(parts)


def csv_rows(report):
    """One flat dict per configuration (the CSV's rows)."""
    rows = []
    for r in report["results"]:
        i, e = r.get("invoke") or {}, r.get("end_to_end") or {}
        row = {k: r.get(k) for k in _CSV_FIELDS}
        row.update({k: i.get(k) for k in ("runs", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "fps")})
        row.update({"e2e_runs": e.get("runs"), "e2e_mean_ms": e.get("mean_ms"), "e2e_p50_ms": e.get("p50_ms"),
                    "e2e_fps": e.get("fps"), "cores": " ".join(map(str, r.get("cores") or [])) or None})
        rows.append(row)
    return rows


def _write_outputs(args, report):
    from kseg.utils import atomic_write, write_json

    if args.json:
        write_json(args.json, _jsonable(report))
    if args.csv:
        with atomic_write(args.csv, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
            writer.writeheader()
            writer.writerows(csv_rows(report))
    if args.chart:
        from kseg.viz import save_bar_chart

        groups = {}
        for r in report["results"]:
            groups.setdefault(r["model"], {})[r["label"]] = (r.get("invoke") or {}).get("mean_ms", float("nan"))
        save_bar_chart(args.chart, groups, title="Mean invoke latency per configuration", ylabel="ms (lower is better)",
                       size=(max(640, 160 * len(groups) * max(len(g) for g in groups.values())), 480))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def describe_machine():
    """Python, platform, CPUs and the LiteRT version, for a results file."""
    try:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    except Exception:
        litert = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "ai_edge_litert": litert, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


if __name__ == "__main__":
    sys.exit(main())
