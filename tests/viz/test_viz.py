"""Tests for kseg.viz: colours, overlays, palette PNGs and charts (numpy and Pillow only)."""

import doctest
import importlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import kseg.viz as viz

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _has_color(image, color):
    return bool(np.all(image == np.asarray(color, dtype=np.uint8), axis=-1).any())


def test_import_pulls_in_no_tensorflow_keras_or_matplotlib():
    code = (
        "import sys, kseg.viz\n"
        "bad = [m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["colors", "overlay", "chart"])
def test_docstring_examples_run(name):
    module = importlib.import_module(f"kseg.viz.{name}")  # kseg.viz.overlay is also a function
    failures, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0 and attempted > 0


# colors


def test_palette_is_distinct_deterministic_and_prefix_stable():
    p = viz.palette(64)
    assert p.shape == (64, 3) and p.dtype == np.uint8
    assert len({tuple(row) for row in p}) == 64
    np.testing.assert_array_equal(viz.palette(64), p)
    np.testing.assert_array_equal(viz.palette(5), p[:5])
    assert viz.palette(0).shape == (0, 3)


def test_palette_ignore_class_row_is_black():
    p = viz.palette(4, ignore_class=2)
    assert p[2].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(np.delete(p, 2, axis=0), np.delete(viz.palette(4), 2, axis=0))
    np.testing.assert_array_equal(viz.palette(4, ignore_class=255), viz.palette(4))


def test_camvid_names_and_colors():
    assert len(viz.CAMVID_CLASSES) == 11 and viz.CAMVID_CLASSES[3] == "Road"
    assert viz.CAMVID_PALETTE.shape == (11, 3) and viz.CAMVID_PALETTE.dtype == np.uint8
    assert viz.CAMVID_PALETTE[3].tolist() == [128, 64, 128]  # Road
    assert len({tuple(row) for row in viz.CAMVID_PALETTE}) == 11


def test_colorize_maps_ids_to_palette_and_ignore_to_ignore_color():
    p = viz.palette(3)
    mask = np.array([[0, 1, 2], [255, 2, 0]])
    out = viz.colorize(mask, p, ignore_class=255, ignore_color=(7, 8, 9))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    for (y, x), cls in np.ndenumerate(mask):
        expected = [7, 8, 9] if cls == 255 else p[cls].tolist()
        assert out[y, x].tolist() == expected
    inside = viz.colorize(np.array([[0, 1]]), p, ignore_class=1)  # an ignore id inside [0, K)
    assert inside[0, 1].tolist() == [0, 0, 0] and inside[0, 0].tolist() == p[0].tolist()


def test_colorize_rejects_ids_outside_the_palette():
    with pytest.raises(ValueError, match="class id 3"):
        viz.colorize(np.array([[0, 3]]), viz.palette(3))
    with pytest.raises(ValueError, match="integer"):
        viz.colorize(np.zeros((2, 2), np.float32), viz.palette(3))


# overlay


def _scene():
    image = np.random.default_rng(0).uniform(0, 255, (24, 32))
    mask = np.zeros((24, 32), np.int32)
    mask[4:14, 5:20] = 1
    mask[10:20, 15:28] = 2
    return image, mask


def test_overlay_alpha_zero_returns_the_image():
    image, mask = _scene()
    expected = np.repeat(np.rint(image).astype(np.uint8)[..., None], 3, axis=-1)
    np.testing.assert_array_equal(viz.overlay(image, mask, alpha=0.0), expected)
    rgb = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(viz.overlay(rgb, mask, alpha=0.0), rgb)


def test_overlay_alpha_one_paints_mask_pixels_and_skips_background():
    image, mask = _scene()
    p = viz.palette(3)
    out = viz.overlay(image, mask, palette=p, alpha=1.0)
    fg = mask > 0
    np.testing.assert_array_equal(out[fg], p[mask[fg]])
    np.testing.assert_array_equal(out[~fg], np.repeat(np.rint(image)[..., None], 3, -1)[~fg].astype(np.uint8))
    every = viz.overlay(image, mask, palette=p, alpha=1.0, skip_classes=())
    np.testing.assert_array_equal(every, p[mask])


def test_overlay_blends_halfway_and_leaves_ignored_pixels():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[1, 255], [0, 1]])
    out = viz.overlay(image, mask, palette=[[0, 0, 0], [200, 0, 50]], alpha=0.5, ignore_class=255)
    assert out[0, 0].tolist() == [150, 50, 75]
    assert out[0, 1].tolist() == [100, 100, 100] and out[1, 0].tolist() == [100, 100, 100]


def test_outlines_lie_on_class_boundaries_only():
    image = np.full((12, 12), 50.0)
    mask = np.zeros((12, 12), np.int64)
    mask[3:9, 2:10] = 1  # a 6 x 8 box away from the image border
    out = viz.overlay(image, mask, palette=[[0, 0, 0], [255, 0, 0]], alpha=0.0, outline=True)
    changed = np.any(out != 50, axis=-1)
    ring = np.zeros_like(changed)
    ring[3:9, 2:10] = True
    ring[4:8, 3:9] = False
    np.testing.assert_array_equal(changed, ring)
    assert np.all(out[ring] == [255, 0, 0])
    # The image border is no boundary: a class filling the image has no outline.
    full = viz.overlay(image, np.ones((12, 12), int), palette=[[0, 0, 0], [255, 0, 0]], alpha=0.0, outline=True)
    assert np.all(full == 50)


def test_class_boundaries_marks_both_sides_of_an_edge():
    edge = viz.class_boundaries(np.array([[0, 0, 1, 1]]))
    assert edge.tolist() == [[False, True, True, False]]


def test_overlay_rejects_mismatched_shapes_and_alpha():
    with pytest.raises(ValueError, match="does not match"):
        viz.overlay(np.zeros((4, 4)), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(np.zeros((4, 4)), np.zeros((4, 4), int), alpha=1.5)


def test_side_by_side_lays_panels_in_a_row_with_titles():
    a = np.zeros((20, 30), np.uint8)
    b = np.full((16, 10, 3), 200, np.uint8)
    out = viz.side_by_side([a, b], titles=["image", "a title much longer than the panel"], pad=4)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[1] == 30 + 10 + 3 * 4
    title_h = out.shape[0] - 20 - 2 * 4
    assert title_h > 5
    np.testing.assert_array_equal(out[4 + title_h : 4 + title_h + 20, 4 : 4 + 30], 0)
    assert np.any(out[:title_h, :] < 128)  # some title ink
    plain = viz.side_by_side([a], pad=4)
    assert plain.shape == (28, 38, 3)
    with pytest.raises(ValueError, match="titles"):
        viz.side_by_side([a, b], titles=["one"])


# PNG output


def test_mask_png_round_trips_ids(tmp_path):
    k = 12
    mask = np.arange(4 * 6).reshape(4, 6) % k
    mask[0, 0], mask[3, 5], mask[2, 2] = 0, k - 1, 255
    path = tmp_path / "mask.png"
    viz.save_mask_png(path, mask, palette=viz.palette(k))
    with Image.open(path) as im:
        assert im.mode == "P"
        ids = np.asarray(im)
        table = np.asarray(im.getpalette()[:768], np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(ids, mask)
    np.testing.assert_array_equal(table[: k], viz.palette(k))
    assert table[255].tolist() == [0, 0, 0]


def test_mask_png_default_palette_and_range_check(tmp_path):
    mask = np.array([[0, 1], [254, 255]], np.int32)
    viz.save_mask_png(tmp_path / "m.png", mask, ignore_class=255)
    with Image.open(tmp_path / "m.png") as im:
        np.testing.assert_array_equal(np.asarray(im), mask)
        assert im.getpalette()[255 * 3 : 256 * 3] == [0, 0, 0]
    with pytest.raises(ValueError, match="0..255"):
        viz.save_mask_png(tmp_path / "bad.png", np.array([[0, 256]]))


def test_save_png_is_atomic(tmp_path, monkeypatch):
    array = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "out" / "image.png"
    viz.save_png(path, array)
    assert os.listdir(path.parent) == ["image.png"]
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), array)

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        viz.save_png(tmp_path / "other.png", array)
    with pytest.raises(OSError, match="disk full"):
        viz.save_line_chart(tmp_path / "chart.png", {"a": [1, 2]})
    assert sorted(os.listdir(tmp_path)) == ["out"]


# ticks


@pytest.mark.parametrize(
    "lo, hi, max_ticks, expected",
    [
        (0.0, 1.0, 6, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.13, 0.87, 6, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.0, 2.3, 6, [0, 0.5, 1.0, 1.5, 2.0, 2.5]),
        (-3.2, 7.9, 6, [-5, 0, 5, 10]),
        (0.0, 100.0, 5, [0, 25, 50, 75, 100]),
        (0.0012, 0.0047, 6, [0.001, 0.002, 0.003, 0.004, 0.005]),
        (1.0, 120000.0, 7, [0, 20000, 40000, 60000, 80000, 100000, 120000]),
    ],
)
def test_nice_ticks_values(lo, hi, max_ticks, expected):
    np.testing.assert_allclose(viz.nice_ticks(lo, hi, max_ticks), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lo, hi", [(0.0, 1e-7), (-1e6, 3.0), (7.0, 7.0), (0.0, 0.0), (-2.0, -1.5), (9.99, 10.01)])
@pytest.mark.parametrize("max_ticks", [3, 6, 10])
def test_nice_ticks_properties(lo, hi, max_ticks):
    ticks = viz.nice_ticks(lo, hi, max_ticks)
    assert 2 <= len(ticks) <= max_ticks
    assert ticks[0] <= lo and ticks[-1] >= hi
    steps = np.diff(ticks)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)
    mantissa = steps[0] / 10.0 ** math.floor(math.log10(steps[0]) + 1e-9)
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5))


def test_nice_ticks_integer_and_errors():
    assert viz.nice_ticks(1, 5, 4, integer=True).tolist() == [0, 2, 4, 6]
    assert viz.nice_ticks(3, 3, 6, integer=True).tolist() == [2, 3, 4]
    assert viz.nice_ticks(0, 1e-6, 6, integer=True).tolist() == [0, 1]
    assert viz.nice_ticks(0, 100, 5, integer=True).tolist() == [0, 25, 50, 75, 100]
    with pytest.raises(ValueError):
        viz.nice_ticks(0, math.inf)
    with pytest.raises(ValueError):
        viz.nice_ticks(0, 1, max_ticks=2)


def test_log_ticks_and_labels():
    ticks, limits = viz.log_ticks(0.05, 1.5)
    assert ticks.tolist() == [0.05, 0.1, 0.2, 0.5, 1.0, 2.0] and limits == (0.05, 2.0)
    ticks, limits = viz.log_ticks(1e-6, 10.0)
    np.testing.assert_allclose(ticks, 10.0 ** np.arange(-6, 2))
    assert viz.format_ticks(ticks, log=True) == ["1e-6", "1e-5", "1e-4", "0.001", "0.01", "0.1", "1", "10"]


def test_format_ticks():
    assert viz.format_ticks([0, 0.25, 0.5]) == ["0.00", "0.25", "0.50"]
    assert viz.format_ticks([-1, 0, 1]) == ["-1", "0", "1"]
    assert viz.format_ticks([0, 25000, 50000]) == ["0", "25k", "50k"]
    assert viz.format_ticks([0, 2.5e6, 5e6]) == ["0", "2.5M", "5.0M"]


# charts


def test_line_chart_size_content_and_series_colors():
    epochs = np.arange(1, 31)
    val = 1.0 / epochs + 0.2
    val[10:13] = np.nan  # a gap
    val[14] = np.nan  # leaves epoch 14 alone between gaps: drawn as a dot
    series = {"train": 1.0 / epochs, "val": (epochs, val), "one point": ([5], [0.7])}
    out = viz.line_chart(series, title="loss", xlabel="epoch", ylabel="loss", size=(420, 300))
    assert out.shape == (300, 420, 3) and out.dtype == np.uint8
    assert len(np.unique(out.reshape(-1, 3), axis=0)) > 20  # not blank
    for color in viz.series_colors(3):
        assert _has_color(out, color)


def test_line_chart_log_ylim_and_degenerate_input():
    out = viz.line_chart({"lr": [1e-3, 1e-4, 0.0, 1e-5]}, logy=True, size=(300, 200))
    assert out.shape == (200, 300, 3) and _has_color(out, viz.series_colors(1)[0])
    out = viz.line_chart({"flat": [0.5, 0.5]}, ylim=(0, 1), size=(300, 200))
    assert _has_color(out, viz.series_colors(1)[0])
    assert viz.line_chart({"empty": [math.nan, None]}, size=(300, 200)).shape == (200, 300, 3)
    with pytest.raises(ValueError, match="series 'bad'"):
        viz.line_chart({"bad": ([1, 2, 3], [1, 2])})
    with pytest.raises(ValueError):
        viz.line_chart({})


def test_bar_chart_size_content_and_series_colors():
    groups = {
        "unet_fp32": {"1 thread": 48.2, "4 threads": 16.1},
        "unet_int8": {"1 thread": 20.4, "4 threads": 7.05},
        "segformer_b0": {"1 thread": 110.5},  # a missing value
    }
    out = viz.bar_chart(groups, title="latency", ylabel="ms", size=(500, 320))
    assert out.shape == (320, 500, 3) and out.dtype == np.uint8
    for color in viz.series_colors(2):
        assert np.all(out == color, axis=-1).sum() > 500  # bars, not just the legend
    single = viz.bar_chart({"a": 1.0, "b": -0.5}, size=(300, 200))
    assert _has_color(single, viz.series_colors(1)[0])


def test_save_charts_write_pngs_of_the_requested_size(tmp_path):
    viz.save_line_chart(tmp_path / "line.png", {"a": [3, 1, 2]}, size=(320, 240))
    viz.save_bar_chart(tmp_path / "bar.png", {"g": {"s": 1.0}}, size=(330, 250))
    with Image.open(tmp_path / "line.png") as a, Image.open(tmp_path / "bar.png") as b:
        assert a.size == (320, 240) and b.size == (330, 250)
    assert sorted(os.listdir(tmp_path)) == ["bar.png", "line.png"]
