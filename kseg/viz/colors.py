"""Colours for class ids and chart series, and turning a class-id mask into an RGB image.

Shapes:
    mask      integer [H, W]   class ids (any integer dtype; bool counts as 0/1)
    palette   uint8   [K, 3]   RGB colour of class k in row k
    returns   uint8   [H, W, 3]
"""

import colorsys

import numpy as np

# Well-separated hues for the first classes; later classes come from a golden-ratio hue walk.
_FIXED_CLASS_COLORS = (
    (220, 50, 47),  # red
    (38, 139, 210),  # blue
    (255, 190, 11),  # amber
    (0, 176, 80),  # green
    (142, 68, 173),  # violet
    (0, 206, 209),  # cyan
    (235, 80, 160),  # pink
    (230, 120, 20),  # orange
    (150, 190, 30),  # lime
    (90, 100, 200),  # indigo
    (150, 95, 50),  # brown
    (0, 128, 128),  # teal
)

# Dark enough to read on white (the colour-blind-safe set of Okabe & Ito, yellow left out).
_FIXED_SERIES_COLORS = (
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (0, 158, 115),  # bluish green
    (204, 121, 167),  # reddish purple
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (60, 60, 60),  # near black
)

_GOLDEN = 0.6180339887498949

CAMVID_CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)

# The colours of the CamVid 11-class labelling (SegNet's release); void (id 11) is black.
CAMVID_PALETTE = np.array(
    [
        (128, 128, 128),  # Sky
        (128, 0, 0),  # Building
        (192, 192, 128),  # Pole
        (128, 64, 128),  # Road
        (60, 40, 222),  # Pavement
        (128, 128, 0),  # Tree
        (192, 128, 128),  # SignSymbol
        (64, 64, 128),  # Fence
        (64, 0, 128),  # Car
        (64, 64, 0),  # Pedestrian
        (0, 128, 192),  # Bicyclist
    ],
    dtype=np.uint8,
)
CAMVID_PALETTE.setflags(write=False)


def _hue_walk(index, saturations, values):
    """Colour number `index` of a deterministic golden-ratio walk around the hue circle."""
    hue = (0.13 + index * _GOLDEN) % 1.0
    s = saturations[index % len(saturations)]
    v = values[(index // len(saturations)) % len(values)]
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, s, v))


def palette(num_classes, ignore_class=None):
    """Distinct RGB colours for `num_classes` class ids.

    The colours are deterministic and prefix-stable: `palette(k)` is the first k rows of
    `palette(n)` for any n >= k, so a class keeps its colour whatever the class count.

    Args:
        num_classes: K, the number of colours, >= 0.
        ignore_class: if in [0, K), that row is black (the usual colour for "void").

    Returns:
        uint8 [K, 3].

    Example:
        >>> palette(3).shape
        (3, 3)
    """
    num_classes = int(num_classes)
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    rows = list(_FIXED_CLASS_COLORS[:num_classes])
    for i in range(len(rows), num_classes):
        rows.append(_hue_walk(i, saturations=(0.75, 0.55, 0.95), values=(0.9, 0.7, 0.55)))
    colors = np.array(rows, dtype=np.uint8).reshape(num_classes, 3)
    if ignore_class is not None and 0 <= int(ignore_class) < num_classes:
        colors[int(ignore_class)] = 0
    return colors


def series_colors(num_series):
    """Distinct RGB colours for chart lines and bars on a white background: uint8 [N, 3]."""
    rows = list(_FIXED_SERIES_COLORS[:num_series])
    for i in range(len(rows), num_series):
        rows.append(_hue_walk(i, saturations=(0.85, 0.6), values=(0.7, 0.5)))
    return np.array(rows, dtype=np.uint8).reshape(num_series, 3)


def as_mask(mask, name="mask"):
    """Checks that `mask` holds integer class ids; returns it as an int64 [H, W] array."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"{name} must be [H, W] or [H, W, 1] class ids, got shape {m.shape}")
    if m.dtype == bool:
        m = m.astype(np.int64)
    if not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {m.dtype}")
    return m.astype(np.int64)


def colorize(mask, palette, ignore_class=None, ignore_color=(0, 0, 0)):
    """Paints each class id with its palette colour.

    Args:
        mask: integer [H, W] (or [H, W, 1]) class ids in [0, K), or `ignore_class`.
        palette: [K, 3] RGB colours, e.g. `palette(K)` or `CAMVID_PALETTE`.
        ignore_class: id painted with `ignore_color` (it may lie outside [0, K), e.g. 255).
        ignore_color: RGB of ignored pixels.

    Returns:
        uint8 [H, W, 3].

    Raises:
        ValueError: if a pixel holds an id outside [0, K) that is not `ignore_class`.

    Example:
        >>> colorize([[0, 1]], [[0, 0, 0], [255, 0, 0]]).tolist()
        [[[0, 0, 0], [255, 0, 0]]]
    """
    m = as_mask(mask)
    colors = np.asarray(palette)
    if colors.ndim != 2 or colors.shape[1] != 3:
        raise ValueError(f"palette must be [K, 3] RGB, got shape {colors.shape}")
    colors = np.clip(colors, 0, 255).astype(np.uint8)
    ignored = m == ignore_class if ignore_class is not None else np.zeros(m.shape, bool)
    bad = ~ignored & ((m < 0) | (m >= len(colors)))
    if bad.any():
        raise ValueError(
            f"mask holds class id {int(m[bad][0])}, but the palette has {len(colors)} colours "
            f"(ids 0..{len(colors) - 1}; ignore_class={ignore_class})"
        )
    out = colors[np.where(ignored, 0, m)] if len(colors) else np.zeros(m.shape + (3,), np.uint8)
    out[ignored] = np.asarray(ignore_color, dtype=np.uint8)
    return out
