"""Prediction of detection runs: one image of any size in its own pixels, and the files
`kseg predict` writes (instance overlays + JSON with RLE masks; panoptic pictures + COCO panoptic)."""

import os

import keras
import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils

from kseg import data as kdata
from kseg import viz
from kseg.data.panoptic import write_coco_panoptic
from kseg.training.detection_eval import predicted_segments
from kseg.training.detection_runs import (
    load_instance_model,
    load_instance_run,
    load_panoptic_model,
    load_panoptic_run,
)
from kseg.utils import progress, write_json


def forward_one_image(model, image, forward=None):
    """The model's outputs (NumPy, batch 1) for one image of any size, resized to the model's
    input size as in training (bilinear antialiased)."""
    image = np.asarray(image, np.float32)
    size = tuple(model.image_size)
    batch = np.asarray(kdata.resize_image(image, size) if image.shape[:2] != size else image)[None]
    forward = forward or (lambda images: model(images, training=False))
    return {k: np.asarray(v) for k, v in forward(batch).items()}


def _forward(model):
    return tf.function(lambda batch: model(batch, training=False), reduce_retracing=True, autograph=False)


def predict_image(model, image, forward=None):
    """Detections of one image of any size, in its own pixels.

    The image is resized to the model's input size as in training; boxes are scaled back,
    and the masks' probabilities are resized bilinearly to the image size before the 0.5
    threshold.

    Args:
        model: a MaskRCNN.
        image: float or uint8 [H, W, 3] raw pixels.
        forward: images -> outputs; default `model(images, training=False)`.

    Returns:
        {"boxes" float32 [D, 4] (y1, x1, y2, x2) px, "scores" [D], "classes" int32 [D] 1..K,
        "masks" bool [D, H, W]} with D = num_detections, best first.
    """
    height, width = np.shape(image)[:2]
    size = tuple(model.image_size)
    out = {k: v[0] for k, v in forward_one_image(model, image, forward).items()}
    n = int(out["num_detections"])
    masks = out["masks"][:n]
    if n and (height, width) != size:
        masks = np.asarray(tf.image.resize(masks.transpose(1, 2, 0), (height, width), method="bilinear"))
        masks = masks.transpose(2, 0, 1)
    scale = np.array([height / size[0], width / size[1]] * 2, np.float32)
    return {"boxes": out["boxes"][:n] * scale, "scores": out["scores"][:n],
            "classes": out["classes"][:n].astype(np.int32), "masks": masks.reshape(n, height, width) >= 0.5}


def predict_instances(run_dir_or_model, images, output_dir, categories=None, score_threshold=0.5, model_path=None,
                      verbose=1):
    """Writes `<stem>_instances.png` (overlay) and `<stem>_instances.json` per image.

    The JSON holds the detections with score >= `score_threshold`, best first: "boxes"
    [[y1, x1, y2, x2]] pixels, "classes" (1..K), "labels" (names), "scores" and "masks" as
    COCO RLE {"size": [H, W], "counts": str} (`pycocotools.mask.decode` reads them back),
    plus "image", "height", "width", "score_threshold".

    Args:
        run_dir_or_model: an instance run folder (model and category names from it) or a MaskRCNN.
        images: image file paths.
        output_dir: created if missing; files are written atomically.
        categories: [K] dicts {"id", "name"}; default the run's, or "class k".
        score_threshold: detections below it are left out of both files.
        model_path: with a run folder, the model file (default best.keras).

    Returns:
        {image path: (png path, json path)}.
    """
    model = run_dir_or_model if isinstance(run_dir_or_model, keras.Model) else None
    if model is None:
        categories = categories or load_instance_run(run_dir_or_model)["categories"]
        model = load_instance_model(run_dir_or_model, model_path)
    categories = categories or [{"id": k, "name": f"class {k}"} for k in range(1, model.num_classes + 1)]
    names = {c["id"]: c["name"] for c in categories}
    forward = _forward(model)
    os.makedirs(output_dir, exist_ok=True)
    written = {}
    for path in progress(images, desc="predict") if verbose else images:
        image = kdata.read_image(path, channels=3)
        found = predict_image(model, image, forward)
        keep = found["scores"] >= score_threshold
        found = {k: v[keep] for k, v in found.items()}
        stem = os.path.splitext(os.path.basename(path))[0]
        png, record = (os.path.join(output_dir, f"{stem}_instances.{ext}") for ext in ("png", "json"))
        viz.save_png(png, viz.instance_overlay(image, found["masks"], found["classes"], found["scores"], found["boxes"],
                                               labels=names, score_threshold=score_threshold))
        rles = mask_utils.encode(np.asfortranarray(found["masks"].transpose(1, 2, 0).astype(np.uint8)))
        write_json(record, {
            "image": os.path.abspath(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
            "score_threshold": score_threshold, "box_format": "y1, x1, y2, x2 pixels",
            "boxes": [[round(float(v), 2) for v in box] for box in found["boxes"]],
            "classes": [int(c) for c in found["classes"]],
            "labels": [names.get(int(c), f"class {c}") for c in found["classes"]],
            "scores": [float(s) for s in found["scores"]],
            "masks": [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles],
        })
        written[path] = (png, record)
    return written


def predict_panoptic_image(model, image, forward=None):
    """The panoptic segmentation of one image of any size, in its own pixels.

    The image is resized to the model's input size as in training; the id map comes back
    nearest (segment areas are recounted at the image's size, and a segment that vanishes
    there is dropped).

    Returns:
        (panoptic int32 [H, W], segments {id: {"category_id", "isthing", "score", "area"}}).
    """
    height, width = np.shape(image)[:2]
    size = tuple(model.image_size)
    outputs = forward_one_image(model, image, forward)
    panoptic, segments = outputs["panoptic"][0].astype(np.int32), predicted_segments(outputs)
    if (height, width) != size:
        panoptic = np.asarray(tf.image.resize(panoptic[..., None], (height, width), method="nearest"))[..., 0]
    ids, areas = np.unique(panoptic, return_counts=True)
    area = dict(zip(ids.tolist(), areas.tolist()))
    segments = {sid: {**info, "area": area[sid]} for sid, info in segments.items() if sid in area}
    return panoptic.astype(np.int32), segments


def predict_panoptic(run_dir_or_model, images, output_dir, categories=None, model_path=None, verbose=1):
    """Writes a picture and a COCO panoptic prediction of each image.

    Files in `output_dir`: `<stem>_panoptic.png` (`viz.panoptic_overlay`: stuff by category,
    things by instance with white outlines and "name score" labels), and the COCO panoptic
    format: `panoptic/<stem>.png` id maps and `panoptic.json` (segments_info with kseg's
    category ids, "score", and the categories with their "coco_id"), written last, so it
    never names a PNG that is not there (`kseg.metrics.evaluate_panoptic_folders` scores it).

    Args:
        run_dir_or_model: a panoptic run folder (model and categories from it), or a PanopticFPN
            or MaskFormer.
        images: image file paths.
        output_dir: created if missing; files are written atomically.
        categories: kseg categories; default the run's, or "class k" / "stuff s".
        model_path: with a run folder, the model file (default best.keras).

    Returns:
        {"pictures": {image path: png path}, "json": panoptic.json path}.
    """
    model = run_dir_or_model if isinstance(run_dir_or_model, keras.Model) else None
    if model is None:
        categories = categories or load_panoptic_run(run_dir_or_model)["categories"]
        model = load_panoptic_model(run_dir_or_model, model_path)
    categories = categories or (
        [{"id": k, "name": f"class {k}", "isthing": 1} for k in range(1, model.num_classes + 1)]
        + [{"id": model.num_classes + s, "name": f"stuff {s}", "isthing": 0}
           for s in range(1, model.num_stuff_classes + 1)])
    forward = _forward(model)
    os.makedirs(output_dir, exist_ok=True)
    pictures = {}

    def predictions():
        for i, path in enumerate(progress(images, desc="predict") if verbose else images):
            image = kdata.read_image(path, channels=3)
            panoptic, segments = predict_panoptic_image(model, image, forward)
            stem = os.path.splitext(os.path.basename(path))[0]
            pictures[path] = os.path.join(output_dir, f"{stem}_panoptic.png")
            viz.save_png(pictures[path], viz.panoptic_overlay(image, panoptic, segments, categories))
            yield {"image_id": i, "file_name": f"{stem}.png", "image_file_name": os.path.basename(path),
                   "panoptic": panoptic,
                   "segments": {sid: {"category_id": s["category_id"], "iscrowd": 0, "score": round(s["score"], 4)}
                                for sid, s in segments.items()}}

    json_path = os.path.join(output_dir, "panoptic.json")
    write_coco_panoptic(predictions(), json_path, os.path.join(output_dir, "panoptic"), categories=categories)
    return {"pictures": pictures, "json": json_path}
