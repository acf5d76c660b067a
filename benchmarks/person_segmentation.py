"""Person segmentation for AR: kseg's exported person models beside MediaPipe's selfie segmenter.

One run measures, on the 58 validation photos of ../shared/data/person-segmentation/val
(masks 0 = background, 1 = person, made by an automatic background-removal tool), every model
through the same LiteRT runtime (ai-edge-litert Interpreter, XNNPACK, 2 threads):

- person IoU per image (mean, median, worst) and over the set (pixels summed over all
  images), and mIoU (background and person IoU over the set), at each photo's own size;
- latency of the model alone (invoke only; all models interleaved in each round, median of
  the round means) and end to end: JPEG decode -> resize to the model input (bilinear) ->
  model -> person score upsampled to the photo's size (bilinear) -> threshold;
- file size.

MediaPipe's model is `selfie_segmentation.tflite` from the mediapipe==0.10.21 wheel (later
wheels do not ship it), read out of the wheel into --cache at run time and never committed.
Its contract, read from its tensors: input float32 [1, 256, 256, 3] RGB, output float32
[1, 256, 256, 1] behind a LOGISTIC op (a person probability); MediaPipe's own graph feeds
pixels scaled to [0, 1], which the run checks against [-1, 1] (`mediapipe_input_range_check`).
kseg's models take uint8 RGB pixels and give 2-class logits (person = logit 1 > logit 0).
MediaPipe's outputs are only scored, never used as labels.

    python benchmarks/person_segmentation.py --kseg /work/person/export/person_fp32.tflite \
        /work/person/export/person_int8.tflite [--cache /work/person/cache]

Writes benchmarks/results/person_segmentation.{json,png} and prints the table.
"""

import argparse
import io
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from common import RESULTS, print_table, require_shared, write_results

WHEEL = "mediapipe==0.10.21"
WHEEL_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
THREADS = 2


def mediapipe_model(cache):
    """Path of selfie_segmentation.tflite under `cache`, read out of the mediapipe wheel once."""
    cache = Path(cache)
    target = cache / "selfie_segmentation.tflite"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("mediapipe-0.10.21-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d", str(cache)], check=True)
        wheels = sorted(cache.glob("mediapipe-0.10.21-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        target.write_bytes(wheel.read(WHEEL_MEMBER))
    return target


class Model:
    """One .tflite person segmenter: preprocessing, invoke and the person score at the photo's size."""

    def __init__(self, name, path, kind, input_range=(0.0, 1.0)):
        from ai_edge_litert.interpreter import Interpreter

        self.name, self.path, self.kind, self.input_range = name, Path(path), kind, input_range
        self.interpreter = Interpreter(model_path=str(path), num_threads=THREADS)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.size = (int(self.input["shape"][2]), int(self.input["shape"][1]))  # PIL (W, H)
        ops = [op["op_name"] for op in self.interpreter._get_ops_details()]
        self.ops = {op: ops.count(op) for op in sorted(set(ops))}

    def prepare(self, image):
        """PIL RGB image -> the input tensor [1, H, W, 3] of this model."""
        x = np.asarray(image.resize(self.size, Image.BILINEAR), np.float32)[None]
        if self.kind == "mediapipe":
            low, high = self.input_range
            return (low + x * (high - low) / 255.0).astype(np.float32)
        if self.input["dtype"] == np.uint8:
            return x.astype(np.uint8)
        return x

    def invoke(self, x):
        """Runs the model; returns its person score map [h, w] (> 0 is person)."""
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])[0].astype(np.float32)
        scale, zero = self.output["quantization"]
        if scale:
            y = (y - zero) * scale
        return y[..., 0] - 0.5 if self.kind == "mediapipe" else y[..., 1] - y[..., 0]

    def person_mask(self, image):
        """PIL RGB image -> boolean person mask at the image's own size (bilinear score upsampling)."""
        score = self.invoke(self.prepare(image))
        return np.asarray(Image.fromarray(score).resize(image.size, Image.BILINEAR)) > 0


def load_val(root):
    """[(stem, JPEG bytes, mask [H, W] bool)] of the validation split."""
    out = []
    for image in sorted((root / "images").glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem):
        mask = np.asarray(Image.open(root / "masks" / f"{image.stem}.png")) > 0
        out.append((image.stem, image.read_bytes(), mask))
    return out


def decode(data):
    return Image.open(io.BytesIO(data)).convert("RGB")


def accuracy(model, val):
    """Person IoU per image and over the set, and mIoU (background, person) over the set."""
    per_image, inter, union, bg_inter, bg_union = [], 0, 0, 0, 0
    for _, data, truth in val:
        got = model.person_mask(decode(data))
        if got.shape != truth.shape:
            raise ValueError(f"{model.name}: mask shape {got.shape} differs from the ground truth's {truth.shape}")
        i, u = np.sum(got & truth), np.sum(got | truth)
        bi, bu = np.sum(~got & ~truth), np.sum(~got | ~truth)
        per_image.append(float(i / u) if u else 1.0)
        inter, union, bg_inter, bg_union = inter + i, union + u, bg_inter + bi, bg_union + bu
    person, background = inter / union, bg_inter / bg_union
    return {"person_iou_mean": float(np.mean(per_image)), "person_iou_median": float(np.median(per_image)),
            "person_iou_min": float(np.min(per_image)), "person_iou_set": float(person),
            "background_iou_set": float(background), "mean_iou": float((person + background) / 2),
            "person_iou_per_image": per_image}


def latency(models, val, rounds, runs):
    """Invoke-only ms (median of round means, models interleaved) and end-to-end ms per model."""
    inputs = {m.name: m.prepare(decode(val[0][1])) for m in models}
    invoke = {m.name: [] for m in models}
    for m in models:
        for _ in range(5):
            m.invoke(inputs[m.name])
    for _ in range(rounds):
        for m in models:
            start = time.perf_counter()
            for _ in range(runs):
                m.interpreter.set_tensor(m.input["index"], inputs[m.name])
                m.interpreter.invoke()
            invoke[m.name].append((time.perf_counter() - start) / runs * 1000)
    e2e = {m.name: [] for m in models}
    for _, data, _ in val:
        for m in models:
            start = time.perf_counter()
            m.person_mask(decode(data))
            e2e[m.name].append((time.perf_counter() - start) * 1000)
    return ({k: float(np.median(v)) for k, v in invoke.items()}, invoke,
            {k: float(np.mean(v)) for k, v in e2e.items()})


def chart(rows, path):
    """Two bar charts: person IoU (mean per image) and latency (model alone / end to end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.bar(names, [r["person_iou_mean"] for r in rows], color="#4c72b0")
    left.axhline(0.85, color="grey", linestyle="--", linewidth=1, label="target 0.85")
    left.set_ylim(0.5, 1.0)
    left.set_title("person IoU (mean over 58 val photos)")
    left.legend(loc="lower right")
    x = np.arange(len(rows))
    right.bar(x - 0.2, [r["invoke_ms"] for r in rows], 0.4, label="model alone")
    right.bar(x + 0.2, [r["end_to_end_ms"] for r in rows], 0.4, label="end to end")
    right.set_xticks(x, names)
    right.set_title(f"latency, ms (LiteRT CPU, {THREADS} threads)")
    right.legend()
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def effect_picture(model, image_path, out_path, width=320):
    """The photo, then kseg's "blur" and "replace" AR effects (export.effects) from `model`, side by side."""
    from export.effects import apply_effect

    image = Image.open(image_path).convert("RGB")
    image = image.resize((width, round(image.height * width / image.width)), Image.BILINEAR)
    person = 1 / (1 + np.exp(-model.invoke(model.prepare(image))))  # P(person) at the model's size
    scores = np.stack([1 - person, person], -1)
    frame = np.asarray(image)
    panels = [frame] + [apply_effect(frame, scores, effect) for effect in ("blur", "replace")]
    Image.fromarray(np.concatenate(panels, axis=1)).save(out_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kseg", nargs="+", required=True, help="kseg person .tflite files (kseg export)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "kseg-person"),
                        help="folder for the mediapipe wheel and the model read out of it (never committed)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--picture", nargs=2, metavar=("PHOTO", "OUT.png"),
                        help="also draw the first --kseg model's blur and replace effects on PHOTO (use a photo "
                             "you may redistribute, e.g. from coco128-seg; never one of person-segmentation)")
    args = parser.parse_args()

    val = load_val(require_shared("person-segmentation", "val"))
    mp_path = mediapipe_model(args.cache)
    models = [Model(Path(p).stem, p, "kseg") for p in args.kseg] + [Model("mediapipe_selfie", mp_path, "mediapipe")]
    if args.picture:
        if "person-segmentation" in str(Path(args.picture[0]).resolve()):
            raise ValueError(f"--picture {args.picture[0]}: the person-segmentation photos have no licence to "
                             "redistribute; use another photo (e.g. ../shared/data/coco128-seg)")
        effect_picture(models[0], *args.picture)
    # MediaPipe's graph scales pixels to [0, 1]; [-1, 1] is the other common convention: score both.
    check = {"[0, 1]": None, "[-1, 1]": accuracy(Model("mp", mp_path, "mediapipe", (-1.0, 1.0)), val)["person_iou_mean"]}
    scores = {m.name: accuracy(m, val) for m in models}
    check["[0, 1]"] = scores["mediapipe_selfie"]["person_iou_mean"]
    invoke_ms, invoke_rounds, e2e_ms = latency(models, val, args.rounds, args.runs)

    rows, results = [], {}
    for m in models:
        s = scores[m.name]
        results[m.name] = {"path": str(m.path), "size_bytes": m.path.stat().st_size,
                           "input": {"shape": [int(v) for v in m.input["shape"]], "dtype": np.dtype(m.input["dtype"]).name},
                           "output": {"shape": [int(v) for v in m.output["shape"]],
                                      "dtype": np.dtype(m.output["dtype"]).name},
                           "op_counts": m.ops, **s, "invoke_ms": invoke_ms[m.name],
                           "invoke_ms_rounds": invoke_rounds[m.name], "end_to_end_ms": e2e_ms[m.name]}
        rows.append({"model": m.name, "input": "x".join(map(str, m.input["shape"][1:])),
                     "KiB": round(m.path.stat().st_size / 1024), "person_iou_mean": s["person_iou_mean"],
                     "person_iou_set": s["person_iou_set"], "person_iou_min": s["person_iou_min"],
                     "mean_iou": s["mean_iou"], "invoke_ms": invoke_ms[m.name], "end_to_end_ms": e2e_ms[m.name]})
    print_table(rows, list(rows[0]))
    print("MediaPipe input range check (mean person IoU):", check)
    chart(rows, RESULTS / "person_segmentation.png")
    write_results("person_segmentation", {
        "setup": {"data": f"person-segmentation val, {len(val)} photos at their own size (masks from an automatic "
                          "background-removal tool)",
                  "runtime": f"ai-edge-litert Interpreter (XNNPACK), {THREADS} threads",
                  "latency": f"invoke only: {args.runs} invokes x {args.rounds} rounds, models interleaved, median of "
                             "round means; end to end: decode -> bilinear resize -> model -> bilinear upsampling of "
                             "the person score to the photo -> threshold, mean over the val photos",
                  "mediapipe": f"{WHEEL} {WHEEL_MEMBER}; input float32 RGB in [0, 1], output sigmoid person "
                               "probability (LOGISTIC op), threshold 0.5"},
        "mediapipe_input_range_check": check, "targets": {"person_iou_mean": 0.85, "invoke_ms": "<= MediaPipe's"},
        "models": results,
    })


if __name__ == "__main__":
    main()
