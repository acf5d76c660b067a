"""Line and grouped-bar charts drawn with Pillow: training curves and benchmark results as PNGs.

Charts are drawn at twice the requested size and box-filtered down, which anti-aliases
lines and text. Sizes and coordinates below are in output pixels. Returns uint8 [H, W, 3].
"""

import math
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw, features

from kseg.viz.colors import series_colors
from kseg.viz.overlay import draw_text, fit_text, font, save_png, text_size

_SCALE = 2 if features.check("freetype2") else 1  # a bitmap font does not scale
_FONT_SIZES = {"title": 18, "label": 14, "tick": 12, "legend": 13, "value": 11}
_INK, _AXIS, _GRID, _PAD, _TICK = (40, 40, 40), (90, 90, 90), (228, 228, 228), 12, 5


def nice_ticks(lo, hi, max_ticks=6, integer=False):
    """Evenly spaced round values covering [lo, hi]: steps of 1, 2, 2.5 or 5 times 10^k.

    With `integer=True` the step is a whole number (for epochs and steps).

    Returns float64 [N] with 2 <= N <= max_ticks, ticks[0] <= lo and ticks[-1] >= hi.

    Example:
        >>> nice_ticks(0.13, 0.87).tolist()
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    """
    lo, hi = sorted((float(lo), float(hi)))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if max_ticks < 3:
        raise ValueError(f"max_ticks must be >= 3, got {max_ticks}")
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    magnitude = 10.0 ** math.floor(math.log10((hi - lo) / (max_ticks - 1)))
    magnitude = max(magnitude, 1.0) if integer else magnitude
    for m in (1, 2, 2.5, 5, 10, 20, 25, 50, 100):
        step = m * magnitude
        if integer and step != round(step):
            continue
        first = math.floor(lo / step + 1e-9)
        last = math.ceil(hi / step - 1e-9)
        if last - first + 1 <= max_ticks:
            break
    ticks = np.round(np.arange(first, last + 1) * step, 12 - math.floor(math.log10(step)))
    return ticks + 0.0  # no "-0"


def log_ticks(lo, hi, max_ticks=8):
    """Ticks for a log axis covering [lo, hi] (> 0): 1-2-5 steps, or decades when that is too many.

    Returns (ticks, (axis_lo, axis_hi)); the axis ends on a 1-2-5 value.
    """
    if not 0 < lo <= hi or not math.isfinite(hi):
        raise ValueError(f"a log axis needs 0 < lo <= hi, got [{lo}, {hi}]")
    e0, e1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    candidates = [m * 10.0**e for e in range(e0, e1 + 1) for m in (1, 2, 5)]
    axis_lo = max(c for c in candidates if c <= lo * (1 + 1e-9))
    axis_hi = min(c for c in candidates if c >= hi * (1 - 1e-9))
    inside = [c for c in candidates if axis_lo <= c <= axis_hi]
    if len(inside) > max_ticks:
        decades = [10.0**e for e in range(e0, e1 + 1) if axis_lo <= 10.0**e <= axis_hi]
        inside = decades[:: math.ceil(len(decades) / max_ticks)] if len(decades) >= 2 else [axis_lo] + decades + [axis_hi]
    return np.array(sorted(set(inside))), (axis_lo, axis_hi)


def format_ticks(ticks, log=False):
    """Short labels with the same number of decimals, "k"/"M" for large values: list of str."""
    ticks = np.asarray(ticks, dtype=np.float64)
    if log:
        sci = lambda t: f"{t:.0e}" if t == float(f"{t:.0e}") else f"{t:.1e}"
        return [(sci(t) if t < 1e-3 or t >= 1e5 else f"{t:g}").replace("e-0", "e-").replace("e+0", "e") for t in ticks]
    big = float(np.max(np.abs(ticks))) if ticks.size else 0.0
    if 0 < big < 1e-3:
        return [f"{t:.1e}" if t else "0" for t in ticks]
    scale, suffix = (1e6, "M") if big >= 1e6 else (1e3, "k") if big >= 1e4 else (1.0, "")
    values = ticks / scale
    decimals = next(d for d in range(10) if np.allclose(np.round(values, d), values, rtol=0, atol=1e-9 * max(1, big / scale)))
    return [f"{v + 0.0:.{decimals}f}{suffix}" if v or not suffix else "0" for v in values]


def _format_value(value):
    if not math.isfinite(value):
        return "n/a"
    size = abs(value)
    return f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}" if size >= 1 else f"{value:.3g}"


class _Canvas:
    """A white image at _SCALE times the output size; methods take output-pixel coordinates."""

    def __init__(self, size):
        self.width, self.height = (int(v) for v in size)
        if self.width < 200 or self.height < 150:
            raise ValueError(f"chart size must be at least (200, 150), got {tuple(size)}")
        self.image = Image.new("RGB", (self.width * _SCALE, self.height * _SCALE), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.fonts = {kind: font(px * _SCALE) for kind, px in _FONT_SIZES.items()}

    def measure(self, text, kind):
        w, h = text_size(self.draw, text, self.fonts[kind])
        return w / _SCALE, h / _SCALE

    def text(self, xy, text, kind, anchor="lt", fill=_INK, vertical=False):
        xy = (xy[0] * _SCALE, xy[1] * _SCALE)
        if not vertical:
            return draw_text(self.draw, xy, text, self.fonts[kind], fill, anchor)
        w, h = text_size(self.draw, text, self.fonts[kind])
        strip = Image.new("RGBA", (w + 4, h + 4), (255, 255, 255, 0))
        draw_text(ImageDraw.Draw(strip), (2, 2), text, self.fonts[kind], fill, "lt")
        strip = strip.rotate(90, expand=True)
        x = xy[0] - {"l": 0, "m": strip.width / 2, "r": strip.width}[anchor[0]]
        y = xy[1] - {"t": 0, "m": strip.height / 2, "b": strip.height}[anchor[1]]
        self.image.paste(strip, (round(x), round(y)), strip)

    def line(self, points, fill, width=1, draw=None):
        pts = [(x * _SCALE, y * _SCALE) for x, y in points]
        (draw or self.draw).line(pts, fill=tuple(int(c) for c in fill), width=max(1, round(width * _SCALE)), joint="curve")

    def rect(self, box, fill=None, outline=None, draw=None):
        box = [round(v * _SCALE) for v in box]
        color = (lambda c: None if c is None else tuple(int(v) for v in c))
        (draw or self.draw).rectangle(box, fill=color(fill), outline=color(outline), width=_SCALE)

    def dot(self, xy, radius, fill, draw=None):
        x, y, r = xy[0] * _SCALE, xy[1] * _SCALE, radius * _SCALE
        (draw or self.draw).ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in fill))

    def result(self):
        image = self.image.reduce(_SCALE) if _SCALE > 1 else self.image
        return np.asarray(image.convert("RGB"))


def _layout(c, title, xlabel, ylabel, ytick_labels, names, colors, swatch):
    """Draws title, legend and axis labels; returns the plot box (left, top, right, bottom)."""
    tick_h = c.measure("0123456789", "tick")[1]
    label_h = c.measure("Ag", "label")[1]
    left = _PAD + (label_h + 10 if ylabel else 0) + max(c.measure(t, "tick")[0] for t in ytick_labels) + _TICK + 5
    right = c.width - _PAD - 14
    top = _PAD
    if title:
        c.text((c.width / 2, top), fit_text(c.draw, title, c.fonts["title"], (c.width - 2 * _PAD) * _SCALE), "title", "mt")
        top += c.measure("Ag", "title")[1] + 10
    if names:
        row_h = max(c.measure("Ag", "legend")[1], 10) + 8
        x = left
        for name, color in zip(names, colors):
            w = 22 + 6 + c.measure(name, "legend")[0]
            if x > left and x + w > right:
                x, top = left, top + row_h
            sy = round(top + row_h / 2 - 6)
            c.rect((x, sy + 6 - swatch // 2, x + 21, sy + 6 - swatch // 2 + swatch - 1), fill=color)
            c.text((x + 28, top + row_h / 2), name, "legend", "lm")
            x += w + 18
        top += row_h + 4
    top += tick_h / 2 + 2
    bottom = c.height - _PAD - (label_h + 8 if xlabel else 0) - tick_h - _TICK - 6
    if bottom - top < 40 or right - left < 60:
        raise ValueError(f"chart size {(c.width, c.height)} leaves no room for the plot; make it larger")
    if xlabel:
        c.text(((left + right) / 2, c.height - _PAD), fit_text(c.draw, xlabel, c.fonts["label"], (right - left) * _SCALE), "label", "mb")
    if ylabel:
        c.text((_PAD, (top + bottom) / 2), ylabel, "label", "lm", vertical=True)
    return left, top, right, bottom


def _y_axis(c, box, ticks, labels, to_y):
    left, top, right, bottom = box
    for t, label in zip(ticks, labels):
        y = to_y(t)
        if top - 0.5 <= y <= bottom + 0.5:
            c.line([(left, y), (right, y)], _GRID)
            c.line([(left - _TICK, y), (left, y)], _AXIS)
            c.text((left - _TICK - 4, y), label, "tick", "rm")


def _as_series(name, value):
    if isinstance(value, tuple | list) and len(value) == 2 and all(np.ndim(v) == 1 for v in value):
        xs, ys = (np.array(v, dtype=np.float64) for v in value)
    else:
        ys = np.array(value, dtype=np.float64).reshape(-1)
        xs = np.arange(1, len(ys) + 1, dtype=np.float64)
    if xs.shape != ys.shape:
        raise ValueError(f"series {name!r}: {len(xs)} x values but {len(ys)} y values")
    return xs, ys


def _limits(values, fixed, max_ticks, log, integer=False):
    """Ticks and axis limits for finite `values`, with `fixed` (lo, hi) parts taking precedence."""
    lo_fixed, hi_fixed = fixed if fixed is not None else (None, None)
    lo = lo_fixed if lo_fixed is not None else (values.min() if values.size else (1.0 if log else 0.0))
    hi = hi_fixed if hi_fixed is not None else (values.max() if values.size else (10.0 if log else 1.0))
    if log:
        ticks, (axis_lo, axis_hi) = log_ticks(lo, max(lo, hi), max_ticks)
    else:
        ticks = nice_ticks(lo, hi, max_ticks, integer)
        axis_lo, axis_hi = ticks[0], ticks[-1]
    axis_lo = lo_fixed if lo_fixed is not None else axis_lo
    axis_hi = hi_fixed if hi_fixed is not None else axis_hi
    keep = (ticks >= axis_lo - 1e-9 * abs(axis_hi - axis_lo)) & (ticks <= axis_hi + 1e-9 * abs(axis_hi - axis_lo))
    return ticks[keep], float(axis_lo), float(axis_hi)


def line_chart(series, title="", xlabel="", ylabel="", size=(800, 500), ylim=None, logy=False):
    """Renders curves such as loss and mIoU per epoch.

    Args:
        series: dict name -> (xs, ys) or name -> ys (xs are then 1, 2, ..., N). NaN, inf
            and None leave gaps; points alone between gaps are drawn as dots.
        title, xlabel, ylabel: text around the plot.
        size: (width, height) of the result in pixels.
        ylim: (lo, hi) of the y axis; either may be None for automatic.
        logy: log-scaled y axis (values <= 0 are left out).

    Returns:
        uint8 [height, width, 3].
    """
    if not isinstance(series, Mapping) or not series:
        raise ValueError("series must be a non-empty dict name -> ys or (xs, ys)")
    data = {str(name): _as_series(name, value) for name, value in series.items()}
    if logy:
        data = {n: (xs, np.where(ys > 0, ys, np.nan)) for n, (xs, ys) in data.items()}
    finite = [(xs[np.isfinite(xs) & np.isfinite(ys)], ys[np.isfinite(xs) & np.isfinite(ys)]) for xs, ys in data.values()]
    all_x = np.concatenate([f[0] for f in finite])
    all_y = np.concatenate([f[1] for f in finite])
    c = _Canvas(size)
    integer = bool(np.all(all_x == np.round(all_x)))
    x_ticks, x_lo, x_hi = _limits(all_x, None, int(np.clip(c.width // 90, 4, 10)), False, integer)
    y_ticks, y_lo, y_hi = _limits(all_y, ylim, int(np.clip(c.height // 70, 3, 8)), log=logy)
    if not y_hi > y_lo:
        raise ValueError(f"ylim must have lo < hi, got {ylim}")
    colors = series_colors(len(data))
    box = _layout(c, title, xlabel, ylabel, format_ticks(y_ticks, logy), list(data), colors, swatch=4)
    left, top, right, bottom = box
    fy = (lambda v: np.log10(v)) if logy else (lambda v: v)
    to_x = lambda v: left + (v - x_lo) / (x_hi - x_lo) * (right - left)
    to_y = lambda v: bottom - (fy(v) - fy(y_lo)) / (fy(y_hi) - fy(y_lo)) * (bottom - top)
    _y_axis(c, box, y_ticks, format_ticks(y_ticks, logy), to_y)
    for t, label in zip(x_ticks, format_ticks(x_ticks)):
        x = to_x(t)
        c.line([(x, top), (x, bottom)], _GRID)
        c.line([(x, bottom), (x, bottom + _TICK)], _AXIS)
        c.text((x, bottom + _TICK + 4), label, "tick", "mt")
    layer = Image.new("RGBA", c.image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for (xs, ys), color in zip(data.values(), colors):
        ok = np.isfinite(xs) & np.isfinite(ys)
        px = np.clip(to_x(xs), -1e5, 1e5)
        py = np.clip(to_y(np.where(ok, ys, 1.0)), -1e5, 1e5)
        breaks = np.flatnonzero(np.diff(np.r_[0, ok.astype(np.int8), 0]))
        for start, stop in zip(breaks[::2], breaks[1::2]):
            pts = list(zip(px[start:stop], py[start:stop]))
            if len(pts) > 1:
                c.line(pts, color, width=2, draw=draw)
            if len(pts) == 1 or ok.sum() <= 30:
                for p in pts:
                    c.dot(p, 3 if len(pts) > 1 else 3.5, color, draw=draw)
    # Clip a few pixels outside the frame, so that lines and dots on the axis limits stay whole.
    plot = tuple(round(v * _SCALE) for v in (left - 4, top - 4, right + 5, bottom + 5))
    c.rect(box, outline=_AXIS)
    region = layer.crop(plot)
    c.image.paste(region, plot[:2], region)
    return c.result()


def bar_chart(groups, title="", ylabel="", xlabel="", size=(800, 500), ylim=None, value_format=None):
    """Renders grouped bars, e.g. latency (ms) per model variant (group) per thread count (series).

    Args:
        groups: dict group -> dict series -> value, or group -> value for a single series.
            A missing or NaN value leaves its bar out and prints "n/a".
        title, ylabel, xlabel: text around the plot.
        size: (width, height) of the result in pixels.
        ylim: (lo, hi) of the y axis; either may be None for automatic (bars start at 0).
        value_format: function value -> label printed on each bar; default 3 significant digits.

    Returns:
        uint8 [height, width, 3].
    """
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError("groups must be a non-empty dict group -> {series: value}")
    rows = {str(g): dict(v) if isinstance(v, Mapping) else {"": v} for g, v in groups.items()}
    names = list(dict.fromkeys(s for row in rows.values() for s in row))
    values = np.array([[np.nan if row.get(s) is None else float(row[s]) for s in names] for row in rows.values()])
    fmt = value_format or _format_value
    c = _Canvas(size)
    finite = values[np.isfinite(values)]
    bar_w = (c.width - 140) / len(rows) * 0.8 / len(names)
    labels = [[fmt(v) for v in row] for row in values]
    label_w = max(c.measure(t, "value")[0] for row in labels for t in row)
    vertical = label_w > bar_w + 4
    room = (label_w if vertical else c.measure("0", "value")[1]) + 8
    frac = min(0.45, room / max(60.0, c.height - 150))  # share of the axis the labels need
    lo, hi = (min(0.0, finite.min()), max(0.0, finite.max())) if finite.size else (0.0, 1.0)
    span = (hi - lo) or 1.0
    hi, lo = hi + (frac * span / (1 - frac) if hi > 0 else 0), lo - (frac * span / (1 - frac) if lo < 0 else 0)
    y_ticks, y_lo, y_hi = _limits(np.array([lo, hi]), ylim, int(np.clip(c.height // 70, 3, 8)), log=False)
    colors = series_colors(len(names))
    legend = names if names != [""] else []
    box = _layout(c, title, xlabel, ylabel, format_ticks(y_ticks), legend, colors, swatch=10)
    left, top, right, bottom = box
    to_y = lambda v: bottom - (min(max(v, y_lo), y_hi) - y_lo) / (y_hi - y_lo) * (bottom - top)
    _y_axis(c, box, y_ticks, format_ticks(y_ticks), to_y)
    slot = (right - left) / len(rows)
    bar_w = slot * 0.8 / len(names)
    for i, group in enumerate(rows):
        center = left + (i + 0.5) * slot
        c.text((center, bottom + _TICK + 4), fit_text(c.draw, group, c.fonts["tick"], slot * _SCALE), "tick", "mt")
        for j, (value, text) in enumerate(zip(values[i], labels[i])):
            x0 = center - slot * 0.4 + j * bar_w
            base, end = to_y(0.0), to_y(value if math.isfinite(value) else 0.0)
            if math.isfinite(value) and abs(base - end) >= 0.5:
                c.rect((x0 + 1, min(base, end), x0 + bar_w - 1, max(base, end)), fill=colors[j])
            up = not value < 0
            y = end - 3 if up else end + 3
            c.text((x0 + bar_w / 2, y), text, "value", "mb" if up else "mt", fill=_INK if math.isfinite(value) else _AXIS, vertical=vertical)
    if y_lo < 0 < y_hi:
        c.line([(left, to_y(0.0)), (right, to_y(0.0))], _AXIS)
    c.rect(box, outline=_AXIS)
    return c.result()


def save_line_chart(path, series, **kwargs):
    """`line_chart(series, **kwargs)` written as a PNG, atomically."""
    save_png(path, line_chart(series, **kwargs))


def save_bar_chart(path, groups, **kwargs):
    """`bar_chart(groups, **kwargs)` written as a PNG, atomically."""
    save_png(path, bar_chart(groups, **kwargs))
