"""What the browser demo's two detector kinds (instance: Mask R-CNN; panoptic: Panoptic FPN,
MaskFormer) share: converting a model into variant files, and reading a variant file back by
its one signature."""

from pathlib import Path

import numpy as np


def write_detector_variants(model, out, name, variants, calibration, finish):
    """Converts a detector into each variant and writes `<name>_<variant>.tflite` into `out`.

    Args:
        model: the Keras detector. out: the folder (made if absent). name: the file stem.
        variants: any of export.tflite.VARIANTS; int8 reuses the fp32 bytes when "fp32" comes first.
        calibration: for "int8": float32 images [N, H, W, 3] at the model's size (real ones).
        finish: (content, path) -> content: checks a variant's bytes (and may rewrite them)
            before they are written, raising ValueError on a graph the page cannot run.

    Returns:
        {variant: file name}, each file written atomically.
    """
    from export.tflite import VARIANTS, detector_tflite
    from kseg.utils import atomic_path

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variants {list(variants)}: expected one or more of {', '.join(VARIANTS)}")
    if "int8" in variants and (calibration is None or len(calibration) == 0):
        raise ValueError("calibration: the int8 variant needs real images [N, H, W, 3] to calibrate on; got none")
    representative = None if calibration is None else [np.asarray(c, np.float32)[None] for c in calibration]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, fp32 = {}, None
    for variant in variants:
        content = detector_tflite(model, variant, representative=representative, float_model=fp32)
        fp32 = content if variant == "fp32" else fp32
        files[variant] = f"{name}_{variant}.tflite"
        content = finish(content, out / files[variant])
        with atomic_path(out / files[variant]) as tmp:
            Path(tmp).write_bytes(content)
    return files


def read_variant(export_dir, sidecar, kind, variant, file):
    """One variant file that a model folder's sidecar names.

    Args:
        export_dir: the model folder. sidecar: its sidecar's name, for errors.
        kind: "instance" or "panoptic", for errors. variant, file: the sidecar's entry.

    Returns:
        (path, content: the bytes, info: export.runtime.describe of them).

    Raises:
        FileNotFoundError: the file is absent.
    """
    from export import runtime

    export_dir = Path(export_dir)
    path = export_dir / str(file or "")
    if not file or not path.is_file():
        raise FileNotFoundError(f"{path} not found: {export_dir / sidecar} names it as the {kind} model's "
                                f"{variant} file.")
    content = path.read_bytes()
    return path, content, runtime.describe(content)


def entry_fields(path, info, models_dir, extra, task, variant):
    """The fields every detector entry of the index starts with (export.webdemo's docstring)."""
    return {"name": path.stem, "task": task, "title": extra.get("title", path.stem), "variant": variant,
            "file": path.relative_to(models_dir).as_posix(), "size_bytes": info["size_bytes"]}


def signature_details(content, name, what):
    """{output name: LiteRT output details} of a `.tflite`'s one signature.

    Args:
        content: the `.tflite` bytes. name: the file, for errors. what: the model expected, for
            errors (e.g. "a Mask R-CNN").

    Raises:
        ValueError: not exactly one signature.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(f"{name}: {len(signatures)} signatures; expected one ({what} exported at batch 1)")
    return interpreter.get_signature_runner().get_output_details()


def float_tensors(details, keys):
    """{key: {"shape", "dtype", "quantization": None}} of the named outputs, for an index entry."""
    return {key: {"shape": [int(d) for d in details[key]["shape"]], "dtype": np.dtype(details[key]["dtype"]).name,
                  "quantization": None} for key in keys}
