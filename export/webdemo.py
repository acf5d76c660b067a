"""Models for the browser demo (mobile_demo/): export kseg runs and write `models/index.json`.

    python3 -m export.webdemo --out mobile_demo/public/models            # the ISBI demo model
    python3 -m export.webdemo --out mobile_demo/public/models --run RUN  # your own kseg run(s)
    python3 -m export.webdemo --out mobile_demo/public/models \
        --instance-model shapes_mask_rcnn.keras --instance-labels circle,square,triangle
    python3 -m export.webdemo --out mobile_demo/public/models \
        --panoptic RUN/export --panoptic-labels RUN/run.json --panoptic-variants fp32,int8

With no --run it uses `kseg-demo/run` (what `kseg demo` writes), training it first (about
3 minutes on 2 cores) when it is not there. It also exports a person segmenter, listed first with
blur as its effect, when a person run exists at `runs/person` (where the README's "Person
segmentation for AR" training command writes it), or at --person-run RUN / $KSEG_PERSON_RUN;
otherwise it prints one line saying how to train one (one to two hours on 2 cores; nothing is trained here).
With --run, --instance-model or --panoptic, only those are exported (and --person-run's run, if
given). Each run is exported by `export.export_run` (what
`kseg export` runs) to every variant (fp32, fp16, dynamic, int8) at the run's image size, uint8
camera input, logits out and TFLite metadata, so the same files also run in MediaPipe's Image
Segmenter.

The index lists one entry per model file: the page reads labels, colours (kseg.viz.palette),
the background class, the softmax activation and the tensors' quantization from it.

An entry's "task" says how the page reads the model's outputs:

    "semantic"  one output, logits [1, H, W, K] (or a class map [1, H, W])
    "instance"  a Mask R-CNN (kseg.models.mask_rcnn) at batch 1, builtin ops only, any variant
                (export.tflite.detector_tflite: fp32, fp16, dynamic, int8; one entry each); input
                "image" float32 [1, H, W, 3] raw pixels; outputs by signature name: "boxes"
                [1, D, 4] (y1, x1, y2, x2) pixels, "scores" [1, D], "classes" [1, D] int32
                (1..K, 0 pads), "masks" [1, D, H, W] probabilities, "num_detections" [1]
    "panoptic"  a Panoptic FPN or MaskFormer (kseg.models), any variant, as "instance" but with the
                panoptic outputs by signature name (export.video_detections.PANOPTIC_OUTPUTS):
                "panoptic" [1, H, W] int32 segment ids, "segment_category" / "segment_is_thing" /
                "segment_score" [1, N], "num_segments" [1]; the page draws what `kseg demo-video`
                draws for it (kseg.viz.panoptic_overlay)

Labels are indexed by class id in both: an instance entry's labels are ["background", name of
class 1, ..., name of class K], so `labels[c]` and `colors[c]` serve a detection of class c.
Instance entries also carry `instance_colors` (kseg.viz.instance_colors, one per detection
slot: detection i is drawn in colour i) and the score and mask thresholds the page applies.
Panoptic entries are indexed by category id (labels[0] "void", gaps "class c"), carry
`categories` [{"id", "name", "color"}] (the colour of a stuff segment: kseg.viz.palette over the
categories in id order, as panoptic_overlay gives it), `instance_colors` (the k-th thing segment
in id order is drawn in colour k) and `alpha` (the tint's weight, demo-video's).
"""

import argparse
import json
import os
import sys
from pathlib import Path

# one contract for both demos: the page and demo-video read a Mask R-CNN file the same way
from export.video_detections import INSTANCE_OUTPUTS, MASK_THRESHOLD, SCORE_THRESHOLD
from export.webdemo_detectors import (entry_fields, float_tensors, read_variant, signature_details,
                                      write_detector_variants)

INDEX = "index.json"
SIDECAR = "webdemo.json"
SAMPLE = "sample.png"
DEFAULT_RUN = Path("kseg-demo") / "run"
PERSON_RUN = Path("runs") / "person"  # the README's person training command writes it
PERSON_RUN_ENV = "KSEG_PERSON_RUN"
PERSON_NAME = "person"
PERSON_TITLE = "Person (kseg)"
PERSON_EFFECTS = ("blur", "replace", "classes", "outlines")  # the page's effect menu, its default first
# The README's training command ("Person segmentation for AR"), on one line; tests check they match.
PERSON_TRAIN = (
    'D=../shared/data/person-segmentation; kseg train --images $D/train/images --masks $D/train/masks '
    '--val-images $D/val/images --val-masks $D/val/masks --num-classes 2 --channels 3 --image-size 224 '
    '--class-names background,person --model mobile_unet --set encoder=inverted_residual --set '
    'encoder_filters=16,16,24,32,64,96 --set decoder_filters=64,48,24,16 --augment rot90=False --augment '
    'elastic_prob=0 --augment "scale_range=(0.6,1.4)" --augment brightness=0.2 --augment contrast=0.3 '
    '--batch-size 8 --loss ce_dice --schedule cosine --lr 0.002 --epochs 80 --steps-per-epoch 100 --seed '
    '0 --output runs/person'
)


def model_entries(export_dir, models_dir):
    """Index entries for the variants in `export_dir`: a folder written by `kseg export`, or by
    `export_instance_model` (one entry per variant)."""
    from export import runtime
    from kseg.viz import palette

    export_dir = Path(export_dir)
    extra = _read_sidecar(export_dir)
    if extra.get("task") == "instance":
        files = extra.get("files") or {"fp32": extra.get("file")}  # an older sidecar names one fp32 file
        return [instance_entry(export_dir, models_dir, extra, variant, file) for variant, file in files.items()]
    if extra.get("task") == "panoptic":
        from export.webdemo_panoptic import panoptic_entry

        return [panoptic_entry(export_dir, models_dir, extra, variant, file)
                for variant, file in extra.get("files", {}).items()]
    report_path = export_dir / "export_report.json"
    if not report_path.exists():
        raise FileNotFoundError(f"{report_path} not found: expected a folder written by `kseg export`.")
    report = json.loads(report_path.read_text())
    labels = list(report["labels"])
    background = int(extra.get("background", 0))
    if not 0 <= background < len(labels):
        raise ValueError(f"{export_dir / SIDECAR}: background class {background}; expected 0..{len(labels) - 1}")
    entries = []
    for variant, result in report["variants"].items():
        path = export_dir / f"{report['model']}_{variant}.tflite"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: {report_path} lists variant {variant!r}.")
        info = runtime.describe(runtime.read_model(path))
        entries.append({
            "name": f"{report['model']}_{variant}",
            "task": "semantic",
            "title": extra.get("title", report["model"]),
            "variant": variant,
            "file": path.relative_to(models_dir).as_posix(),
            "size_bytes": info["size_bytes"],
            "labels": labels,
            "colors": [[int(v) for v in c] for c in palette(len(labels))],
            "background": background,
            "activation": "softmax" if report["output"] == "logits" else "none",
            "input": _tensor(info["inputs"][0]),
            "output": _tensor(info["outputs"][0]),
            "outputs": len(info["outputs"]),
            "parity_agreement": result.get("agreement"),
        })
        if extra.get("effects"):
            entries[-1]["effects"] = [str(e) for e in extra["effects"]]
    return entries


def _read_sidecar(export_dir):
    path = Path(export_dir) / SIDECAR
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def instance_entry(export_dir, models_dir, extra, variant="fp32", file=None):
    """The index entry of one variant of an instance model folder (written by `export_instance_model`)."""
    from kseg.viz import instance_colors, palette

    path, content, info = read_variant(export_dir, SIDECAR, "instance", variant, file)
    outputs = signature_outputs(content, path)
    if not isinstance(extra.get("labels"), list):
        raise ValueError(f"{export_dir / SIDECAR}: labels {extra.get('labels')!r}; expected the K class names")
    labels = ["background"] + [str(n) for n in extra["labels"]]
    detections = outputs["scores"]["shape"][1]
    return {
        **entry_fields(path, info, models_dir, extra, "instance", variant),
        "labels": labels,
        "colors": [[int(v) for v in c] for c in palette(len(labels))],
        "instance_colors": [[int(v) for v in c] for c in instance_colors(detections)],
        "background": 0,
        "activation": "none",
        "score_threshold": float(extra.get("score_threshold", SCORE_THRESHOLD)),
        "mask_threshold": float(extra.get("mask_threshold", MASK_THRESHOLD)),
        "input": _tensor(info["inputs"][0]),
        "output": None,
        "instance_outputs": outputs,
        "outputs": len(info["outputs"]),
        "parity_agreement": None,
    }


def signature_outputs(content, name):
    """{output name: tensor} of a Mask R-CNN .tflite's signature; ValueError unless it has the five."""
    details = signature_details(content, name, "a Mask R-CNN")
    if sorted(details) != sorted(INSTANCE_OUTPUTS):
        raise ValueError(f"{name}: outputs {sorted(details)}; expected {sorted(INSTANCE_OUTPUTS)} (kseg's MaskRCNN)")
    return float_tensors(details, INSTANCE_OUTPUTS)


def _tensor(detail):
    scale, zero = detail["quantization"]
    return {"shape": list(detail["shape"]), "dtype": detail["dtype"], "quantization": [scale, zero] if scale else None}


def write_index(models_dir, sample=None):
    """Scans `models_dir`/*/export_report.json and writes `models_dir`/index.json (atomically).

    Folders are listed by their sidecar's "order" (default 1; the person model's is 0), then by
    name; the page starts with the first entry.
    """
    from kseg.utils import write_json

    models_dir = Path(models_dir)
    exports = {p.parent for p in models_dir.glob("*/export_report.json")}
    exports |= {p.parent for p in models_dir.glob(f"*/{SIDECAR}")
                if _read_sidecar(p.parent).get("task") in ("instance", "panoptic")}
    exports = sorted(exports, key=lambda d: (int(_read_sidecar(d).get("order", 1)), d.name))
    if not exports:
        raise FileNotFoundError(f"{models_dir}: no */export_report.json (nor an instance model's */{SIDECAR}); "
                                "export a model into a subfolder first.")
    entries = [e for d in exports for e in model_entries(d, models_dir)]
    index = {"models": entries}
    if sample or (models_dir / SAMPLE).exists():
        index["sample"] = SAMPLE
        for entry in entries:
            entry["sample"] = SAMPLE
    write_json(models_dir / INDEX, index)
    return index


def write_sample(image_path, models_dir):
    """The still image the page shows when there is no camera: an RGB PNG."""
    from PIL import Image

    from kseg.utils import atomic_path

    with atomic_path(Path(models_dir) / SAMPLE) as tmp:
        Image.open(image_path).convert("RGB").save(tmp, format="PNG")


def add_run(run_dir, models_dir, name=None, background=None, title=None, gpu=False, model_path=None, effects=None,
            order=1):
    """`export_run` of a semantic run into `models_dir`/NAME, plus the page's sidecar.

    Args:
        model_path: the .keras file (default: the run's best.keras).
        effects, order: as `write_sidecar`.

    Returns:
        (the folder written, the run's DataSpec).

    Raises:
        export.run.ExportFailed: a variant missed its parity tolerance (its report is in the folder).
    """
    from export.run import export_run
    from kseg import tasks

    info = tasks.load_run(run_dir)
    if info.task != "semantic":
        raise ValueError(f"`run_dir` {run_dir}: an {info.task} run; runs added here are semantic (add a Mask R-CNN "
                         "with export_instance_model, --instance-model)")
    spec = info.spec
    name = name or Path(run_dir).resolve().name
    out = Path(models_dir) / name
    # Phones deliver RGB: a grey model's graph converts it (rgb_input).
    export_run(run_dir, out, name=name, model_path=model_path, rgb_input=spec.channels == 1, gpu=gpu, verbose=False)
    write_sidecar(out, title or name, background or 0, effects=effects, order=order)
    return out, spec


def write_sidecar(export_dir, title, background=0, effects=None, order=1):
    """What the page needs beyond the export report: a display title and the background class.

    Args:
        effects: the page's effect menu for this model, its default first (default: the page's
            choice by class count).
        order: where the model comes in the page's menu: lower first, then by folder name.
    """
    from kseg.utils import write_json

    extra = {"title": title, "task": "semantic", "background": int(background), "order": int(order)}
    if effects:
        extra["effects"] = [str(e) for e in effects]
    write_json(Path(export_dir) / SIDECAR, extra)


def person_run(path=None):
    """The person run to export: `path`, else $KSEG_PERSON_RUN, else `runs/person`; None when it
    has no run.json (and `path` was not given).

    Raises:
        FileNotFoundError: `path` was given and is not a run folder.
    """
    if path is not None:
        if not (Path(path) / "run.json").exists():
            raise FileNotFoundError(f"--person-run {path}: no run.json there; expected a folder written by kseg train")
        return Path(path)
    path = Path(os.environ.get(PERSON_RUN_ENV) or PERSON_RUN)
    return path if (path / "run.json").exists() else None


def add_person_run(run_dir, models_dir, gpu=False):
    """`add_run` of a person run as the page's first model, with blur as its default effect;
    exports the run's final.keras (as the README's `kseg export` does), else its best.keras."""
    final = Path(run_dir) / "final.keras"
    return add_run(run_dir, models_dir, name=PERSON_NAME, title=PERSON_TITLE, background=0, gpu=gpu,
                   model_path=final if final.exists() else None, effects=PERSON_EFFECTS, order=0)


def person_hint():
    """The line printed when there is no person run."""
    return (f"no person model ({PERSON_RUN}/run.json, --person-run or ${PERSON_RUN_ENV}): the page starts with the "
            f"ISBI model; to train one (one to two hours on 2 cores): {PERSON_TRAIN}")


def export_instance_model(model, models_dir, name, labels=None, title=None, score_threshold=SCORE_THRESHOLD,
                          mask_threshold=MASK_THRESHOLD, variants=("fp32",), calibration=None):
    """Adds a Mask R-CNN to the demo: `models_dir`/NAME/NAME_<variant>.tflite and its sidecar.

    Args:
        model: a kseg MaskRCNN (trained; any ROI Align method).
        models_dir: the demo's models folder (run `write_index` afterwards).
        name: folder and file stem.
        labels: K names of the object classes 1..K, in class-id order (no background);
            default "class 1" ... "class K".
        title: shown in the page's model list (default `name`).
        score_threshold, mask_threshold: what the page shows: detections scoring at least
            `score_threshold`, each over the pixels where its mask is at least `mask_threshold`.
        variants: any of export.tflite.VARIANTS (export.tflite.detector_tflite); one index
            entry each. Every variant keeps the float32 image input and the named outputs.
        calibration: for "int8": float32 images [N, H, W, 3] at the model's size (real ones,
            e.g. the run's training images).

    Returns:
        the folder written.
    """
    from kseg.utils import write_json

    labels = [f"class {k}" for k in range(1, model.num_classes + 1)] if labels is None else [str(n) for n in labels]
    if len(labels) != model.num_classes:
        raise ValueError(f"labels {labels}: {len(labels)} names; expected the model's {model.num_classes} object "
                         "classes in class-id order (no background)")
    if not 0 <= score_threshold <= 1 or not 0 < mask_threshold < 1:
        raise ValueError(f"score_threshold {score_threshold}, mask_threshold {mask_threshold}: expected "
                         "0 <= score_threshold <= 1 and 0 < mask_threshold < 1")
    out = Path(models_dir) / name

    def finish(content, path):
        signature_outputs(content, path)  # the five named outputs, or a ValueError first
        return content

    files = write_detector_variants(model, out, name, variants, calibration, finish)
    write_json(out / SIDECAR, {"title": title or name, "task": "instance", "files": files, "labels": labels,
                               "score_threshold": float(score_threshold), "mask_threshold": float(mask_threshold)})
    return out


def add_instance_model(path, models_dir, name=None, labels=None, variants=("fp32",)):
    """`export_instance_model` of a saved .keras MaskRCNN; `labels` a list or "a,b,c"; `variants`
    without int8 (it needs calibration images: call `export_instance_model`)."""
    import keras

    import kseg.models  # noqa: F401  (registers MaskRCNN for loading)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a MaskRCNN saved with model.save(\"....keras\").")
    model = keras.models.load_model(path)
    if isinstance(labels, str):
        labels = [n.strip() for n in labels.split(",")]
    return export_instance_model(model, models_dir, name or path.stem, labels=labels, variants=tuple(variants))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m export.webdemo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="mobile_demo/public/models", help="the demo's models folder")
    parser.add_argument("--run", action="append", help="a kseg run folder to export (repeatable)")
    parser.add_argument("--name", help="file name stem for a single --run (default: the run folder's name)")
    parser.add_argument("--background-class", type=int, help="the class the blur/replace effects treat as background")
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing when OUT/index.json exists (but export a person run not exported yet)")
    parser.add_argument("--person-run", metavar="RUN",
                        help=f"the person run to export first (default ${PERSON_RUN_ENV}, else {PERSON_RUN} when it exists)")
    parser.add_argument("--gpu", action="store_true", help="also check each variant on LiteRT's GPU accelerator")
    parser.add_argument("--index-only", action="store_true", help="only rewrite index.json from OUT/*/")
    parser.add_argument("--instance-model", action="append", metavar="M.keras",
                        help="a saved kseg MaskRCNN to add as an instance model (repeatable)")
    parser.add_argument("--instance-labels", metavar="A,B,C",
                        help="names of the instance models' classes 1..K, comma-separated (default: class 1, ...)")
    parser.add_argument("--instance-variants", default="fp32", metavar="V,V",
                        help="the instance models' variants: fp32, fp16, dynamic, comma-separated (default fp32)")
    parser.add_argument("--panoptic", action="append", metavar="DIR",
                        help="a panoptic run's `kseg export` folder (or the run, with export/ in it) whose variants "
                             "to copy in (repeatable)")
    parser.add_argument("--panoptic-labels", metavar="A,B|RUN/run.json",
                        help="the panoptic models' categories, as demo-video's --labels (default: found beside them)")
    parser.add_argument("--panoptic-variants", metavar="V,V", help="the variants to copy (default: all exported)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.name and len(args.run or []) + len(args.instance_model or []) + len(args.panoptic or []) > 1:
        parser.error("--name names a single --run, --instance-model or --panoptic; rename folders one at a time")
    given = args.run or args.instance_model or args.panoptic
    try:
        # With --run, --instance-model or --panoptic only those are exported, unless --person-run names one.
        own = args.index_only or (given and not args.person_run)
        person = None if own else person_run(args.person_run)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.if_missing and (out / INDEX).exists():
        if person is None or (out / PERSON_NAME / "export_report.json").exists():
            print(f"{out / INDEX} exists; keeping it (remove it, or run without --if-missing, to export again)")
            if person is None and not own:
                print(person_hint())
            return 0
        args.index_only = True  # the person run alone is new
    try:
        if person is not None:
            print(f"exporting the person model from {person}")
            add_person_run(person, out, gpu=args.gpu)
        if not args.index_only:
            runs = args.run or ([] if given else [str(DEFAULT_RUN)])
            if not given and not (DEFAULT_RUN / "run.json").exists():
                from kseg.training.demo import run_demo

                print(f"training the demo model into {DEFAULT_RUN.parent} (kseg demo, about 3 minutes)")
                run_demo(str(DEFAULT_RUN.parent))
            for run in runs:
                name = args.name or ("isbi_unet" if Path(run) == DEFAULT_RUN else None)
                title = "ISBI U-Net (kseg demo)" if name == "isbi_unet" and not args.name else None
                _, spec = add_run(run, out, name=name, title=title, background=args.background_class, gpu=args.gpu)
                if not (out / SAMPLE).exists():
                    from kseg.training import split

                    write_sample(split(spec)[1][0][0], out)
            for path in args.instance_model or []:
                add_instance_model(path, out, name=args.name, labels=args.instance_labels,
                                   variants=[v.strip() for v in args.instance_variants.split(",")])
            for folder in args.panoptic or []:
                from export.webdemo_panoptic import add_panoptic_export

                variants = args.panoptic_variants and [v.strip() for v in args.panoptic_variants.split(",")]
                add_panoptic_export(folder, out, name=args.name, labels=args.panoptic_labels, variants=variants)
        index = write_index(out)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for entry in index["models"]:
        print(f"{entry['name']:<28} {entry['size_bytes'] / 1e6:7.2f} MB  {entry['file']}")
    print(f"wrote {out / INDEX}")
    if person is None and not own:
        print(person_hint())
    return 0


if __name__ == "__main__":
    sys.exit(main())
