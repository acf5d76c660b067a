"""Class masks drawn over images, panels side by side, and PNG output (numpy and Pillow only).

Shapes:
    image   [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]   uint8, or float in [0, 255]
    mask    integer [H, W]                              class ids
    returns uint8 [H, W, 3] RGB
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kseg.utils import atomic_path
from kseg.viz.colors import as_mask, colorize, palette as make_palette

_TEXT = (40, 40, 40)


def as_rgb(image, name="image"):
    """Any grey/RGB/RGBA image (uint8, bool, or float in [0, 255]) as uint8 [H, W, 3]."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    elif a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"{name} must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    return np.clip(np.rint(a.astype(np.float64)), 0, 255).astype(np.uint8)


def default_palette(mask, ignore_class=None):
    """`palette(K)` with K one more than the largest id in `mask` other than `ignore_class`."""
    m = np.asarray(mask)
    kept = m[m != ignore_class] if ignore_class is not None else m
    return make_palette(int(kept.max()) + 1 if kept.size else 1)


def class_boundaries(mask):
    """Pixels with a 4-neighbour of another class: bool [H, W]. The image border is no boundary."""
    m = as_mask(mask)
    edge = np.zeros(m.shape, dtype=bool)
    vertical = m[1:, :] != m[:-1, :]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    horizontal = m[:, 1:] != m[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def overlay(image, mask, palette=None, alpha=0.5, ignore_class=None, outline=False, skip_classes=(0,)):
    """Blends class colours onto an image.

    Args:
        image: grey or RGB image (see module docstring), same H, W as `mask`.
        mask: integer [H, W] class ids.
        palette: [K, 3] colours; default `palette(max id + 1)`.
        alpha: weight of the class colour, 0 (image only) to 1 (colour only).
        ignore_class: id left untinted (e.g. 255 or CamVid's void 11).
        outline: if True, the boundary pixels of each tinted class are drawn in its solid
            colour (use `alpha=0, outline=True` for outlines only).
        skip_classes: ids left untinted. Default `(0,)`: class 0 is background in most
            datasets and tinting it hides the image; pass `()` to tint every class
            (CamVid, where 0 is Sky).

    Returns:
        uint8 [H, W, 3].

    Example:
        >>> overlay(np.zeros((2, 2)), [[0, 1], [1, 1]], [[0, 0, 0], [200, 0, 0]])[0, 1].tolist()
        [100, 0, 0]
    """
    rgb = as_rgb(image)
    m = as_mask(mask)
    if m.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match image shape {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if palette is None:
        palette = default_palette(m, ignore_class)
    colors = colorize(m, palette, ignore_class=ignore_class).astype(np.float32)
    tinted = ~np.isin(m, np.asarray(tuple(skip_classes), dtype=np.int64))
    if ignore_class is not None:
        tinted &= m != ignore_class
    out = rgb.astype(np.float32)
    out[tinted] = (1.0 - alpha) * out[tinted] + alpha * colors[tinted]
    if outline:
        edge = class_boundaries(m) & tinted
        out[edge] = colors[edge]
    return np.rint(out).astype(np.uint8)


def font(size):
    """Pillow's built-in font at `size` pixels (a fixed-size bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError, AttributeError):
        return ImageFont.load_default()


def text_size(draw, text, fnt):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    return right - left, bottom - top


def draw_text(draw, xy, text, fnt, fill=_TEXT, anchor="lt"):
    """Draws `text` with its ink box anchored at `xy`: anchor is horizontal l/m/r + vertical t/m/b."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    x = xy[0] - left - {"l": 0, "m": (right - left) / 2, "r": right - left}[anchor[0]]
    y = xy[1] - top - {"t": 0, "m": (bottom - top) / 2, "b": bottom - top}[anchor[1]]
    draw.text((x, y), text, font=fnt, fill=tuple(int(c) for c in fill))


def fit_text(draw, text, fnt, width):
    """`text`, shortened with an ellipsis if needed so that it is at most `width` pixels wide."""
    if text_size(draw, text, fnt)[0] <= width:
        return text
    while text and text_size(draw, text + "...", fnt)[0] > width:
        text = text[:-1]
    return text + "..." if text else ""


def side_by_side(images, titles=None, pad=8, background=(255, 255, 255), title_size=14):
    """Panels in a row (e.g. image | ground truth | prediction) with small titles above.

    Args:
        images: list of images (see module docstring); heights may differ (top-aligned).
            Colour masks first with `colorize` or `overlay`.
        titles: list of strings, one per image, or None.
        pad: pixels around and between panels.
        background: RGB of the space between panels.
        title_size: title font size in pixels.

    Returns:
        uint8 [H, W, 3], ready for `save_png`.
    """
    panels = [as_rgb(im, name=f"images[{i}]") for i, im in enumerate(images)]
    if not panels:
        raise ValueError("side_by_side needs at least one image")
    if titles is not None and len(titles) != len(panels):
        raise ValueError(f"got {len(titles)} titles for {len(panels)} images")
    fnt = font(title_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_h = text_size(probe, "Ag", fnt)[1] + pad if titles else 0
    width = sum(p.shape[1] for p in panels) + pad * (len(panels) + 1)
    height = max(p.shape[0] for p in panels) + title_h + 2 * pad
    canvas = Image.new("RGB", (width, height), tuple(background))
    draw = ImageDraw.Draw(canvas)
    x = pad
    for i, panel in enumerate(panels):
        canvas.paste(Image.fromarray(panel), (x, pad + title_h))
        if titles:
            text = fit_text(draw, str(titles[i]), fnt, panel.shape[1])
            draw_text(draw, (x + panel.shape[1] / 2, pad), text, fnt, anchor="mt")
        x += panel.shape[1] + pad
    return np.asarray(canvas)


def save_png(path, array):
    """Writes a grey [H, W], RGB [H, W, 3] or RGBA [H, W, 4] image as PNG, atomically."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise ValueError(f"cannot save an array of shape {a.shape} to {path} as PNG")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64)), 0, 255).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(a))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def save_mask_png(path, mask, palette=None, ignore_class=None):
    """Writes class ids as an 8-bit palette ("P") PNG: pixel values are the ids, viewers show colours.

    Read back with `np.asarray(PIL.Image.open(path))` to get the ids exactly.

    Args:
        path: output file name.
        mask: integer [H, W] class ids in [0, 255].
        palette: [K, 3] colours with K <= 256; ids >= K show black. Default `palette(256)`.
        ignore_class: id shown in black (e.g. 255) when `palette` is None.
    """
    m = as_mask(mask)
    if m.size and (m.min() < 0 or m.max() > 255):
        raise ValueError(f"{path}: a palette PNG holds ids 0..255, the mask holds {m.min()}..{m.max()}")
    colors = make_palette(256, ignore_class) if palette is None else np.asarray(palette)
    if colors.ndim != 2 or colors.shape[1] != 3 or len(colors) > 256:
        raise ValueError(f"{path}: palette must be [K, 3] with K <= 256, got shape {colors.shape}")
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colors)] = np.clip(colors, 0, 255)
    image = Image.frombytes("P", (m.shape[1], m.shape[0]), np.ascontiguousarray(m, dtype=np.uint8).tobytes())
    image.putpalette(table.ravel().tolist())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=False)
