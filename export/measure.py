"""Measuring a `.tflite` model in the process that runs it: latency, memory and a per-op profile.

`measure` and `profile_ops` take one configuration (a dict export.bench plans) and are meant
for `runtime.in_subprocess`: each runs in its own child, so a crash in a native runtime loses
one row and each row gets its own peak RSS. `summarize` and `describe_machine` also serve
export.video's timings. No TensorFlow, no Keras.
"""

import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from export import runtime
from export.frames import segment_file

_PROFILE_SECONDS_PER_OP = 0.05


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
    """Latency statistics in ms (std is the sample standard deviation) and FPS from the mean.

    Args:
        seconds: the duration of each run, in seconds (at least one).

    Returns:
        {"runs", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "fps"}.
    """
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    mean = float(ms.mean())
    return {"runs": int(ms.size), "mean_ms": mean, "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
            "min_ms": float(ms.min()), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "fps": 1000.0 / mean if mean > 0 else 0.0}


def row_keys(config):
    """The keys of a configuration that name its result row (model, backend, threads, ...)."""
    return {k: config.get(k) for k in ("model", "path", "backend", "runtime", "threads", "cores", "label", "size_bytes")}


def measure(config):
    """One configuration, in a child process: init, first run, invoke-only and end-to-end timing, memory.

    Args:
        config: one of export.bench's configurations: path, backend ("cpu" or "gpu"), runtime,
            threads, cores, warmup, runs or budget, arrays (the invoke-only inputs), e2e_runs,
            e2e_skipped, image, activation, normalization, and the row keys (`row_keys`).

    Returns:
        The result row: the row keys, fully_accelerated, init_ms, environment_ms,
        first_inference_ms, invoke (`summarize`), end_to_end (`summarize` plus stages_ms, or
        None), RSS figures in MB and error None.
    """
    _pin(config["cores"])
    if config["backend"] == "gpu":
        runtime.enable_gpu_emulation()
    rss_start = _rss_mb()
    runtime.import_backend(config["runtime"])
    rss_before = _rss_mb()  # LiteRT's libraries are loaded: what follows is the model's
    # A GPU row's CPU work is the accelerator's fallback (a file) or a package's CPU parts, which
    # run on the interpreter: CompiledModel's CPU path cannot invoke Panoptic FPN's IF ops.
    cpu_runtime = config["runtime"] if config["backend"] == "cpu" else "interpreter"
    runner = runtime.open_model(config["path"], accelerator=config["backend"], num_threads=config["threads"],
                                runtime=cpu_runtime)
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
    result = {**row_keys(config), "fully_accelerated": runner.fully_accelerated, "init_ms": runner.init_ms,
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

    Args:
        config: a CPU configuration of export.bench (path, threads, cores, arrays, row keys).

    Returns:
        The profile row: the row keys, sum_ms, whole_model_ms, invoke_overhead_ms,
        sum_over_whole, by_type {op: {"ms", "count", "share"}}, ops (one entry per timed
        operator), skipped (operators that cannot run alone, with the reason) and a note.
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
    return {**row_keys(config), "sum_ms": total, "whole_model_ms": whole_ms, "invoke_overhead_ms": overhead_ms,
            "sum_over_whole": total / whole_ms if whole_ms else None, "by_type": by_type, "ops": ops,
            "skipped": skipped, "error": None,
            "note": "each op timed alone as a one-op model (median, less the empty-model invoke overhead); "
                    "the whole model fuses and pipelines ops, so the sum and the whole-model latency differ"}


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
