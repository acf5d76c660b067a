"""Synthetic instance segmentation data with exact masks: circles, squares and triangles.

Flat-coloured shapes of varied sizes, rotations and colours on a textured, noisy background.
Shapes drawn later occlude earlier ones, and each mask is exactly the visible pixels of
its object (the pixels painted in its colour). A placement that would leave an earlier
object with less than 20 % of its area (or fewer than 10 pixels) visible is refused and
drawn again elsewhere, so no object in the image is left without a mask. Every example is
a function of its seed alone. Examples follow the `kseg.data.instances` contract:

    image     uint8   [H, W, 3]
    boxes     float32 [N, 4]     (y1, x1, y2, x2), tight on the visible mask, continuous
    classes   int32   [N]        ids of SHAPE_CATEGORIES (1 circle, 2 square, 3 triangle)
    masks     uint8   [N, H, W]  disjoint, in drawing order
    image_id  int
"""

import numpy as np
from PIL import Image, ImageDraw

from kseg.data.errors import DataError, is_int
from kseg.data.instances import masks_to_boxes

SHAPE_CATEGORIES = [
    {"id": 1, "name": "circle", "coco_id": None},
    {"id": 2, "name": "square", "coco_id": None},
    {"id": 3, "name": "triangle", "coco_id": None},
]
_IDS = {c["name"]: c["id"] for c in SHAPE_CATEGORIES}
_CORNERS = {"square": 4, "triangle": 3}
_MIN_VISIBLE_FRACTION = 0.2
_MIN_VISIBLE_PIXELS = 10
_TRIES = 100  # placements tried per wanted object
_MIN_COLOUR_DISTANCE = 60  # L1 distance (0-765) between any two objects' colours


def shapes_example(rng, image_size=(128, 128), classes=("circle", "square", "triangle"), min_instances=1,
                   max_instances=6, min_size=12, max_size=None, overlap=True):
    """One synthetic image with its instances (module docstring).

    Each object is a circle, a rotated square or a rotated equilateral triangle whose
    circumscribed circle has diameter `size` (uniform in [min_size, max_size]), entirely
    inside the image, in a random saturated colour.

    Args:
        rng: numpy Generator (or an int seed).
        image_size: (H, W).
        classes: names from SHAPE_CATEGORIES to draw (their ids stay those of the list).
        min_instances, max_instances: the object count is uniform in this range.
        min_size: int >= 4, smallest diameter in pixels.
        max_size: largest diameter, default min(H, W) // 2.
        overlap: allow objects to overlap (later ones occlude); False keeps them disjoint.

    Returns:
        example dict: image uint8 [H, W, 3], boxes float32 [N, 4], classes int32 [N], masks
        uint8 [N, H, W] (disjoint), image_id 0.

    Raises:
        DataError: bad arguments, or `min_instances` objects that cannot be placed.

    Example:
        >>> example = shapes_example(np.random.default_rng(0), image_size=(64, 64))
        >>> example["masks"].shape[1:]
        (64, 64)
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    height, width, max_size = _check_args(image_size, classes, min_instances, max_instances, min_size, max_size)
    wanted = int(rng.integers(min_instances, max_instances + 1))
    image = _background(rng, height, width)
    full, visible, class_ids, colours = [], [], [], []
    occupied = np.zeros((height, width), bool)
    for _ in range(_TRIES * max(wanted, 1)):
        if len(full) == wanted:
            break
        name = classes[int(rng.integers(len(classes)))]
        mask = _draw(name, int(rng.integers(min_size, max_size + 1)), rng, height, width)
        if mask.sum() < _MIN_VISIBLE_PIXELS or (not overlap and (mask & occupied).any()):
            continue
        remaining = [v & ~mask for v in visible]
        if any(r.sum() < max(_MIN_VISIBLE_FRACTION * f.sum(), _MIN_VISIBLE_PIXELS) for r, f in zip(remaining, full)):
            continue
        full.append(mask)
        visible = remaining + [mask]
        occupied |= mask
        class_ids.append(_IDS[name])
        colours.append(_colour(rng, colours))
    if len(full) < min_instances:
        raise DataError(f"shapes_example: placed {len(full)} objects in {height}x{width}, expected at least "
                        f"min_instances={min_instances}: lower min_instances or sizes, or allow overlap")
    for mask, colour in zip(full, colours):  # later objects paint over earlier ones
        image[mask] = colour
    masks = np.array(visible, np.uint8).reshape(-1, height, width)
    return {"image": image, "boxes": masks_to_boxes(masks), "classes": np.array(class_ids, np.int32),
            "masks": masks, "image_id": 0}


def shapes_dataset_examples(count, seed=0, **kwargs):
    """`count` synthetic examples; example i depends on (seed, i) only, and has image_id i.

    Args:
        count: int >= 1.
        seed: int.
        **kwargs: passed to `shapes_example` (image_size, classes, ...).

    Returns:
        list of `count` example dicts.

    Example:
        >>> examples = shapes_dataset_examples(3, seed=1, image_size=(64, 64))
        >>> [e["image_id"] for e in examples]
        [0, 1, 2]
    """
    if not is_int(count) or count < 1:
        raise DataError(f"shapes_dataset_examples: count={count!r}, expected an int >= 1")
    if not is_int(seed) or seed < 0:
        raise DataError(f"shapes_dataset_examples: seed={seed!r}, expected an int >= 0")
    examples = []
    for i in range(count):
        example = shapes_example(np.random.default_rng([seed, i]), **kwargs)
        example["image_id"] = i
        examples.append(example)
    return examples


def _check_args(image_size, classes, min_instances, max_instances, min_size, max_size):
    """Validates shapes_example's arguments; returns (H, W, max_size)."""
    if not (isinstance(image_size, (list, tuple)) and len(image_size) == 2 and all(
            is_int(v) and v >= 8 for v in image_size)):
        raise DataError(f"shapes_example: image_size={image_size!r}, expected (H, W) ints >= 8")
    height, width = int(image_size[0]), int(image_size[1])
    if isinstance(classes, str) or not classes or any(c not in _IDS for c in classes):
        raise DataError(f"shapes_example: classes={classes!r}, expected a non-empty list of {list(_IDS)}")
    if not (is_int(min_instances) and is_int(max_instances) and 0 <= min_instances <= max_instances):
        raise DataError(f"shapes_example: min_instances={min_instances!r}, max_instances={max_instances!r}, "
                        "expected ints with 0 <= min_instances <= max_instances")
    max_size = max(min_size, min(height, width) // 2) if max_size is None and is_int(min_size) else max_size
    if not (is_int(min_size) and is_int(max_size) and 4 <= min_size <= max_size <= min(height, width)):
        raise DataError(f"shapes_example: min_size={min_size!r}, max_size={max_size!r}, expected ints with "
                        f"4 <= min_size <= max_size <= min(H, W) = {min(height, width)}")
    return height, width, max_size


def _draw(name, size, rng, height, width):
    """Full bool [H, W] mask of one shape of circumscribed diameter `size`, inside the image."""
    radius = size / 2.0
    cy = rng.uniform(radius, height - radius)
    cx = rng.uniform(radius, width - radius)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius - 1, cy + radius - 1], fill=1)
    else:
        corners = _CORNERS[name]
        angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(corners) / corners
        draw.polygon([(cx + radius * np.cos(a) - 0.5, cy + radius * np.sin(a) - 0.5) for a in angles], fill=1)
    return np.asarray(canvas, bool)


def _colour(rng, taken):
    """A saturated RGB colour at L1 distance >= _MIN_COLOUR_DISTANCE from those `taken` (if it can)."""
    for _ in range(50):
        hsv = np.array([rng.integers(0, 256), rng.integers(150, 256), rng.integers(140, 256)], np.uint8)
        colour = np.asarray(Image.fromarray(hsv[None, None], "HSV").convert("RGB"))[0, 0]
        if all(np.abs(colour.astype(int) - t.astype(int)).sum() >= _MIN_COLOUR_DISTANCE for t in taken):
            break
    return colour


def _background(rng, height, width):
    """uint8 [H, W, 3]: a dull base colour + gradient + smooth blobs + stripes + pixel noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    image[:] = rng.uniform(60, 160, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)[..., None]
    image += ramp * rng.uniform(-50, 50, 3)
    grid = rng.normal(0, 25, (3, 6, 6)).astype(np.float32)
    for c in range(3):
        image[..., c] += np.asarray(Image.fromarray(grid[c], "F").resize((width, height), Image.Resampling.BILINEAR))
    period, phase, angle = rng.uniform(6, 24), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period + phase)
    image += (stripes * rng.uniform(5, 15))[..., None]
    image += rng.normal(0, 8, (height, width, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
