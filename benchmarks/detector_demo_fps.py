"""Frame rates of `kseg demo-video` on the exported detector variants, side by side.

For each detector folder (what `kseg export --run RUN` or benchmarks/detector_variants.py writes:
`<name>_<variant>.tflite`) and each variant, `python -m export.video` runs the file with
ai-edge-litert on the CPU (--threads, default 2) over a 640 x 480 video of the run's own kind of
images (Mask R-CNN: kseg.data.shapes; Panoptic FPN, MaskFormer: kseg.data.panoptic_shapes, at the
run's image size, scaled up), drawing instances (Mask R-CNN) or the panoptic map (the others).

    python3 benchmarks/detector_demo_fps.py                       # the three dv_* runs' variants
    python3 benchmarks/detector_demo_fps.py --detector RUN/export RUN/run.json \\
        --variants fp32 int8 --frames 60

Writes benchmarks/results/detector_demo_fps.json (one row per detector x variant) and prints the table.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, print_table, write_results  # noqa: E402

VIDEO_SIZE = (480, 640)  # H, W: a phone camera's VGA stream
VARIANTS = ("fp32", "fp16", "dynamic", "int8")
DV_RUNS = ("dv_mask_rcnn_run", "dv_panoptic_fpn_run", "dv_maskformer_run")
COLUMNS = ["detector", "variant", "effect", "size_mb", "objects", "end_to_end_fps", "inference_fps", "inference_ms",
           "postprocess_ms", "effect_ms", "decode_prepare_ms", "encode_ms", "modified_utc"]


def default_detectors():
    """(export folder, its run.json) of the dv_* runs that benchmarks/detector_variants.py exported."""
    return [(RESULTS / "detector_variants_run" / run, RESULTS / run / "run.json") for run in DV_RUNS]


def variant_files(folder, variants):
    """{variant: file} of the `*_<variant>.tflite` files in `folder` (a variant without a file is left out)."""
    files = {}
    for variant in variants:
        found = sorted(Path(folder).glob(f"*_{variant}.tflite"))
        if len(found) > 1:
            raise SystemExit(f"{folder}: {len(found)} files end in _{variant}.tflite; expected one")
        if found:
            files[variant] = found[0]
    return files


def camera_frames(run_json, count=8):
    """`count` images like the run's training data, scaled to VIDEO_SIZE: uint8 [480, 640, 3] each."""
    from PIL import Image

    info = json.loads(Path(run_json).read_text())
    size = tuple(info["data"]["image_size"])
    if info["task"] == "panoptic":
        from kseg.data.panoptic_shapes import panoptic_shapes_examples as examples
    else:
        from kseg.data.shapes import shapes_dataset_examples as examples
    images = [np.asarray(e["image"]) for e in examples(count, seed=123, image_size=size)]
    return [np.asarray(Image.fromarray(np.clip(i, 0, 255).astype(np.uint8)).resize(VIDEO_SIZE[::-1], Image.BILINEAR))
            for i in images]


def demo_video_row(model, labels, video, work, threads):
    """One `python -m export.video` run of `model` on `video`: the table's row."""
    model = Path(model)
    report = Path(work) / f"{model.stem}.json"
    command = [sys.executable, "-m", "export.video", "--model", str(model), "--input", str(video), "--output",
               str(Path(work) / f"{model.stem}.y4m"), "--threads", str(threads), "--labels", str(labels),
               "--json", str(report)]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"demo-video failed on {model} (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    r = json.loads(report.read_text())
    stages = {k: v["p50_ms"] for k, v in r["stages_ms"].items()}
    modified = datetime.datetime.fromtimestamp(model.stat().st_mtime, datetime.timezone.utc)
    return {
        "detector": r["detector"]["model"],
        "model": model.stem.rsplit("_", 1)[0],
        "file": str(model),
        "variant": model.stem.rsplit("_", 1)[-1],
        "effect": r["effect"],
        "size_mb": round(model.stat().st_size / 1e6, 2),
        "objects": r["detector"]["objects_per_frame"]["median"],
        "frames": r["frames"],
        "end_to_end_fps": round(r["end_to_end_fps"], 2),
        "inference_fps": round(r["inference_fps"], 2),
        "inference_ms": round(stages["inference"], 2),
        "postprocess_ms": round(stages["postprocess"], 2),
        "effect_ms": round(stages["effect"], 2),
        "decode_prepare_ms": round(stages["decode"] + stages["preprocess"], 2),
        "encode_ms": round(stages["encode"], 2),
        "modified_utc": modified.strftime("%Y-%m-%d %H:%M"),
    }


def measure(detectors, variants=VARIANTS, frames=60, threads=2, work=None):
    """demo-video on every variant file of every detector folder.

    Args:
        detectors: (export folder, labels) pairs; labels is demo-video's --labels (a run.json or names).
        variants: which `*_<variant>.tflite` files to run.
        frames: video length (8 images of the run's kind, cycled); the run.json gives the kind
            when `labels` is one, else the frames are kseg.data.shapes images.
        threads: LiteRT CPU threads.
        work: scratch folder (default: a temporary one).

    Returns:
        {"rows": one per detector x variant found, "missing": ["folder: variant", ...]}.
    """
    from export.video_io import write_y4m

    rows, missing = [], []
    with tempfile.TemporaryDirectory(prefix="kseg-detector-fps-") as scratch:
        work = Path(work or scratch)
        for folder, labels in detectors:
            files = variant_files(folder, variants)
            missing += [f"{folder}: {v}" for v in variants if v not in files]
            if not files:
                continue
            run_json = Path(labels) if str(labels).endswith(".json") else None
            pictures = camera_frames(run_json) if run_json else _shapes_frames()
            video = work / f"{Path(folder).name}.y4m"
            write_y4m(video, (pictures[i % len(pictures)] for i in range(frames)), fps=30)
            for variant, path in files.items():
                rows.append(demo_video_row(path, labels, video, work, threads))
                print_table(rows[-1:], COLUMNS)
    return {"rows": rows, "missing": missing}


def _shapes_frames(count=8):
    from PIL import Image

    from kseg.data.shapes import shapes_dataset_examples

    return [np.asarray(Image.fromarray(np.asarray(e["image"]).astype(np.uint8)).resize(VIDEO_SIZE[::-1]))
            for e in shapes_dataset_examples(count, seed=123, image_size=(128, 128))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", nargs=2, action="append", metavar=("FOLDER", "LABELS"),
                        help="an export folder and its class names (a run.json or a,b,c); repeatable "
                        "(default: the dv_* runs of benchmarks/detector_variants.py)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--frames", type=int, default=60, help="video frames per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="detector_demo_fps", help="results file stem (benchmarks/results/NAME.json)")
    args = parser.parse_args(argv)
    detectors = [(Path(f), l) for f, l in args.detector] if args.detector else default_detectors()
    result = measure(detectors, args.variants, args.frames, args.threads)
    if not result["rows"]:
        raise SystemExit(f"no *_{{{','.join(args.variants)}}}.tflite file in {[str(f) for f, _ in detectors]}")
    summary = {"video_size": list(VIDEO_SIZE), "frames": args.frames, "threads": args.threads,
               "variants": list(args.variants), **result}
    path = write_results(args.name, summary)
    print()
    print_table(result["rows"], COLUMNS)
    for line in result["missing"]:
        print(f"no file: {line}")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
