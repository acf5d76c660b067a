"""Edge benchmark for `.tflite` models with LiteRT alone (no TensorFlow, no Keras).

    python -m export.bench unet.tflite unet_int8.tflite --threads 1 2 --gpu \\
        --json bench.json --csv bench.csv --chart bench.png --profile
    kseg bench RUN/export/mask_rcnn_fp32.tflite RUN/export/mask_rcnn_fp32.gpu --gpu
    kseg bench ...                                   (the same flags)

A model is a `.tflite` file or a detector's GPU package, the `NAME_VARIANT.gpu/` folder `kseg
export` writes beside it (export.runtime.partition): its parts run in turn as one model, the
GPU parts on the GPU accelerator in a --gpu row and on the CPU in a CPU row.

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

This module plans the configurations and runs each in a child; export.measure holds what the
children do, export.bench_report the printed table and the output files.
"""

import os
import sys
from pathlib import Path

import numpy as np

from export import runtime
from export.bench_report import format_report, write_outputs
from export.edge_cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, add_runtime_flag, bad_input, check_counts, check_output_files
from export.edge_cli import main as tool_main
from export.frames import InputError, default_image, image_input, load_image, normalization, prepare_image
from export.measure import describe_machine, measure, profile_ops, row_keys

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "add_arguments", "main", "run"]


# ----------------------------------------------------------------------------- command line


def add_arguments(parser):
    """Adds the benchmark's flags to an argparse parser (`python -m export.bench`, `kseg bench`)."""
    parser.add_argument("models", nargs="+", metavar="MODEL.tflite",
                        help="one or more .tflite files or GPU package folders (NAME.gpu), compared side by side")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], metavar="N", help="CPU thread counts (default: 2)")
    add_runtime_flag(parser)
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
    """`python -m export.bench`: runs the benchmark on `argv` (default: sys.argv[1:]); returns the exit code."""
    return tool_main("export.bench", __doc__, add_arguments, run, argv)


def run(args):
    """Runs the benchmark described by parsed `args`; returns the exit code (0, 1 or 2)."""
    if args.arm64:  # the emulated-ARM table replaces the timing run (one thread: counts stay deterministic)
        from export.arm64.__main__ import run as run_arm64

        return run_arm64(args.models, args.arm64, runs=args.arm64_runs, image=args.image,
                         timeout=args.timeout * len(args.models), json_path=args.json)
    try:
        plan = _plan(args)
    except (InputError, runtime.ModelFileError) as e:
        return bad_input(e)
    count = len(plan["configs"])
    results = _in_children(measure, plan["configs"], args.timeout,
                           lambda i, c: f"[{i + 1}/{count}] {c['model']} {c['label']}")
    profiles = _in_children(profile_ops, plan["profiles"], args.timeout,
                            lambda i, c: f"profile {c['model']} cpu x{c['threads']}")
    report = {"tool": "export.bench", "machine": describe_machine(), "settings": plan["settings"], "models": plan["models"],
              "results": results, "profiles": profiles}
    print(format_report(report))
    try:
        write_outputs(report, json_path=args.json, csv_path=args.csv, chart_path=args.chart)
    except (OSError, ValueError) as e:
        print(f"error: cannot write the results: {e}", file=sys.stderr)
        return EXIT_FAILED
    failed = any(r.get("error") for r in results + profiles)
    return EXIT_FAILED if failed else EXIT_OK


def _in_children(fn, configs, timeout, title):
    """`fn(config)` for each configuration, each in its own child process (`runtime.in_subprocess`).

    Args:
        fn: export.measure.measure or profile_ops.
        configs: the configurations `_plan` listed.
        timeout: seconds per configuration.
        title: (index, config) -> the progress line printed on stderr first.

    Returns:
        One row per configuration: fn's result, or the row keys and an "error" when the child
        raised or died (the run goes on).
    """
    rows = []
    for i, config in enumerate(configs):
        print(f"{title(i, config)} ...", file=sys.stderr, flush=True)
        try:
            rows.append(runtime.in_subprocess(fn, config, timeout=timeout))
        except Exception as e:  # a crash or error in the child: this row fails, the run goes on
            rows.append({**row_keys(config), "error": f"{type(e).__name__}: {e}"})
            print(f"  failed: {str(e).splitlines()[0]}", file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------- planning (parent)


def _plan(args):
    """Validates every input in the parent and lists the child configurations."""
    check_counts((("--runs", args.runs, 1), ("--warmup", args.warmup, 0), ("--e2e-runs", args.e2e_runs, 0)))
    if args.budget is not None and not args.budget > 0:
        raise InputError(f"--budget {args.budget}: expected seconds > 0")
    if any(t < 1 for t in args.threads):
        raise InputError(f"--threads {args.threads}: expected thread counts >= 1")
    if args.no_cpu and not args.gpu:
        raise InputError("--no-cpu leaves nothing to run; add --gpu")
    if args.cores:
        available = sorted(os.sched_getaffinity(0))
        missing = sorted(set(args.cores) - set(available))
        if missing:
            raise InputError(f"--cores {args.cores}: cores {missing} are not available; this process may use {available}")
    check_output_files((("--json", args.json), ("--csv", args.csv), ("--chart", args.chart)))
    if args.gpu and not runtime.enable_gpu_emulation():
        print("warning: no Vulkan driver is configured; the GPU accelerator will probably fail", file=sys.stderr)

    models, names = [], _short_names(args.models)
    for path, name in zip(args.models, names):
        model = {"name": name, "path": str(path), **runtime.describe_path(path)}
        if args.profile and model["package"]:
            raise InputError(f"{path}: a GPU package; --profile times the ops of one .tflite file (give the file "
                             "the package was cut from)")
        detail, _ = image_input(model)
        try:
            model["normalization"] = normalization(model["metadata"], detail["shape"][3] if detail else None)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
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
        raise InputError(f"{path}: no such .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy array ({e})") from e


def _model_inputs(model, image, tensor, tensor_path):
    """Invoke-only input arrays for one model and why end-to-end runs are skipped (or None)."""
    detail, reason = image_input(model)
    if tensor is not None:
        if len(model["inputs"]) != 1:
            raise InputError(f"{tensor_path}: one tensor given, but {model['path']} has {len(model['inputs'])} inputs")
        want = model["inputs"][0]
        if tuple(tensor.shape) != tuple(want["shape"]) or tensor.dtype != np.dtype(want["dtype"]):
            raise InputError(
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


if __name__ == "__main__":
    sys.exit(main())
