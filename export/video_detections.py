"""demo-video for kseg's detectors: Mask R-CNN instances and Panoptic FPN / MaskFormer panoptic maps.

A detector's `.tflite` (export.tflite.detector_tflite, any variant: fp32, fp16, dynamic, int8)
takes the float32 image [1, H, W, 3] (raw pixels) and returns the model's output dict as named
signature outputs. demo-video finds the names in the file's signature, scales what the model
drew at its input size to the video frame, and draws it with kseg.viz: "instances" (each
detection's mask in its own colour, its outline, box and "name 0.93" label) or "panoptic"
(stuff by category, things by instance, thing outlines and labels). Panoptic FPN has both.

Shapes (D detection slots, N segment slots, h x w the model's input, H x W the frame):
    boxes            float [1, D, 4] (y1, x1, y2, x2) pixels of the model's input
    scores           float [1, D]
    classes          int [1, D] category ids 1..K, 0 pads
    masks            float [1, D, h, w] probabilities, pasted at the input size
    num_detections   int [1]
    panoptic         int [1, h, w] segment ids, 0 void, segments 1..num_segments
    segment_category int [1, N]; segment_is_thing bool [1, N]; segment_score float [1, N]
    num_segments     int [1]
    frame            uint8 [H, W, 3] RGB

Class names: --labels (names for ids 1, 2, ... or a JSON file: a kseg run.json, a list of
{"id", "name"} categories or a list of names), else the "categories" of export_report.json
beside the model, of run.json beside it or of run.json in its parent folder (`kseg export
--run RUN` writes RUN/export/). numpy, Pillow and kseg.viz only: no TensorFlow.
"""

import json
from pathlib import Path

import numpy as np

from export import runtime
from export.frames import InputError

INSTANCE_OUTPUTS = ("boxes", "scores", "classes", "masks", "num_detections")
PANOPTIC_OUTPUTS = ("panoptic", "segment_category", "segment_is_thing", "segment_score", "num_segments")
DETECTOR_EFFECTS = ("instances", "panoptic")
# Names only kseg's detectors give an output: a model with any of them is read as a detector.
_DETECTOR_NAMES = set(INSTANCE_OUTPUTS + PANOPTIC_OUTPUTS) | {"segment_area", "semantic_logits", "class_probs",
                                                             "mask_logits"}
SCORE_THRESHOLD = 0.5  # detections below it are not drawn (demo-video and the web demo)
MASK_THRESHOLD = 0.5  # a frame pixel is in a detection where its upsampled mask probability is at least this
ALPHA = 0.5  # weight of the instance or segment colour


def signature_outputs(content, name):
    """{signature output name: tensor index} of a `.tflite`'s one signature, {} when it has none.

    Args:
        content: the verified `.tflite` bytes.
        name: the file, for errors.

    Raises:
        InputError: more than one signature.
    """
    model = runtime.parse_model(content)
    signatures = model.signatureDefs or []
    if len(signatures) > 1:
        raise InputError(f"{name}: {len(signatures)} signatures; expected one (a model exported at batch 1)")
    return runtime.signature_outputs(model)


def detector_effects(outputs, name):
    """The effects a detector's named outputs support ("instances", "panoptic"), () for a segmenter.

    Args:
        outputs: {name: tensor index} (`signature_outputs`).
        name: the file, for errors.

    Raises:
        InputError: some of kseg's detector output names but neither complete set.
    """
    names = set(outputs)
    if not names & _DETECTOR_NAMES:
        return ()
    supported = tuple(effect for effect, needed in zip(DETECTOR_EFFECTS, (INSTANCE_OUTPUTS, PANOPTIC_OUTPUTS))
                      if set(needed) <= names)
    if not supported:
        raise InputError(f"{name}: outputs {sorted(names)}; expected a kseg detector's: {', '.join(INSTANCE_OUTPUTS)} "
                         f"(Mask R-CNN) or {', '.join(PANOPTIC_OUTPUTS)} (Panoptic FPN, MaskFormer)")
    return supported


def check_shapes(details, input_size, name):
    """InputError unless the named outputs have the shapes of the module docstring.

    Args:
        details: {output name: tensor detail} of the outputs demo-video reads.
        input_size: (h, w) of the model's image input.
        name: the file, for errors.
    """
    h, w = input_size
    d = details.get("scores", details.get("segment_category"))
    slots = int(d["shape"][1]) if d is not None and len(d["shape"]) == 2 else None
    expected = {"boxes": [1, slots, 4], "scores": [1, slots], "classes": [1, slots], "masks": [1, slots, h, w],
                "num_detections": [1], "panoptic": [1, h, w], "num_segments": [1]}
    segments = details.get("segment_category")
    for key in ("segment_category", "segment_is_thing", "segment_score"):
        expected[key] = None if segments is None else list(segments["shape"])
    for key, detail in details.items():
        shape = [int(v) for v in detail["shape"]]
        want = expected.get(key)
        if want is not None and (shape != want or (key.startswith("segment_") and len(shape) != 2)):
            raise InputError(f"{name}: output {key!r} has shape {shape}; expected {want}"
                             + (" (masks pasted at the input size: a model with paste_masks=True)"
                                if key == "masks" else ""))


def read_categories(model_path, labels=None):
    """The detector's categories [{"id", "name"}] and where they came from (module docstring).

    Args:
        model_path: the `.tflite` file.
        labels: --labels: "name,name,..." (ids 1, 2, ...) or a JSON file; None looks beside the model.

    Returns:
        (categories, source): a list of {"id": int, "name": str}, and the file or "--labels".

    Raises:
        InputError: `labels` unreadable, or none given and none found beside the model.
    """
    if labels is not None:
        path = Path(labels)
        if path.suffix.lower() == ".json" or path.is_file():
            return _categories_in(path, "--labels"), str(path)
        names = [n.strip() for n in str(labels).split(",")]
        if not all(names):
            raise InputError(f"--labels {labels!r}: an empty name; expected NAME,NAME,... (class ids 1, 2, ...) or a "
                             "JSON file")
        return [{"id": i, "name": n} for i, n in enumerate(names, start=1)], "--labels"
    folder = Path(model_path).resolve().parent
    candidates = (folder / "export_report.json", folder / "run.json", folder.parent / "run.json")
    for path in candidates:
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("categories"), list):
                return _categories_in(path, "--model's"), str(path)
    raise InputError(f"--model {model_path}: a detector without class names: no \"categories\" in "
                     f"{', '.join(str(p) for p in candidates)}; expected --labels NAME,NAME,... (class ids 1, 2, ...) "
                     "or --labels RUN/run.json")


def _categories_in(path, flag):
    """The categories a JSON file lists (a run.json or report with "categories", [{"id", "name"}] or names)."""
    if not path.is_file():
        raise InputError(f"{flag} {path}: no such file; expected a kseg run.json or a JSON list of class names")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{flag} {path}: cannot read it as JSON ({e})") from None
    items = data.get("categories") if isinstance(data, dict) else data
    if isinstance(items, list) and items and all(isinstance(n, str) for n in items):
        return [{"id": i, "name": n} for i, n in enumerate(items, start=1)]
    if (isinstance(items, list) and items and all(isinstance(c, dict) and isinstance(c.get("id"), int)
                                                  and isinstance(c.get("name"), str) for c in items)):
        return [{"id": c["id"], "name": c["name"]} for c in items]
    raise InputError(f"{flag} {path}: found {type(items).__name__} {str(items)[:80]}; expected a \"categories\" "
                     "list of {\"id\", \"name\"} (a kseg run.json), such a list, or a list of names")


def named_outputs(arrays, details, indices):
    """{name: array without its batch axis} of a Runner's raw outputs, quantized ones dequantized.

    Args:
        arrays: Runner.run's list; details: Runner.outputs (the same order).
        indices: {name: tensor index} (`signature_outputs`).
    """
    position = {int(d["index"]): i for i, d in enumerate(details)}
    out = {}
    for key, index in indices.items():
        i = position[index]
        a = arrays[i]
        out[key] = (runtime.dequantize(a, details[i]) if details[i]["quantization"][0] else a)[0]
    return out


def _resize(plane, size, resample):
    """A 2-D float32 or int32 array resized by Pillow to `size` (W, H)."""
    from PIL import Image

    return np.asarray(Image.fromarray(plane).resize(size, resample))


def instances_at(outputs, frame_size, score_threshold=SCORE_THRESHOLD, mask_threshold=MASK_THRESHOLD):
    """The detections to draw, at the frame's size: what `draw_instances` takes.

    Args:
        outputs: `named_outputs` of a detector (boxes [D, 4], scores [D], classes [D], masks
            [D, h, w], num_detections []).
        frame_size: (H, W).
        score_threshold: detections scoring below it are dropped.
        mask_threshold: a pixel is in a detection where its mask, upsampled bilinearly to the
            frame, is at least this.

    Returns:
        {"masks": bool [n, H, W], "classes" int [n], "scores" float [n], "boxes" float [n, 4]
        frame pixels}, the kept detections in slot order.
    """
    from PIL import Image

    height, width = frame_size
    h, w = outputs["masks"].shape[1:]
    count = int(np.asarray(outputs["num_detections"]).reshape(()))
    scores, classes = np.asarray(outputs["scores"], np.float64), np.asarray(outputs["classes"]).astype(np.int64)
    keep = np.flatnonzero((np.arange(len(scores)) < count) & (classes > 0) & (scores >= score_threshold))
    masks = np.zeros((len(keep), height, width), bool)
    for row, i in enumerate(keep):
        probability = np.asarray(outputs["masks"][i], np.float32)
        masks[row] = _resize(probability, (width, height), Image.BILINEAR) >= mask_threshold
    boxes = np.asarray(outputs["boxes"], np.float64)[keep] * [height / h, width / w, height / h, width / w]
    return {"masks": masks, "classes": classes[keep], "scores": scores[keep], "boxes": boxes}


def draw_instances(frame, instances, categories):
    """kseg.viz.instance_overlay of `instances_at`'s detections: uint8 [H, W, 3], the same pixels.

    The tint and outline of each mask are drawn here on its bounding box only (lowest score first,
    as instance_overlay does; on a 640 x 480 frame about twice as fast as its whole-frame boolean
    indexing); instance_overlay then adds the boxes and labels to that picture, given empty masks.
    """
    from kseg.viz import instance_colors, instance_overlay, mask_outline

    masks, scores = instances["masks"], instances["scores"]
    colors = instance_colors(len(masks))
    out = np.asarray(frame).astype(np.float32)
    for i in np.argsort(scores, kind="stable"):
        area = _box_of(masks[i])
        if area is None:
            continue
        m, sub = masks[i][area], out[area]
        np.copyto(sub, (1.0 - ALPHA) * sub + ALPHA * colors[i], where=m[..., None])
        sub[mask_outline(m)] = colors[i]
    names = {c["id"]: c["name"] for c in categories}
    return instance_overlay(_rounded(out), np.zeros_like(masks), instances["classes"], scores, instances["boxes"],
                            labels=names, alpha=ALPHA, score_threshold=-np.inf)


def _box_of(mask):
    """The slices of `mask`'s bounding box grown by one pixel (within the frame), or None when it is empty:
    mask_outline on that crop is mask_outline on the frame (a pixel outside the mask surrounds it)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return None
    return (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))


def _rounded(picture):
    """float32 [H, W, 3] in [0, 255] -> uint8, rounded half to even: kseg.viz's rounding, without its
    float64 copy."""
    return np.rint(picture, out=picture).astype(np.uint8)


def panoptic_at(outputs, frame_size):
    """The panoptic map at the frame's size and its segments: what `draw_panoptic` takes.

    Args:
        outputs: `named_outputs` of a panoptic model (panoptic [h, w], segment_category [N],
            segment_is_thing [N], segment_score [N], num_segments []).
        frame_size: (H, W).

    Returns:
        {"panoptic": int32 [H, W] (nearest-neighbour), "segments": {id: {"category_id",
        "isthing", "score"}} for ids 1..num_segments}.
    """
    from PIL import Image

    height, width = frame_size
    count = int(np.asarray(outputs["num_segments"]).reshape(()))
    ids = np.asarray(outputs["panoptic"], np.int32)
    ids = np.where((ids > 0) & (ids <= count), ids, 0).astype(np.int32)
    segments = {k + 1: {"category_id": int(outputs["segment_category"][k]),
                        "isthing": bool(outputs["segment_is_thing"][k]),
                        "score": float(outputs["segment_score"][k])} for k in range(count)}
    return {"panoptic": _resize(ids, (width, height), Image.NEAREST), "segments": segments}


def draw_panoptic(frame, panoptic, categories):
    """kseg.viz.panoptic_overlay of `panoptic_at`'s map: stuff by category, things by instance, with
    outlines and labels; uint8 [H, W, 3]. Categories are coloured in id order."""
    from kseg.viz import panoptic_overlay

    ordered = sorted(categories, key=lambda c: c["id"])
    return panoptic_overlay(frame, panoptic["panoptic"], panoptic["segments"], ordered, alpha=ALPHA)


def object_count(drawn):
    """How many detections (`instances_at`) or segments (`panoptic_at`) a frame has."""
    return len(drawn["classes"]) if "classes" in drawn else len(drawn["segments"])
