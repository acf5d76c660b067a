"""Soak: memory and latency of the live paths over thousands of frames.

Four paths run one after the other, each in its own process so that its memory is its own:
    runner-cpu   export.runtime.Runner on LiteRT's CPU path (Interpreter, XNNPACK)
    runner-gpu   the same on LiteRT's GPU accelerator (WebGPU on SwiftShader where no GPU exists)
    video        `python -m export.video` (kseg demo-video): an H.264 clip in, an H.264 clip out
    page         the browser demo (mobile_demo/) in headless Chromium on the fake camera

Each records every frame's latency and samples memory: the process's RSS (runner, video: the
Python process; ffmpeg's decoder and encoder apart), and for the page V8's JS heap after a forced
GC (CDP) and the proportional set size (PSS) of all Chromium processes.

The checks (`analyse`), the same in tests/export/test_soak.py:
    warm-up   the first WARMUP_FRACTION of the run's time is left out (the page: PAGE_WARMUP_S)
    windows   the rest is cut in windows of min(--window-s, a tenth of it) seconds;
              the first window is the reference
    memory    the median sample of the last window minus that of the first: <= the path's bound
              (BOUNDS_MB), and the least-squares slope after warm-up, in KB per 1000 frames
    latency   p99 of each window; the late p99 (median over the last third of the windows) must
              be <= P99_RATIO x the first window's. One noisy window on a shared machine does not
              fail it; a drift, which raises every late window, does. The number of windows over
              the ratio is reported too. Runner and video: the check is on each frame's CPU time
              (all threads of the process: XNNPACK's, SwiftShader's), the work a frame costs,
              which another job's load barely moves; the wall-clock windows are reported beside
              it. On a shared machine a wall-clock p99 of a few hundred frames counts how often
              the scheduler took the CPU away (tens of ms each time), not a drift. The page: the
              check is on wall-clock frame time (the page gives no CPU time).

    python3 benchmarks/soak.py [--runner-frames 10000] [--gpu-frames 10000] [--gpu-seconds 900]
                               [--video-frames 10000] [--page-seconds 600] [--page-warmup-s 150]
                               [--window-s 60] [--paths runner-cpu,runner-gpu,video,page]

Each path's result is saved as soon as it ends; paths that an earlier command saved in the same
results file are kept, so the paths can run in separate commands (or at once, in parallel).

The model is the ISBI U-Net of the export tests (tests.testing.trained_isbi_unet), exported at
256 x 256 RGB (fp32); the GPU soak runs it at 64 x 64, as SwiftShader (a CPU emulating a GPU)
takes over a second per 256 x 256 frame. Writes benchmarks/results/soak.json, soak.png, and prints a table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.process_memory import Sampler, children, chromium_memory, rss_mb  # noqa: E402

PATHS = ("runner-cpu", "runner-gpu", "video", "page")
MODEL_SIZE = 256
GPU_SIZE = 64  # the GPU soak's input side (see export_site)
GPU_MAX_S = 900.0  # the GPU soak's time budget: SwiftShader emulates the GPU on the CPU, slowly
VIDEO_SIZE = (360, 480)  # H, W: the fake camera's and the clip's frames, as in tests/mobile_demo/test_mobile_demo.py
WARMUP_FRACTION = 0.05
P99_RATIO = 1.5
# Growth allowed after warm-up, in MB, for each memory series. A leak of one model input
# (256 x 256 x 3 float32, 0.79 MB) every 100 frames adds 79 MB over 10,000 frames; one
# 360 x 480 RGB frame every 1000 frames adds 5 MB.
BOUNDS_MB = {"rss": 4.0, "js_heap": 2.0, "wasm_heap": 2.0, "chromium_pss": 32.0}
# The page's warm-up. Chromium's renderer grows by about one camera frame (0.7 MB at 480 x 360)
# each time a camera frame is drawn into a canvas, until a cap of about 0.5 GB (some 750 frames,
# 1.5 to 2 minutes here), and stays flat after: a 20-line page that only draws the camera into
# an OffscreenCanvas does the same, and one that does not draw it stays flat.
PAGE_WARMUP_S = 150.0


# ----------------------------------------------------------------------------- the checks


def _latency(t, ms, warm, edges):
    """p50 and p99 per window (between consecutive `edges`), and the first, late and ratio p99."""
    windows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        w = ms[(t >= lo) & (t < hi)]
        if w.size:
            windows.append({"t": float(lo - t[0]), "frames": int(w.size), "p50_ms": float(np.percentile(w, 50)),
                            "p99_ms": float(np.percentile(w, 99))})
    first = windows[0]["p99_ms"]
    late = float(np.median([w["p99_ms"] for w in windows[-max(1, len(windows) // 3):]]))
    return {"p50_ms": float(np.percentile(ms[t >= warm], 50)), "p99_ms": float(np.percentile(ms[t >= warm], 99)),
            "first_p99_ms": first, "late_p99_ms": late, "p99_ratio": late / first,
            "max_window_p99_ratio": max(w["p99_ms"] for w in windows) / first,
            "windows_over_ratio": sum(w["p99_ms"] > P99_RATIO * first for w in windows), "windows": windows}


def analyse(times, latency_ms, memory, window_s=60.0, bounds_mb=BOUNDS_MB, warmup_s=None, cpu_ms=None):
    """The soak checks of the module docstring on one run.

    Args:
        times: float [N], each frame's end in seconds (any origin, increasing).
        latency_ms: float [N], each frame's wall-clock latency.
        memory: {series name: (times [M], MB [M])}, same clock as `times`; each name a key of `bounds_mb`.
        window_s: the longest window.
        bounds_mb: the allowed growth per series.
        warmup_s: the warm-up in seconds (default: WARMUP_FRACTION of the run).
        cpu_ms: float [N] or None, each frame's CPU time (all threads of the process). When
            given, the latency check is on it: see the module docstring.

    Returns:
        dict with frames, seconds, warmup_s, window_s; the checked series' p50_ms, p99_ms,
        first_p99_ms, late_p99_ms, p99_ratio, max_window_p99_ratio, windows_over_ratio and
        windows [{t, frames, p50_ms, p99_ms}]; latency_checked ("cpu" or "wall"); wall (and cpu):
        the same figures per series; latency_passed; memory {name: {baseline_mb, final_mb,
        growth_mb, bound_mb, slope_kb_per_1000_frames, samples, passed}}; passed.
    """
    t = np.asarray(times, np.float64)
    ms = np.asarray(latency_ms, np.float64)
    if t.size < 20 or t.shape != ms.shape:
        raise ValueError(f"a soak needs >= 20 frames with one latency each, got {t.size} times and {ms.size} latencies")
    t0, t1 = t[0], t[-1]
    warm = t0 + (WARMUP_FRACTION * (t1 - t0) if warmup_s is None else float(warmup_s))
    if warm >= t1:
        raise ValueError(f"the warm-up ({warm - t0:.0f} s) is as long as the run ({t1 - t0:.0f} s)")
    window = min(float(window_s), (t1 - warm) / 10)
    edges = warm + window * np.arange(int((t1 - warm) / window + 1e-9) + 1)
    if t1 - edges[-1] < 1e-6 * window:  # ten windows to the end: the last frame is in the last one
        edges[-1] = np.nextafter(t1, np.inf)
    series = {"wall": _latency(t, ms, warm, edges)}
    if cpu_ms is not None:
        series["cpu"] = _latency(t, np.asarray(cpu_ms, np.float64), warm, edges)
    checked = "cpu" if cpu_ms is not None else "wall"
    result = {"frames": int(t.size), "seconds": float(t1 - t0), "warmup_s": float(warm - t0), "window_s": window,
              **series[checked], "latency_checked": checked, **series, "memory": {}}
    result["latency_passed"] = bool(result["p99_ratio"] <= P99_RATIO)
    frames_at = lambda when: np.searchsorted(t, when)
    for name, (mt, mb) in memory.items():
        mt, mb = np.asarray(mt, np.float64), np.asarray(mb, np.float64)
        after = mt >= warm
        first_w = mb[after & (mt < warm + window)]
        last_w = mb[mt >= edges[-2]]
        if not first_w.size or not last_w.size:
            raise ValueError(f"memory series {name!r}: no sample in the first or the last window; sample more often")
        baseline, final = float(np.median(first_w)), float(np.median(last_w))
        fx = frames_at(mt[after]).astype(np.float64)
        slope = float(np.polyfit(fx, mb[after], 1)[0]) * 1000 * 1024 if np.ptp(fx) > 0 else 0.0
        result["memory"][name] = {
            "baseline_mb": baseline, "final_mb": final, "growth_mb": final - baseline, "bound_mb": bounds_mb[name],
            "slope_kb_per_1000_frames": slope, "samples": int(after.sum()),
            "passed": bool(final - baseline <= bounds_mb[name]),
        }
    result["passed"] = result["latency_passed"] and all(m["passed"] for m in result["memory"].values())
    return result


def thinned(xs, ys, points=300):
    """At most `points` [x, y] pairs, evenly spaced over the series (for the JSON)."""
    keep = np.unique(np.linspace(0, len(xs) - 1, min(points, len(xs))).round().astype(int))
    return [[round(float(xs[i]), 3), round(float(ys[i]), 3)] for i in keep]


# ----------------------------------------------------------------------------- the paths


def camera_frames(count=8, size=VIDEO_SIZE):
    """RGB frames [H, W, 3] of ISBI slices with a colour tint (the page tests' fake camera)."""
    from PIL import Image

    from kseg.data.samples import isbi_sample_dirs

    frames = []
    for path in sorted(isbi_sample_dirs()[0].iterdir())[:count]:
        grey = np.asarray(Image.open(path).convert("L").resize(size[::-1], Image.BILINEAR), np.float32)
        frames.append(np.clip(np.stack([grey, grey * 0.9 + 10, grey * 0.8 + 20], -1), 0, 255).astype(np.uint8))
    return frames


def runner_loop(model, accelerator, frames, threads=2, max_seconds=None):
    """Runs `model` on `frames` inputs in this process (meant for runtime.in_subprocess), or fewer
    when `max_seconds` (default: GPU_MAX_S on the GPU path, no limit on the CPU) runs out first.

    Returns:
        {"t": float64 [frames run] end of each frame (time.time), "latency_ms": float32 [frames run],
         "cpu_ms": float32 [frames] the process's CPU time in each frame (all threads),
         "rss": (the same times, MB after each frame), "fully_accelerated": bool}.
    """
    from export import runtime

    if accelerator == "gpu":
        runtime.enable_gpu_emulation()
        max_seconds = GPU_MAX_S if max_seconds is None else max_seconds
    deadline = time.time() + max_seconds if max_seconds is not None else float("inf")
    ends = np.zeros(frames, np.float64)  # allocated up front: the loop itself allocates nothing that stays
    latency, cpu, rss = (np.zeros(frames, np.float32) for _ in range(3))
    with runtime.Runner(model, accelerator=accelerator, num_threads=threads) as runner:
        detail = runner.inputs[0]
        rng = np.random.default_rng(0)
        inputs = [rng.uniform(0, 255, detail["shape"]).astype(detail["dtype"]) for _ in range(4)]
        for i in range(frames):
            start, start_cpu = time.perf_counter(), time.process_time()
            runner.run(inputs[i % len(inputs)])  # the GPU path's outputs are read: the frame is done
            latency[i] = (time.perf_counter() - start) * 1000.0
            cpu[i] = (time.process_time() - start_cpu) * 1000.0
            ends[i] = time.time()
            rss[i] = rss_mb()  # /proc/self/statm: microseconds
            if ends[i] > deadline:
                frames = i + 1
                break
        fully = runner.fully_accelerated
    ends, latency, cpu, rss = ends[:frames], latency[:frames], cpu[:frames], rss[:frames]
    return {"t": ends, "latency_ms": latency, "cpu_ms": cpu, "rss": (ends, rss), "fully_accelerated": fully}


def soak_runner(model, accelerator, frames, window_s, threads=2, max_seconds=None):
    """`runner_loop` in a fresh child process; returns (analysis, series for the chart)."""
    from export import runtime

    run = runtime.in_subprocess(runner_loop, str(model), accelerator, frames, threads, max_seconds, timeout=None)
    result = analyse(run["t"], run["latency_ms"], {"rss": run["rss"]}, window_s, cpu_ms=run["cpu_ms"])
    result["fully_accelerated"] = run["fully_accelerated"]
    return result, {"t": run["t"], "latency_ms": run["latency_ms"], "memory": {"rss": run["rss"]}}


def write_clip(path, frames, count, fps=30):
    """An H.264 clip of `count` frames cycling through `frames`, panned one pixel per frame."""
    from export.video import open_writer

    h, w = frames[0].shape[:2]
    with open_writer(path, w, h, fps) as writer:
        for i in range(count):
            writer.write(np.roll(frames[(i // 15) % len(frames)], i % w, axis=1))
    return path


def soak_video(model, frames, window_s, work, threads=2):
    """`python -m export.video` on a clip of `frames` frames, its RSS sampled every second."""
    clip = write_clip(Path(work) / "soak_in.mp4", camera_frames(), frames)
    timings = Path(work) / "soak_timings.csv"
    cmd = [sys.executable, "-m", "export.video", "--model", str(model), "--input", str(clip),
           "--output", str(Path(work) / "soak_out.mp4"), "--effect", "blur", "--threads", str(threads),
           "--timings", str(timings)]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    ffmpeg = []  # the decoder's and encoder's pids, once both run: scanning /proc each time costs

    def measure():
        python = rss_mb(process.pid)
        if python is None:
            return None
        if len(ffmpeg) < 2:
            ffmpeg[:] = [p for p, cmd in children(process.pid).items() if "ffmpeg" in cmd]
        return {"rss": python, "ffmpeg_rss": sum(rss_mb(p) or 0.0 for p in ffmpeg)}

    sampler = Sampler(measure, interval=0.1)  # a short run still gets samples in each of its ten windows
    sampler.start()
    out, err = process.communicate()
    samples = sampler.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({process.returncode}): {err[-2000:]}")
    table = np.loadtxt(timings, delimiter=",", skiprows=1, ndmin=2)  # frame, time_s, cpu_ms, the stages' ms
    ends, cpu_ms, total_ms = table[:, 1], table[:, 2], table[:, 3:].sum(1)
    memory = {"rss": ([s["t"] for s in samples], [s["rss"] for s in samples])}
    result = analyse(ends, total_ms, memory, window_s, cpu_ms=cpu_ms)
    result["ffmpeg_rss_mb"] = [min(s["ffmpeg_rss"] for s in samples), max(s["ffmpeg_rss"] for s in samples)]
    result["stages_p50_ms"] = dict(zip(("decode", "preprocess", "inference", "postprocess", "effect", "encode"),
                                       np.percentile(table[:, 3:], 50, axis=0).round(3).tolist()))
    return result, {"t": ends, "latency_ms": total_ms, "memory": memory}


def soak_page(site, seconds, window_s, interval=5.0, warmup_s=PAGE_WARMUP_S):
    """The demo page on the fake camera for `seconds`: timings and JS heap from the page (drive.mjs's
    soak step, every `interval` s), the Chromium processes' PSS from /proc every `interval` s.
    The first `warmup_s` seconds (None: WARMUP_FRACTION of the run) are the warm-up."""
    from export import page

    steps = [{"wait": "ready", "frames": 5}, {"soak": "soak", "seconds": seconds, "interval": interval}]
    sampler = Sampler(lambda: chromium_memory(os.getpid()), interval=interval)
    sampler.start()
    try:
        result = page.drive(site["url"] + "?model=unet_fp32&effect=blur", steps, site["work"], video=site["video"],
                               timeout_ms=max(90000, int(seconds * 1000)))
    finally:
        samples = sampler.stop()
    if result["pageErrors"]:
        raise RuntimeError(f"the page raised: {result['pageErrors'][:3]}")
    soak = result["soak"]
    timings = np.asarray(soak["timings"], np.float64).reshape(-1, 3)  # epoch ms, inference ms, frame ms
    at = [s["t"] / 1000 for s in soak["samples"]]
    memory = {"js_heap": (at, [s["heapUsed"] / 2**20 for s in soak["samples"]]),
              "wasm_heap": (at, [(s["wasmHeap"] or 0) / 2**20 for s in soak["samples"]]),
              "chromium_pss": ([s["t"] for s in samples], [s["chromium_pss"] for s in samples])}
    analysis = analyse(timings[:, 0] / 1000, timings[:, 2], memory, window_s, warmup_s=warmup_s)
    inference = analyse(timings[:, 0] / 1000, timings[:, 1], {}, window_s, warmup_s=warmup_s)
    analysis["inference_p99_ratio"] = inference["p99_ratio"]
    analysis["inference_p50_ms"] = inference["p50_ms"]
    analysis["dropped_timings"] = soak["dropped"]
    return analysis, {"t": timings[:, 0] / 1000, "latency_ms": timings[:, 2], "memory": memory}


def export_site(work, model=None, gpu_model=True):
    """The demo site with the ISBI U-Net (fp32, 256 x 256 RGB), the fake camera video and, with
    `gpu_model`, the same network at GPU_SIZE; returns their paths.

    `model`: the Keras U-Net (default: tests.testing.trained_isbi_unet's, trained here).
    """
    from export import webdemo
    from export import page
    from export.report import export_model
    from export.video import write_y4m
    from tests.testing import sample_examples, trained_isbi_unet

    work = Path(work)
    dist = page.build_site(work / "dist")
    model = model if model is not None else trained_isbi_unet()[0]
    folder = dist / "models" / "unet"
    report = export_model(model, folder, examples=sample_examples(size=MODEL_SIZE, channels=3, limit=4),
                          variants=("fp32",), image_size=(MODEL_SIZE, MODEL_SIZE), rgb_input=True,
                          labels=["membrane", "cell"], name="unet", gpu=False, verbose=False)
    if not report["passed"]:
        raise RuntimeError(f"the export failed its checks: {folder / 'export_report.md'}")
    webdemo.write_sidecar(folder, title="ISBI U-Net", background=0)
    webdemo.write_index(dist / "models")
    video = work / "camera.y4m"
    write_y4m(video, camera_frames(), fps=30)
    site = {"dist": dist, "model": folder / "unet_fp32.tflite", "video": video, "work": work}
    if not gpu_model:
        return site
    # SwiftShader takes over a second per 256 x 256 frame: the GPU soak runs the same network at GPU_SIZE.
    small = export_model(model, work / "gpu", examples=sample_examples(size=GPU_SIZE, channels=3, limit=4),
                         variants=("fp32",), image_size=(GPU_SIZE, GPU_SIZE), rgb_input=True,
                         labels=["membrane", "cell"], name=f"unet{GPU_SIZE}", gpu=False, verbose=False)
    if not small["passed"]:
        raise RuntimeError(f"the export failed its checks: {work / 'gpu' / 'export_report.md'}")
    return {**site, "gpu_model": work / "gpu" / f"unet{GPU_SIZE}_fp32.tflite"}


# ----------------------------------------------------------------------------- report


def chart(results, path):
    """One row per path: memory (MB) and windowed latency (p50, p99 ms) against minutes."""
    from kseg.viz.chart import line_chart
    from kseg.viz.overlay import save_png, side_by_side

    rows = []
    for name, r in results.items():
        memory = {k: ([p[0] / 60 for p in v if p[0] >= 0], [p[1] for p in v if p[0] >= 0])  # from the first frame
                  for k, v in r["memory_series"].items()}
        mem_panel = line_chart(memory, title=f"{name}: memory", xlabel="minutes", ylabel="MB", size=(560, 320))
        lat = {}
        for kind in ("wall", "cpu"):
            if kind in r:
                w = r[kind]["windows"]
                lat[f"{kind} p50"] = ([x["t"] / 60 for x in w], [x["p50_ms"] for x in w])
                lat[f"{kind} p99"] = ([x["t"] / 60 for x in w], [x["p99_ms"] for x in w])
        w = r["windows"]
        lat[f"{P99_RATIO}x first {r['latency_checked']} p99"] = ([w[0]["t"] / 60, w[-1]["t"] / 60],
                                                               [P99_RATIO * r["first_p99_ms"]] * 2)
        lat_panel = line_chart(lat, title=f"{name}: ms per frame, {r['window_s']:.0f} s windows",
                               xlabel="minutes", ylabel="ms (log)", size=(560, 320), logy=True)
        rows.append(side_by_side([mem_panel, lat_panel]))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    save_png(path, np.concatenate(rows, 0))
    return path


def table_rows(results):
    rows = []
    for name, r in results.items():
        for series, m in r["memory"].items():
            wall = r["wall"]
            rows.append({"path": name, "frames": r["frames"], "minutes": round(r["seconds"] / 60, 1),
                         "wall_p50_ms": round(wall["p50_ms"], 2), "wall_p99_ms": round(wall["p99_ms"], 2),
                         "wall_p99_ratio": round(wall["p99_ratio"], 2), "checked": r["latency_checked"],
                         "first_p99_ms": round(r["first_p99_ms"], 2), "late_p99_ms": round(r["late_p99_ms"], 2),
                         "p99_ratio": round(r["p99_ratio"], 2), "over": f"{r['windows_over_ratio']}/{len(r['windows'])}",
                         "memory": series, "baseline_mb": round(m["baseline_mb"], 1),
                         "growth_mb": round(m["growth_mb"], 2), "bound_mb": m["bound_mb"],
                         "kb_per_1k_frames": round(m["slope_kb_per_1000_frames"], 1),
                         "passed": r["latency_passed"] and m["passed"]})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--runner-frames", type=int, default=10000)
    parser.add_argument("--gpu-frames", type=int, default=10000)
    parser.add_argument("--gpu-seconds", type=float, default=GPU_MAX_S,
                        help=f"the GPU soak stops after this long if its frames are not done (default {GPU_MAX_S:.0f})")
    parser.add_argument("--video-frames", type=int, default=10000)
    parser.add_argument("--page-seconds", type=float, default=600.0)
    parser.add_argument("--page-warmup-s", type=float, default=PAGE_WARMUP_S,
                        help=f"the page's warm-up (default {PAGE_WARMUP_S:.0f} s: Chromium's frame cache fills)")
    parser.add_argument("--window-s", type=float, default=60.0, help="the longest latency window (default 60 s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", help="folder for the site, model and clips (default: a temporary one)")
    parser.add_argument("--name", default="soak", help="results name: benchmarks/results/NAME.json and .png")
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"--paths: unknown {unknown}; expected some of {', '.join(PATHS)}")

    from benchmarks.common import print_table
    from export import page

    work = Path(args.work or tempfile.mkdtemp(prefix="kseg-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    site = export_site(work)
    command = " ".join(["python3", "benchmarks/soak.py", *(argv if argv is not None else sys.argv[1:])])
    results, series = {}, {}
    requested = {"runner-cpu": args.runner_frames, "runner-gpu": args.gpu_frames, "video": args.video_frames}
    for name in paths:
        started = time.time()
        print(f"{name}: starting", flush=True)
        if name == "runner-cpu":
            results[name], series[name] = soak_runner(site["model"], "cpu", args.runner_frames, args.window_s, args.threads)
        elif name == "runner-gpu":
            results[name], series[name] = soak_runner(site["gpu_model"], "gpu", args.gpu_frames, args.window_s, args.threads,
                                                          args.gpu_seconds)
        elif name == "video":
            results[name], series[name] = soak_video(site["model"], args.video_frames, args.window_s, work, args.threads)
        else:
            missing = page.missing_tools()
            if missing:
                sys.exit(f"the page soak needs {missing}")
            with page.serve(site["dist"]) as url:
                results[name], series[name] = soak_page({**site, "url": url}, args.page_seconds, args.window_s,
                                                        warmup_s=args.page_warmup_s)
        t0 = series[name]["t"][0]
        results[name]["memory_series"] = {k: thinned(np.asarray(mt) - t0, mb) for k, (mt, mb) in series[name]["memory"].items()}
        results[name]["command"] = command
        if name in requested:
            results[name]["frames_requested"] = requested[name]
        print(f"{name}: {results[name]['frames']} frames in {time.time() - started:.0f} s", flush=True)
        print_table(table_rows({name: results[name]}), list(table_rows({name: results[name]})[0]))
        everything = save(args, results)  # after each path: a later one that fails loses nothing
    print_table(table_rows(everything), list(table_rows(everything)[0]))
    return 0 if all(r["passed"] for r in everything.values()) else 1


def save(args, results):
    """Writes benchmarks/results/NAME.json and .png with `results` and the paths a previous command
    wrote there (each path keeps the command that ran it); returns all of them, in PATHS order."""
    from benchmarks.common import RESULTS, write_results

    previous = RESULTS / f"{args.name}.json"
    kept = json.loads(previous.read_text())["results"] if previous.exists() else {}
    results = {p: results.get(p, kept.get(p)) for p in PATHS if p in results or p in kept}
    png = chart(results, RESULTS / f"{args.name}.png")
    write_results(args.name, {
        "model": f"ISBI U-Net (tests.testing.trained_isbi_unet), fp32 TFLite, {MODEL_SIZE}x{MODEL_SIZE}x3 "
                 f"({GPU_SIZE}x{GPU_SIZE}x3 for runner-gpu)",
        "bounds": {"warmup_fraction": WARMUP_FRACTION, "page_warmup_s": args.page_warmup_s, "p99_ratio": P99_RATIO,
                   "growth_mb": BOUNDS_MB, "window_s": args.window_s},
        "results": results, "table": table_rows(results), "chart": str(png.relative_to(ROOT)),
    })
    return results


if __name__ == "__main__":
    sys.exit(main())
