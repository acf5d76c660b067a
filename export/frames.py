"""The image pipeline of the edge tools: an image in; the model's tensor, class maps and scores out.

`kseg bench` (end-to-end timing) and `kseg demo-video` (every frame of a video) share it;
export.effects draws demo-video's AR-style effects on the scores. Like export.runtime, it
imports no TensorFlow or Keras: numpy, Pillow and LiteRT only.

Shapes:
    image         PIL image, or uint8 [H, W, 3] RGB frame (video)
    detail        the model's image input: [1, h, w, C] with C 1, 3 or 4 (export.runtime)
    outputs       raw model outputs: logits or probabilities [1, h, w, K] (float or
                  quantized), or a class map [1, h, w] (int) with a confidence map [1, h, w]
    class map     int64 [h, w], class ids at the model's resolution
    probabilities float32 [h, w, K], per-class scores in [0, 1] at the model's resolution
"""

import time
from pathlib import Path

import numpy as np

from export import runtime


class InputError(ValueError):
    """A bad input file or flag of an edge tool: reported as one line, exit code 2."""


def existing_file(path, kind):
    """`path` as a Path; InputError unless it names a file ("{path}: no such {kind}")."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such {kind}")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected {kind}")
    return path


def load_image(path):
    """The image at `path`, decoded; InputError naming the file if Pillow cannot read it."""
    from PIL import Image

    path = existing_file(path, "image file")
    try:
        image = Image.open(path)
        image.load()
    except Exception as e:  # not an image, truncated, corrupt, a decompression bomb (Image.MAX_IMAGE_PIXELS), ...
        raise InputError(f"{path}: Pillow cannot read this image ({type(e).__name__}: {e})") from e
    return image


def default_image():
    """The path of the embedded ISBI 2012 sample image, found by path (importing kseg.data would load TensorFlow)."""
    import kseg

    return Path(kseg.__file__).resolve().parent / "data" / "samples" / "isbi2012" / "image" / "0.png"


def normalization(metadata, channels=None):
    """(mean, std) from a model's metadata (runtime.read_metadata), or None: kseg models take raw pixels [0, 255].

    Args:
        metadata: runtime.read_metadata's dict, or None.
        channels: C of the image input, to check that mean and std have 1 or C values; None skips that check.

    Returns:
        None when the metadata gives neither mean nor std, else (mean, std) lists of floats.

    Raises:
        InputError: mean or std not finite, a zero std, or a count that is neither 1 nor C.
    """
    meta = metadata or {}
    given = [meta.get(k) for k in ("mean", "std")]
    if all(v is None or np.size(v) == 0 for v in given):
        return None
    mean, std = (np.asarray(v if v is not None and np.size(v) else default, np.float32).reshape(-1)
                 for v, default in zip(given, (0.0, 1.0)))
    counts = {1} | ({channels} if channels else {mean.size, std.size})
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and std.all() and {mean.size, std.size} <= counts):
        expected = f"1 or {channels}" if channels else "1 or C"
        raise InputError(f"the model's metadata has normalization mean {mean.tolist()} std {std.tolist()}; expected "
                         f"{expected} finite values each, std != 0")
    return mean.tolist(), std.tolist()


def class_count(model):
    """K of a segmenter (runtime.describe's dict): the score output's last dimension (1 counts
    as 2), else the number of labels in its metadata; None when unknown (a bare class map)."""
    for d in model["outputs"]:
        if len(d["shape"]) == 4 and d["shape"][0] == 1 and (d["dtype"].startswith("float") or d["quantization"][0]):
            return max(int(d["shape"][-1]), 2)
    labels = (model["metadata"] or {}).get("labels")
    return len(labels) if labels else None


def image_input(model):
    """The image input detail [1, H, W, C] (C 1, 3 or 4) of `model` (runtime.describe's dict), or (None, why not)."""
    inputs = model["inputs"]
    if len(inputs) != 1:
        return None, f"the model has {len(inputs)} inputs, not one image"
    shape = inputs[0]["shape"]
    if len(shape) != 4 or shape[0] != 1 or shape[3] not in (1, 3, 4):
        return None, f"input shape {list(shape)} is not an image [1, H, W, C]"
    return inputs[0], None


def prepare_image(image, detail, normalization=None):
    """A decoded PIL image -> the model's input tensor [1, H, W, C] in its dtype.

    Resizes bilinearly to the input size, converts to grey/RGB/RGBA by C, applies
    (x - mean) / std when the metadata gives them (kseg models take raw [0, 255] pixels),
    and quantizes for an integer input: round(x / scale + zero_point). For a consistently
    quantized uint8 model that is the raw pixel (what MediaPipe feeds), e.g. kseg's int8
    export (scale 1, zero point 0; int8 I/O: zero point -128), or mean = std = 127.5 with
    scale 1/127.5 and zero point 127.5.
    """
    from PIL import Image

    _, h, w, c = detail["shape"]
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    x = np.asarray(image.convert(mode).resize((w, h), Image.BILINEAR), dtype=np.float32).reshape(1, h, w, c)
    if normalization is not None:
        mean, std = (np.asarray(v, np.float32) for v in normalization)
        x = (x - mean) / std
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    if detail["quantization"][0]:
        return runtime.quantize(x, detail)
    info = np.iinfo(dtype)
    return np.clip(np.round(x), info.min, info.max).astype(dtype)


def _in_graph_class_map(outputs, details):
    """The model's own class map [h, w] (an integer output that is not quantized), or None."""
    for out, d in zip(outputs, details):
        squeezable = out.ndim == 3 or (out.ndim == 4 and out.shape[-1] == 1)
        if out.dtype.kind in "iu" and not d["quantization"][0] and squeezable and out.shape[0] == 1:
            return out.reshape(out.shape[1], out.shape[2]).astype(np.int64)
    return None


def _score_output(outputs, details):
    """The first [1, h, w, K] output, dequantized to float32 [h, w, K], or None."""
    for out, d in zip(outputs, details):
        if out.ndim == 4 and out.shape[0] == 1:
            return np.asarray(runtime.dequantize(out[0], d), np.float32)
    return None


def _no_segmentation(outputs):
    return ValueError(f"no output looks like a segmentation: shapes {[list(o.shape) for o in outputs]}")


def class_map(outputs, details, activation=None):
    """Class ids [H, W] (int64) and the number of classes from a segmenter's outputs.

    An integer output [1, H, W] or [1, H, W, 1] that is not quantized is taken as the
    model's own class map; otherwise the first [1, H, W, K] output is argmaxed (for K = 1,
    thresholded at 0.5 after a sigmoid/softmax activation or when its values lie in [0, 1]
    (as in `probabilities`), else at 0).
    """
    mask = _in_graph_class_map(outputs, details)
    if mask is not None:
        return mask, int(mask.max()) + 1 if mask.size else 1
    for out, d in zip(outputs, details):
        if out.ndim == 4 and out.shape[0] == 1:
            if out.shape[-1] == 1:
                x = runtime.dequantize(out[0], d)
                probability = activation in ("sigmoid", "softmax") or _looks_like_probabilities(x)
                return (x[..., 0] > (0.5 if probability else 0.0)).astype(np.int64), 2
            return out[0].argmax(-1).astype(np.int64), int(out.shape[-1])  # argmax is scale-free
    raise _no_segmentation(outputs)


def _class_sum(x):
    """x summed over its last (class) axis, a class plane at a time: numpy reduces a short
    last axis several times slower than it adds whole planes."""
    total = x[..., 0].copy()
    for k in range(1, x.shape[-1]):
        total += x[..., k]
    return total


def _softmax(x):
    top = x[..., 0].copy()
    for k in range(1, x.shape[-1]):
        np.maximum(top, x[..., k], out=top)
    e = np.exp(x - top[..., None])
    return e / _class_sum(e)[..., None]


def _looks_like_probabilities(x):
    if x.min() < 0.0 or x.max() > 1.0:
        return False
    return x.shape[-1] == 1 or bool(np.allclose(_class_sum(x), 1.0, atol=1e-2))


def probabilities(outputs, details, activation=None, num_classes=None):
    """Per-class scores float32 [h, w, K] in [0, 1] from any of kseg's output heads.

    Args:
        outputs: the model's raw outputs (Runner.run), quantized ones included.
        details: their tensor details (Runner.outputs).
        activation: the metadata's activation: "softmax" (the outputs are logits),
            "sigmoid", "none", or None (no metadata). With "none" or None, outputs that
            already lie in [0, 1] and sum to 1 are taken as they are; others get a softmax
            (or, for K = 1, a sigmoid).
        num_classes: K for a class-map head (default: the largest id + 1, at least 2).

    Returns:
        float32 [h, w, K]. A one-channel output p becomes [1 - p, p]. A class-map head
        gives its confidence c to the mapped class and (1 - c) / (K - 1) to each other,
        or a one-hot score without a confidence output; its argmax is the class map.

    Example:
        >>> plain = {"quantization": (0.0, 0)}
        >>> probabilities([np.zeros((1, 1, 1, 2), np.float32)], [plain], "softmax").tolist()
        [[[0.5, 0.5]]]
        >>> ids, confidence = np.array([[[1, 0]]], np.int32), np.array([[[0.9, 0.6]]], np.float32)
        >>> probabilities([ids, confidence], [plain, plain], num_classes=3).astype(float).round(2).tolist()
        [[[0.05, 0.9, 0.05], [0.6, 0.2, 0.2]]]
    """
    mask = _in_graph_class_map(outputs, details)
    if mask is not None:
        k = max(int(num_classes or 0), int(mask.max()) + 1 if mask.size else 1, 2)
        confidence = [runtime.dequantize(o, d) for o, d in zip(outputs, details)
                      if (o.dtype.kind == "f" or d["quantization"][0]) and o.size == mask.size]
        c = np.asarray(confidence[0], np.float32).reshape(mask.shape)[..., None] if confidence else np.float32(1.0)
        onehot = np.arange(k) == mask[..., None]
        return np.where(onehot, c, (1.0 - c) / (k - 1)).astype(np.float32)
    x = _score_output(outputs, details)
    if x is None:
        raise _no_segmentation(outputs)
    logits = activation == "softmax" or (activation in ("none", None) and not _looks_like_probabilities(x))
    if activation == "sigmoid" or (logits and x.shape[-1] == 1):
        x = 1.0 / (1.0 + np.exp(-x))
    elif logits:
        x = _softmax(x)
    if x.shape[-1] == 1:
        x = np.concatenate([1.0 - x, x], axis=-1)
    return x.astype(np.float32)


def segment_file(runner, image_path, detail, normalization=None, activation=None):
    """One end-to-end frame: decode, prepare, invoke, class map, overlay; returns (overlay, stage seconds)."""
    from PIL import Image

    from kseg.viz import overlay, palette

    t0 = time.perf_counter()
    image = Image.open(image_path)
    image.load()
    t1 = time.perf_counter()
    x = prepare_image(image, detail, normalization)
    t2 = time.perf_counter()
    outputs = runner.run(x)
    t3 = time.perf_counter()
    mask, num_classes = class_map(outputs, runner.outputs, activation)
    t4 = time.perf_counter()
    full = np.asarray(Image.fromarray(mask.astype(np.int32)).resize(image.size, Image.NEAREST))
    picture = overlay(np.asarray(image.convert("RGB")), full, palette(max(num_classes, int(full.max()) + 1)))
    t5 = time.perf_counter()
    return picture, {"decode": t1 - t0, "preprocess": t2 - t1, "invoke": t3 - t2, "postprocess": t4 - t3, "overlay": t5 - t4}
