"""demo-video's AR-style effects: a segmentation drawn on a video frame (blur, replace, classes, outlines).

Class 0 is the background. The web demo draws the same effects in the browser. numpy and
Pillow only (regions and outlines are found with numpy, not scipy): no TensorFlow, no LiteRT.

Shapes:
    frame    uint8 [H, W, 3] RGB
    scores   float [h, w, K] class probabilities (export.frames.probabilities), or integer
             [h, w] class ids, at the model's resolution
"""

from pathlib import Path

import numpy as np

from export.frames import InputError, load_image


EFFECTS = ("blur", "replace", "classes", "outlines")
DEFAULT_BACKGROUND = (0, 177, 64)  # chroma-key green


def color_or_image(text):
    """An RGB colour ("#00b140", "0,177,64", a CSS name such as "green") or the image file
    `text` names (uint8 [H, W, 3]); InputError when it is neither."""
    from PIL import ImageColor

    path = Path(text)
    if path.is_file() or path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"):
        return np.asarray(load_image(path).convert("RGB"))
    parts = text.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        return tuple(int(p) for p in parts)
    try:
        return ImageColor.getrgb(text.strip())[:3]
    except ValueError:
        raise InputError(f"{text!r}: neither an image file nor a colour; expected #RRGGBB, R,G,B (0-255 each) or "
                         "a colour name such as green") from None


def _resize(plane, size, resample):
    """A 2-D array resized to `size` (W, H) by Pillow: BILINEAR for float32, NEAREST for ids."""
    from PIL import Image

    return np.asarray(Image.fromarray(plane).resize(size, resample))


def _blurred(frame, radius):
    """Gaussian blur of uint8 [H, W, 3] as float32. A wide blur (radius >= 6 px) is done on a copy
    box-shrunk by s = radius // 3 with radius / s and scaled back bilinearly: it looks the same
    (the blur removes what the shrink loses; within ~1 level on average) for s^2 less work."""
    from PIL import Image, ImageFilter

    image = Image.fromarray(frame)
    shrink = int(radius // 3)
    if shrink < 2:
        return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float32)
    small = image.resize((max(1, image.width // shrink), max(1, image.height // shrink)), Image.BOX)
    small = small.filter(ImageFilter.GaussianBlur(radius / shrink))
    return np.asarray(small.resize(image.size, Image.BILINEAR), np.float32)


def _blend(front, back, alpha):
    """alpha * front + (1 - alpha) * back, rounded: uint8 [H, W, 3]."""
    return np.rint(back + alpha[..., None] * (front - back)).astype(np.uint8)


def apply_effect(frame, scores, effect, palette=None, labels=None, background=DEFAULT_BACKGROUND,
                 blur_radius=None, min_area=None, thickness=None):
    """Draws an AR-style effect of a segmentation on a video frame; class 0 is the background.

    Args:
        frame: uint8 [H, W, 3] RGB.
        scores: float [h, w, K] class probabilities (export.frames.probabilities), or integer [h, w]
            class ids, at any resolution (they are resized to the frame).
        effect: "blur": the background blurred (Gaussian, `blur_radius`, default
            max(H, W) / 50 pixels) behind a sharp foreground, blended by the foreground
            probability 1 - p0 upsampled bilinearly (soft edges). "replace": the background
            replaced by `background`, blended by the foreground mask (class != 0) upsampled
            bilinearly: soft across one model pixel, exact elsewhere. "classes": class
            colours at alpha 0.5 over the frame (kseg.viz.overlay), class 0 clear.
            "outlines": every 4-connected region of a class other than 0 with at least
            `min_area` pixels (default 0.5 % of the frame) gets an outline `thickness` pixels
            wide (default min(H, W) / 256, at least 1) inside its border, in its class colour,
            and its label at its centroid. Regions are found at the frame's size, after a
            nearest-neighbour resize of the class map.
        palette: [K', 3] class colours (default kseg.viz.palette, enough for every id).
        labels: class names (default "class k").
        background: "replace": an RGB colour, or uint8 [H, W, 3] (another size is resized).
        blur_radius, min_area, thickness: see `effect`.

    Returns:
        uint8 [H, W, 3].

    Example:
        >>> frame = np.full((2, 4, 3), 200, np.uint8)
        >>> apply_effect(frame, np.array([[0, 1]]), "replace", background=(0, 0, 0))[..., 0].tolist()
        [[0, 50, 150, 200], [0, 50, 150, 200]]
    """
    from PIL import Image

    from kseg.viz import overlay, palette as make_palette

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 [H, W, 3] RGB, got shape {frame.shape} dtype {frame.dtype}")
    if effect not in EFFECTS:
        raise ValueError(f"effect {effect!r}: expected one of {', '.join(EFFECTS)}")
    scores = np.asarray(scores)
    if scores.dtype.kind not in "iub" and scores.ndim != 3:
        raise ValueError(f"scores must be float [h, w, K] probabilities or integer [h, w] ids, got shape {scores.shape}")
    height, width = frame.shape[:2]
    ids = scores.dtype.kind in "iub"
    classes = None if effect == "blur" else scores.astype(np.int64) if ids else scores.argmax(-1)
    if effect in ("blur", "replace"):
        if effect == "blur":
            foreground = scores != 0 if ids else 1.0 - scores[..., 0]
            radius = max(width, height) / 50 if blur_radius is None else blur_radius
            back = _blurred(frame, radius)
        else:
            foreground = classes != 0
            back = np.asarray(background, np.float32)
            if back.ndim == 3 and back.shape[:2] != (height, width):
                back = np.asarray(Image.fromarray(back.astype(np.uint8)).resize((width, height), Image.BILINEAR),
                                  np.float32)
        alpha = _resize(np.asarray(foreground, np.float32), (width, height), Image.BILINEAR)
        return _blend(frame.astype(np.float32), back, np.clip(alpha, 0.0, 1.0))
    full = _resize(classes.astype(np.int32), (width, height), Image.NEAREST).astype(np.int64)
    colors = make_palette(max(int(full.max()) + 1, len(palette) if palette is not None else 0, 2))
    if palette is not None:
        colors[: len(palette)] = palette
    if effect == "classes":
        return overlay(frame, full, colors, alpha=0.5)
    return _outlines(frame, full, colors, labels, min_area, thickness)


def _outlines(frame, classes, colors, labels, min_area, thickness):
    """The "outlines" effect on full-size class ids [H, W] (see `apply_effect`)."""
    from PIL import Image, ImageDraw

    from kseg.viz.overlay import draw_text, font, text_size

    height, width = classes.shape
    min_area = max(1, height * width // 200) if min_area is None else min_area
    thickness = max(1, round(min(height, width) / 256)) if thickness is None else thickness
    regions = np.zeros(classes.shape, np.int64)  # 0: background or too small; k: region k
    owner = [0]  # the class of region k
    for c in np.unique(classes):
        if c == 0:
            continue
        ids, count = label_regions(classes == c)
        regions[ids > 0] = ids[ids > 0] + len(owner) - 1
        owner += [int(c)] * count
    owner = np.asarray(owner)
    area = np.bincount(regions.ravel(), minlength=len(owner))
    kept = area >= min_area
    kept[0] = False
    regions[~kept[regions]] = 0
    # Inside a region, within `thickness` pixels (chessboard) of a pixel of another region.
    edge = (regions > 0) & ((square_filter(regions, thickness, np.maximum) != regions)
                            | (square_filter(regions, thickness, np.minimum) != regions))
    out = frame.copy()
    out[edge] = colors[owner[regions[edge]]]
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    fnt = font(max(10, min(height, width) // 32))
    rows, cols = np.indices(regions.shape)
    cy = np.bincount(regions.ravel(), rows.ravel(), len(owner)) / np.maximum(area, 1)
    cx = np.bincount(regions.ravel(), cols.ravel(), len(owner)) / np.maximum(area, 1)
    for k in np.flatnonzero(kept):
        c = owner[k]
        name = labels[c] if labels is not None and c < len(labels) else f"class {c}"
        w, h = text_size(draw, name, fnt)
        color = tuple(int(v) for v in colors[c])
        draw.rectangle((cx[k] - w / 2 - 2, cy[k] - h / 2 - 2, cx[k] + w / 2 + 2, cy[k] + h / 2 + 2), fill=color)
        ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else (255, 255, 255)
        draw_text(draw, (cx[k], cy[k]), name, fnt, fill=ink, anchor="mm")
    return np.asarray(image)


def label_regions(mask):
    """The 4-connected regions of a mask, numbered 1.. in raster order of their first pixel.

    Runs of True along each row are joined to the runs they touch in the row above (union-find
    on runs: hook the larger root under the smaller, flatten, repeat), then painted back.

    Args:
        mask: bool [H, W].

    Returns:
        (int64 [H, W] region ids, 0 outside the mask; the number of regions).
    """
    height, width = mask.shape
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    run_row, run_start = np.nonzero(edges == 1)  # runs in raster order
    _, run_end = np.nonzero(edges == -1)  # exclusive, in the same order
    # Run j touches the runs i in [lo, hi) (raster order) of the row above: their columns overlap.
    start_key, end_key = run_row * (width + 1) + run_start, run_row * (width + 1) + run_end
    above = (run_row - 1) * (width + 1)
    lo = np.searchsorted(end_key, above + run_start, side="right")
    hi = np.searchsorted(start_key, above + run_end, side="left")
    count = np.maximum(hi - lo, 0)
    b = np.repeat(np.arange(len(run_row)), count)
    a = np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(count.sum())
    parent = np.arange(len(run_row))  # parent[i] <= i, so a region's root is its first run
    while True:
        root_a, root_b = parent[a], parent[b]
        apart = root_a != root_b
        if not apart.any():
            break
        parent[np.maximum(root_a, root_b)[apart]] = np.minimum(root_a, root_b)[apart]
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    roots = np.flatnonzero(parent == np.arange(len(parent)))
    number = np.zeros(len(parent), np.int64)
    number[roots] = np.arange(1, len(roots) + 1)
    lengths = run_end - run_start
    pixels = np.repeat(run_row * width + run_start - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    ids = np.zeros(height * width, np.int64)
    ids[pixels] = np.repeat(number[parent], lengths)
    return ids.reshape(height, width), len(roots)


def square_filter(array, radius, reduce):
    """The max (or min) over the (2 radius + 1) x (2 radius + 1) square around each pixel, edges repeated.

    Args:
        array: [H, W].
        radius: the square's half side, >= 0.
        reduce: np.maximum or np.minimum.

    Returns:
        An array like `array`.
    """
    height, width = array.shape
    padded = np.pad(array, radius, mode="edge")
    rows = padded[:height]
    for k in range(1, 2 * radius + 1):
        rows = reduce(rows, padded[k:k + height])
    out = rows[:, :width]
    for k in range(1, 2 * radius + 1):
        out = reduce(out, rows[:, k:k + width])
    return out
