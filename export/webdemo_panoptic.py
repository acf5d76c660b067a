"""Panoptic models (Panoptic FPN, MaskFormer) for the browser demo: files, sidecar and index entries.

Two ways in, both writing `models_dir`/NAME/NAME_<variant>.tflite and NAME/webdemo.json (each file
is the exported graph with its bool output, segment_is_thing, cast to int32: `int32_outputs`):

    export_panoptic_model(model, models_dir, name, categories, variants=("fp32", "int8"),
                          calibration=images)      # converts a Keras model (Python)
    add_panoptic_export(folder, models_dir)        # copies what `kseg export` wrote (--panoptic)

The page reads the file's outputs by the names `kseg demo-video` reads
(export.video_detections.PANOPTIC_OUTPUTS) and draws the same picture (kseg.viz.panoptic_overlay
at demo-video's ALPHA); see export.webdemo for the index it lands in.
"""

from pathlib import Path

import numpy as np

from export.video_detections import ALPHA, PANOPTIC_OUTPUTS
from export.webdemo import SIDECAR, _tensor
from export.webdemo_detectors import (entry_fields, float_tensors, read_variant, signature_details,
                                      write_detector_variants)

VOID = "void"  # labels[0] of a panoptic entry: the panoptic map's id 0


def panoptic_outputs(content, name):
    """{output name: tensor} of the five panoptic outputs of a `.tflite`'s one signature.

    Args:
        content: the `.tflite` bytes.
        name: the file, for errors.

    Raises:
        ValueError: not one signature, or one of PANOPTIC_OUTPUTS missing.
    """
    details = signature_details(content, name, "a panoptic model")
    missing = [k for k in PANOPTIC_OUTPUTS if k not in details]
    if missing:
        raise ValueError(f"{name}: outputs {sorted(details)} lack {missing}; expected {list(PANOPTIC_OUTPUTS)} "
                         "(kseg's PanopticFPN or MaskFormer)")
    return float_tensors(details, PANOPTIC_OUTPUTS)


def int32_outputs(content, name):
    """`content` with each bool graph output cast to int32 (0/1) by an added CAST op; the same bytes
    when it has none. LiteRT.js has no bool tensors (it refuses to load such a model), and a panoptic
    model's segment_is_thing is one; the rest of the graph, its signature names included, is unchanged.

    Args:
        content: the `.tflite` bytes.
        name: the file, for errors.

    Raises:
        ValueError: weights stored after the flatbuffer (a model over 2 GB), which this does not rewrite.
    """
    import copy

    import flatbuffers

    from export.runtime.model_file import parse_model, schema

    s = schema()
    model = parse_model(content)
    sg = model.subgraphs[0]
    bools = [int(t) for t in sg.outputs if sg.tensors[t].type == s.TensorType.BOOL]
    if not bools:
        return bytes(content)
    if any(b.offset and b.offset > 1 for b in model.buffers):
        raise ValueError(f"{name}: weights stored after the flatbuffer (a model over 2 GB); expected a smaller model")
    codes = [i for i, c in enumerate(model.operatorCodes) if max(c.builtinCode, c.deprecatedBuiltinCode) == 53]
    if codes:
        cast = codes[0]
    else:
        code = s.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CAST
        code.version = 1
        model.operatorCodes.append(code)
        cast = len(model.operatorCodes) - 1
    replaced = {}
    for t in bools:
        tensor = copy.copy(sg.tensors[t])
        tensor.type = s.TensorType.INT32
        tensor.name = (tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name) + "_int32"
        tensor.buffer = len(model.buffers)
        model.buffers.append(s.BufferT())
        sg.tensors.append(tensor)
        replaced[t] = len(sg.tensors) - 1
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = cast, [t], [replaced[t]]
        op.builtinOptionsType = s.BuiltinOptions.CastOptions
        op.builtinOptions = s.CastOptionsT()
        op.builtinOptions.inDataType, op.builtinOptions.outDataType = s.TensorType.BOOL, s.TensorType.INT32
        sg.operators.append(op)
    sg.outputs = [replaced.get(int(t), int(t)) for t in sg.outputs]
    for signature in model.signatureDefs or []:
        for output in signature.outputs or []:
            output.tensorIndex = replaced.get(int(output.tensorIndex), int(output.tensorIndex))
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def check_categories(categories, where):
    """[{"id", "name"}] sorted by id, from dicts with an int "id" >= 1 and a "name" (extra keys dropped).

    Raises:
        ValueError: naming `where` and what was seen.
    """
    ok = isinstance(categories, (list, tuple)) and categories and all(
        isinstance(c, dict) and isinstance(c.get("id"), (int, np.integer)) and not isinstance(c.get("id"), bool)
        and c["id"] >= 1 and isinstance(c.get("name"), str) for c in categories)
    ids = [int(c["id"]) for c in categories] if ok else []
    if not ok or len(set(ids)) != len(ids) or max(ids) > 255:
        raise ValueError(f"{where}: {str(categories)[:120]}; expected the run's categories, a list of "
                         "{\"id\": 1..255, \"name\"} with distinct ids (a kseg run.json's \"categories\")")
    return [{"id": int(c["id"]), "name": c["name"]} for c in sorted(categories, key=lambda c: int(c["id"]))]


def panoptic_entry(export_dir, models_dir, extra, variant, file):
    """The index entry of one variant of a panoptic model folder (module docstring)."""
    from kseg.viz import instance_colors, palette

    export_dir = Path(export_dir)
    path, content, info = read_variant(export_dir, SIDECAR, "panoptic", variant, file)
    outputs = panoptic_outputs(content, path)
    categories = check_categories(extra.get("categories"), f"{export_dir / SIDECAR} categories")
    colors = palette(len(categories))  # panoptic_colors: stuff by its position among the categories
    labels = [VOID] + [f"class {c}" for c in range(1, categories[-1]["id"] + 1)]
    by_id = [[0, 0, 0]] + [[128, 128, 128]] * categories[-1]["id"]
    for category, color in zip(categories, colors):
        labels[category["id"]] = category["name"]
        by_id[category["id"]] = [int(v) for v in color]
    return {
        **entry_fields(path, info, models_dir, extra, "panoptic", variant),
        "labels": labels,
        "colors": by_id,
        "categories": [{**c, "color": by_id[c["id"]]} for c in categories],
        "instance_colors": [[int(v) for v in c] for c in instance_colors(outputs["segment_category"]["shape"][1])],
        "alpha": float(extra.get("alpha", ALPHA)),
        "background": 0,
        "activation": "none",
        "input": _tensor(info["inputs"][0]),
        "output": None,
        "panoptic_outputs": outputs,
        "outputs": len(info["outputs"]),
        "parity_agreement": None,
    }


def write_panoptic_sidecar(out, title, files, categories, order=1):
    """`out`/webdemo.json of a panoptic model: its title, files by variant and categories."""
    from kseg.utils import write_json

    write_json(Path(out) / SIDECAR, {"title": title, "task": "panoptic", "files": dict(files),
                                     "categories": check_categories(categories, "categories"), "order": int(order)})


def export_panoptic_model(model, models_dir, name, categories, title=None, variants=("fp32",), calibration=None):
    """Adds a Panoptic FPN or MaskFormer to the demo: `models_dir`/NAME/NAME_<variant>.tflite and its sidecar.

    Args:
        model: a kseg PanopticFPN or MaskFormer (trained).
        models_dir: the demo's models folder (run export.webdemo.write_index afterwards).
        name: folder and file stem.
        categories: the run's categories [{"id", "name", ...}] (the ids the model's
            segment_category gives).
        title: shown in the page's model list (default `name`).
        variants: any of export.tflite.VARIANTS (export.tflite.detector_tflite); one index entry
            each. The int8 variant reuses the fp32 bytes when "fp32" comes first.
        calibration: for "int8": float32 images [N, H, W, 3] at the model's size (real ones).

    Returns:
        the folder written.
    """
    categories = check_categories(categories, "categories")

    def finish(content, path):
        content = int32_outputs(content, path)
        panoptic_outputs(content, path)  # the five named outputs, or a ValueError first
        return content

    out = Path(models_dir) / name
    files = write_detector_variants(model, out, name, variants, calibration, finish)
    write_panoptic_sidecar(out, title or name, files, categories)
    return out


def add_panoptic_export(folder, models_dir, name=None, labels=None, variants=None, title=None):
    """Copies the variants a `kseg export` of a panoptic run wrote into the demo (no conversion).

    Args:
        folder: the export folder (export_report.json with "task": "panoptic" and
            `<model>_<variant>.tflite`), or the run folder whose export/ holds them.
        models_dir: the demo's models folder.
        name: the folder and file stem in `models_dir` (default: the report's model name).
        labels: as `kseg demo-video --labels` (names for ids 1, 2, ... or a JSON file such as the
            run's run.json); default: what demo-video finds beside the files
            (export.video_detections.read_categories).
        variants: the variants to copy (default: every one the report lists).
        title: shown in the page's model list (default `name`).

    Returns:
        the folder written.
    """
    import json

    from export.frames import InputError
    from export.video_detections import read_categories
    from kseg.utils import atomic_path

    folder = Path(folder)
    if not (folder / "export_report.json").is_file() and (folder / "export" / "export_report.json").is_file():
        folder = folder / "export"
    report_path = folder / "export_report.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"--panoptic {folder}: no export_report.json there nor in {folder / 'export'}; "
                                "expected a folder written by `kseg export --run RUN` for a panoptic run")
    report = json.loads(report_path.read_text())
    if report.get("task") != "panoptic":
        raise ValueError(f"--panoptic {folder}: {report_path} says task {report.get('task')!r}; expected \"panoptic\" "
                         "(a Panoptic FPN or MaskFormer; add a Mask R-CNN with --instance-model)")
    listed = list(report.get("variants", {}))
    variants = listed if variants is None else list(variants)
    unknown = [v for v in variants if v not in listed]
    if unknown or not variants:
        raise ValueError(f"--panoptic-variants {','.join(variants)}: {report_path} lists {', '.join(listed)}")
    sources = {v: folder / f"{report['model']}_{v}.tflite" for v in variants}
    for variant, path in sources.items():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {report_path} lists variant {variant!r}")
    try:
        categories, _ = read_categories(next(iter(sources.values())), labels)
    except InputError as e:
        raise ValueError(str(e).replace("--labels", "--panoptic-labels").replace("--model", "--panoptic")) from None
    name = name or report["model"]
    out = Path(models_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for variant, path in sources.items():
        files[variant] = f"{name}_{variant}.tflite"
        content = int32_outputs(path.read_bytes(), path)
        panoptic_outputs(content, path)
        with atomic_path(out / files[variant]) as tmp:
            Path(tmp).write_bytes(content)
    write_panoptic_sidecar(out, title or name, files, categories)
    return out
