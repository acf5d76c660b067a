"""Prediction behind `kseg predict`: class-id mask PNGs and colour overlays for image files."""

import os

import numpy as np
import tensorflow as tf

from kseg import data as kdata
from kseg import viz
from kseg.utils import ProgressBar


def predict_logits(model, image, image_size):
    """Logits [H0, W0, K] for one image [H0, W0, C] at its own size.

    The image is resized to the model's `image_size` exactly as in training, and the logits
    are resized back bilinearly before the argmax, so masks follow object edges at full size.
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    resized = kdata.resize_image(tf.convert_to_tensor(image), image_size)
    logits = model(resized[None], training=False)[0]
    if (height, width) != tuple(logits.shape[:2]):
        logits = tf.image.resize(logits, (height, width), method="bilinear")
    return logits.numpy()


def predict_files(model, paths, output_dir, *, image_size, channels, num_classes, ignore_class=None,
                  class_palette=None, verbose=1):
    """Writes `<stem>_mask.png` (palette PNG of class ids) and `<stem>_overlay.png` per image.

    Args:
        model: maps [1, H, W, C] images in [0, 255] to logits.
        paths: image files.
        output_dir: created if missing; files are written atomically.
        image_size, channels: the model's input (H, W) and channel count.
        num_classes: K, for the colour palette.
        class_palette: [K, 3] colours, default `kseg.viz.palette(K)`.

    Returns:
        {input path: (mask path, overlay path)}.
    """
    os.makedirs(output_dir, exist_ok=True)
    colors = np.asarray(class_palette) if class_palette is not None else viz.palette(num_classes, ignore_class)
    written = {}
    bar = ProgressBar(total=len(paths), desc="predict") if verbose else None
    for path in paths:
        image = kdata.read_image(path, channels=channels)
        mask = predict_logits(model, image, image_size).argmax(-1).astype(np.uint8)
        stem = os.path.splitext(os.path.basename(path))[0]
        mask_path = os.path.join(output_dir, f"{stem}_mask.png")
        overlay_path = os.path.join(output_dir, f"{stem}_overlay.png")
        viz.save_mask_png(mask_path, mask, palette=colors)
        viz.save_png(overlay_path, viz.overlay(image, mask, palette=colors, alpha=0.45, outline=True))
        written[path] = (mask_path, overlay_path)
        if bar:
            bar.update()
    if bar:
        bar.close()
    return written
