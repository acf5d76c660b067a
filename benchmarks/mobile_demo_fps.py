"""Frame rates of the AR demo: the browser page per exported variant, and `kseg demo-video`.

The page runs in headless Chromium (Debian's /usr/bin/chromium) on the fake camera, fed a
640 x 480 video of ISBI slices; after a warm-up it counts the frames drawn (camera -> model
input -> inference -> effect) over --seconds and takes the HUD's median inference time. WASM
numbers are this machine's CPU through WebAssembly; the WebGPU row runs on SwiftShader (a CPU
emulating a GPU), so it is a functional check, and its speed means nothing.
`kseg demo-video` runs the same files with ai-edge-litert on the same frames.

The panoptic rows run the Panoptic FPN and MaskFormer variants that benchmarks/detector_variants.py
exported (copied in by export.webdemo --panoptic) on a 640 x 480 video of synthetic panoptic
shapes at the run's image size (benchmarks/detector_demo_fps.camera_frames), drawing the panoptic
map; their `kseg demo-video` figures are benchmarks/detector_demo_fps.py's.

    python3 benchmarks/mobile_demo_fps.py [--run RUN] [--seconds 10]
    python3 benchmarks/mobile_demo_fps.py --panoptic-only    # only the panoptic rows, kept beside the others

With no --run it exports the `kseg demo` run (kseg-demo/run, trained first when absent).
Writes benchmarks/results/mobile_demo_fps.json ("rows", "panoptic_rows") and prints a table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, print_table, write_results  # noqa: E402

VIDEO_SIZE = (480, 640)  # H, W: a phone camera's VGA stream


def camera_frames(count=8):
    from PIL import Image

    from kseg.data.samples import isbi_sample_dirs

    paths = sorted(isbi_sample_dirs()[0].iterdir())[:count]
    return [np.asarray(Image.open(p).convert("RGB").resize(VIDEO_SIZE[::-1], Image.BILINEAR)) for p in paths]


def page_rows(url, entries, work, shots, video, seconds):
    from export import page

    rows = []
    configs = [(e, "litert", "wasm") for e in entries]
    fp32 = next(e for e in entries if e["variant"] == "fp32")
    configs += [(fp32, "mediapipe", "cpu"), (fp32, "litert", "webgpu")]
    for entry, runtime, accelerator in configs:
        query = f"?model={entry['name']}&runtime={runtime}&accelerator={accelerator}&timing=1"
        steps = [{"wait": "ready", "frames": 5}, {"measure": "m", "seconds": seconds}, {"stats": "s"}]
        shot = Path(shots) / f"{entry['variant']}_{runtime}_{accelerator}.png"
        steps.append({"screenshot": str(shot)})
        result = page.drive(url + query, steps, work, video=video, webgpu=accelerator == "webgpu")
        m, s = result["m"], result["s"]
        rows.append({
            "path": "browser",
            "variant": entry["variant"],
            "runtime": {"litert": "LiteRT.js", "mediapipe": "MediaPipe"}[runtime],
            "accelerator": s["acceleratorLabel"],
            "fully_accelerated": s["fullyAccelerated"],
            "effect": s["effect"],
            "page_fps": round(m["frames"] / m["seconds"], 2),
            "inference_ms": round(s["inferenceMs"], 2),
            "prepare_ms": round(s["prepareMs"], 2),
            "effect_ms": round(s["effectMs"], 2),
            "size_mb": round(entry["size_bytes"] / 1e6, 2),
            "note": "SwiftShader: functional only" if accelerator == "webgpu" else "",
        })
        print_table(rows[-1:], list(rows[-1]))
    return rows


def effect_screenshots(url, entry, work, shots, video):
    """One phone-sized screenshot per effect with `entry`, and all four side by side (effects.png)."""
    from PIL import Image

    from export import page
    from kseg.viz import save_png, side_by_side

    effects = ("blur", "replace", "classes", "outlines")
    steps = [{"wait": "ready", "frames": 3}]
    for effect in effects:
        steps += [{"effect": effect}, {"wait": "ready", "frames": 2}, {"screenshot": str(Path(shots) / f"{effect}.png")}]
    page.drive(f"{url}?model={entry['name']}", steps, work, video=video)
    panels = [np.asarray(Image.open(Path(shots) / f"{e}.png").convert("RGB")) for e in effects]
    path = Path(shots) / "effects.png"
    save_png(path, side_by_side(panels, titles=list(effects)))
    return path


def video_rows(models_dir, entries, video, work, threads):
    rows = []
    for entry in entries:
        out = Path(work) / f"{entry['name']}.y4m"
        report = Path(work) / f"{entry['name']}.json"
        cmd = [sys.executable, "-m", "export.video", "--model", str(Path(models_dir) / entry["file"]),
               "--input", str(video), "--output", str(out), "--threads", str(threads), "--json", str(report)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        r = json.loads(report.read_text())
        rows.append({
            "path": "kseg demo-video",
            "variant": entry["variant"],
            "runtime": "ai-edge-litert",
            "accelerator": f"CPU {threads} threads",
            "fully_accelerated": None,
            "effect": r.get("effect"),
            "page_fps": round(r["end_to_end_fps"], 2),  # frames per second end to end
            "inference_ms": round(r["inference_median_ms"], 2),
            "prepare_ms": round(r["stages_ms"]["decode"]["p50_ms"] + r["stages_ms"]["preprocess"]["p50_ms"], 2),
            "effect_ms": round(r["stages_ms"]["effect"]["p50_ms"], 2),
            "size_mb": round(entry["size_bytes"] / 1e6, 2),
            "note": f"{r['frames']} frames end to end; inference only {r['inference_fps']:.1f} FPS",
        })
    return rows


PANOPTIC_COLUMNS = ["model", "variant", "runtime", "accelerator", "effect", "segments", "page_fps", "inference_ms",
                    "prepare_ms", "effect_ms", "size_mb"]


def panoptic_detectors():
    """(export folder, run.json) of the panoptic dv_* runs (benchmarks/detector_demo_fps.default_detectors)."""
    from benchmarks.detector_demo_fps import default_detectors

    return [(folder, run_json) for folder, run_json in default_detectors()
            if json.loads(Path(run_json).read_text())["task"] == "panoptic"]


def panoptic_rows(url, models, work, shots, seconds, variants):
    """The page's frame rate on each panoptic variant: one row each (columns PANOPTIC_COLUMNS)."""
    from benchmarks.detector_demo_fps import camera_frames as detector_frames
    from export import page
    from export.video import write_y4m
    from export.webdemo import write_index
    from export.webdemo_panoptic import add_panoptic_export

    rows = []
    for folder, run_json in panoptic_detectors():
        name = Path(add_panoptic_export(folder, models, labels=str(run_json), variants=variants)).name
        entries = [e for e in write_index(models)["models"] if e["file"].startswith(f"{name}/")]
        video = Path(work) / f"{name}.y4m"
        write_y4m(video, detector_frames(run_json), fps=30)
        for entry in entries:
            query = f"?model={entry['name']}&runtime=litert&accelerator=wasm&effect=panoptic&timing=1"
            steps = [{"wait": "ready", "frames": 3}, {"measure": "m", "seconds": seconds}, {"stats": "s"},
                     {"screenshot": str(Path(shots) / f"{entry['name']}.png")}]
            result = page.drive(url + query, steps, work, video=video)
            m, st = result["m"], result["s"]
            rows.append({
                "model": name, "variant": entry["variant"], "runtime": "LiteRT.js", "accelerator": st["acceleratorLabel"],
                "effect": st["effect"], "segments": st["segments"],
                "page_fps": round(m["frames"] / m["seconds"], 2), "inference_ms": round(st["inferenceMs"], 2),
                "prepare_ms": round(st["prepareMs"], 2), "effect_ms": round(st["effectMs"], 2),
                "size_mb": round(entry["size_bytes"] / 1e6, 2),
            })
            print_table(rows[-1:], PANOPTIC_COLUMNS)
    return rows


def measure_panoptic_only(args):
    """--panoptic-only: the panoptic rows alone, written beside the rows already in the results file."""
    from benchmarks.common import RESULTS
    from export import page

    path = RESULTS / "mobile_demo_fps.json"
    summary = json.loads(path.read_text()) if path.exists() else {"rows": []}
    with tempfile.TemporaryDirectory(prefix="kseg-demo-fps-") as work:
        site = page.build_site(Path(work) / "dist")
        shots = Path(__file__).parent / "results" / "mobile_demo"
        shots.mkdir(parents=True, exist_ok=True)
        with page.serve(site) as url:
            rows = panoptic_rows(url, site / "models", work, shots, args.seconds, args.panoptic_variants)
    summary.pop("benchmark", None)
    summary.update({"panoptic_rows": rows, "panoptic_machine": machine(), "panoptic_seconds_per_config": args.seconds})
    return rows, write_results("mobile_demo_fps", summary)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="kseg run folder to export (default: kseg-demo/run)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per page configuration")
    parser.add_argument("--frames", type=int, default=60, help="frames for kseg demo-video")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--panoptic-only", action="store_true",
                        help="measure only the panoptic rows (keeping the other rows of the results file)")
    parser.add_argument("--panoptic-variants", nargs="+", default=["fp32", "fp16", "dynamic", "int8"])
    args = parser.parse_args()

    from export import webdemo
    from export import page
    from export.video import write_y4m

    missing = page.missing_tools()
    if missing:
        sys.exit(f"this benchmark needs {missing}")
    if args.panoptic_only:
        rows, path = measure_panoptic_only(args)
        print_table(rows, PANOPTIC_COLUMNS)
        print(f"wrote {path}")
        return
    with tempfile.TemporaryDirectory(prefix="kseg-demo-fps-") as work:
        work = Path(work)
        site = page.build_site(work / "dist")
        models = site / "models"
        argv = ["--out", str(models)] + (["--run", args.run] if args.run else [])
        if webdemo.main(argv) != 0:
            sys.exit("exporting the models failed")
        entries = json.loads((models / webdemo.INDEX).read_text())["models"]
        frames = camera_frames()
        video = work / "camera.y4m"
        write_y4m(video, frames, fps=30)
        long_video = work / "clip.y4m"
        write_y4m(long_video, (frames[i % len(frames)] for i in range(args.frames)), fps=30)
        shots = Path(__file__).parent / "results" / "mobile_demo"
        shots.mkdir(parents=True, exist_ok=True)
        with page.serve(site) as url:
            rows = page_rows(url, entries, work, shots, video, args.seconds)
            int8 = next(e for e in entries if e["variant"] == "int8")
            effect_screenshots(url, int8, work, shots, video)
            panoptic = panoptic_rows(url, models, work, shots, args.seconds, args.panoptic_variants)
        rows += video_rows(models, entries, long_video, work, args.threads)
    summary = {"machine": machine(), "video_size": list(VIDEO_SIZE), "model_input": entries[0]["input"]["shape"],
               "seconds_per_config": args.seconds, "rows": rows, "panoptic_rows": panoptic}
    path = write_results("mobile_demo_fps", summary)
    print_table(rows, ["path", "variant", "runtime", "accelerator", "fully_accelerated", "effect", "page_fps",
                       "inference_ms", "prepare_ms", "effect_ms", "size_mb", "note"])
    print_table(panoptic, PANOPTIC_COLUMNS)
    print(f"wrote {path}; screenshots in {shots}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
