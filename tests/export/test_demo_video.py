"""kseg demo-video: Y4M and ffmpeg video I/O, the effects, the model heads, the command line.

The models are 1x1 convolutions with known weights, so what they segment is known: class 1
where red > 128, class 2 where green > 128 (3-class models), class 0 elsewhere.
"""

import doctest
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage

from export import effects, frames, runtime, video, video_io
from kseg.viz import overlay, palette
from tests.export.test_bench import tensorflow_blocked
from tests.export.test_runtime import tiny_models

MODEL_SIZE = (32, 48)  # h, w; the test frames are twice that
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                  reason="ffmpeg/ffprobe not installed (apt-get install ffmpeg; CI installs it)")


def _pixel_net(num_classes):
    """Logits [0, (R - 128) / 10, (G - 128) / 10][:K] per pixel, at MODEL_SIZE."""
    import keras

    image = keras.Input(shape=(*MODEL_SIZE, 3), batch_size=1, name="image")
    conv = keras.layers.Conv2D(num_classes, 1)
    model = keras.Model(image, conv(image))
    kernel = np.zeros((1, 1, 3, num_classes), np.float32)
    bias = np.zeros(num_classes, np.float32)
    for k in range(1, num_classes):
        kernel[0, 0, k - 1, k], bias[k] = 0.1, -12.8
    conv.set_weights([kernel, bias])
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """.tflite files: float logits (2 classes, no metadata) and 3-class heads with labels metadata."""
    from export.metadata import add_metadata
    from export.tflite import convert, device_model

    folder = tmp_path_factory.mktemp("video-models")
    paths = {"logits2": folder / "logits2.tflite"}
    paths["logits2"].write_bytes(convert(_pixel_net(2)))
    net = _pixel_net(3)
    labels = ["background", "red", "green"]
    for head in ("logits", "probabilities", "class_map"):
        content = convert(device_model(net, input_type="uint8", output=head))
        paths[head] = folder / f"{head}3.tflite"
        paths[head].write_bytes(add_metadata(content, labels=labels, name="pixels", version="1", mean=(0.0,) * 3,
                                             std=(1.0,) * 3, activation="softmax" if head == "logits" else "none"))
    paths["int8"] = Path(tiny_models()[0]["int8"])  # a quantized U-Net: uint8 in, uint8 logits out
    return {name: str(p) for name, p in paths.items()}


def _frame(seed=0, size=(64, 96)):
    """Textured RGB frame: a dark background, two red blocks, a green block, a red dot of 2x2 pixels."""
    rng = np.random.default_rng(seed)
    h, w = size
    f = np.stack([rng.integers(0, 90, (h, w)), rng.integers(0, 90, (h, w)), rng.integers(0, 255, (h, w))], -1)
    f[8:32, 8:40, 0] = rng.integers(180, 255, (24, 32))
    f[40:60, 56:88, 0] = rng.integers(180, 255, (20, 32))
    f[8:28, 48:88, 1] = rng.integers(180, 255, (20, 40))
    f[50:52, 10:12, 0] = 255
    return f.astype(np.uint8)


def _runner_classes(model, frame):
    """The class map at the frame's size, from runtime.Runner and frames.class_map (no effect code)."""
    info = runtime.describe(runtime.read_model(model))
    detail, _ = frames.image_input(info)
    with runtime.Runner(model) as runner:
        outputs = runner.run(frames.prepare_image(Image.fromarray(frame), detail))
        classes, k = frames.class_map(outputs, runner.outputs, (info["metadata"] or {}).get("activation"))
        scores = frames.probabilities(outputs, runner.outputs, (info["metadata"] or {}).get("activation"), k)
    full = np.asarray(Image.fromarray(classes.astype(np.int32)).resize(frame.shape[1::-1], Image.NEAREST))
    return full, scores, outputs


def _interior(mask, margin=3):
    return ndimage.binary_erosion(mask, iterations=margin, border_value=1)


# ----------------------------------------------------------------------------- Y4M


def test_docstring_examples_run():
    for module in (frames, effects, video_io):
        failures, attempted = doctest.testmod(module)
        assert failures == 0 and attempted > 0, module.__name__


def test_y4m_round_trip_is_limited_range_c420mpeg2(tmp_path):
    rows, cols = np.mgrid[0:48, 0:64].astype(np.float32)
    smooth = np.stack([rows * 5, cols * 4, 255 - rows * 2 - cols * 2], -1).clip(0, 255).astype(np.uint8)
    black, white = np.zeros_like(smooth), np.full_like(smooth, 255)
    path = tmp_path / "clip.y4m"
    assert video_io.write_y4m(path, [smooth, black, white], fps=30) == 3
    data = path.read_bytes()
    header, rest = data.split(b"\n", 1)
    assert header.split()[:4] == [b"YUV4MPEG2", b"W64", b"H48", b"F30:1"] and b"C420mpeg2" in header.split()
    frame_bytes = 6 + 64 * 48 * 3 // 2
    assert len(rest) == 3 * frame_bytes
    y_black = rest[frame_bytes + 6: frame_bytes + 6 + 64 * 48]
    y_white = rest[2 * frame_bytes + 6: 2 * frame_bytes + 6 + 64 * 48]
    assert set(y_black) == {16} and set(y_white) == {235}  # limited range
    assert set(rest[frame_bytes + 6 + 64 * 48: 2 * frame_bytes]) == {128}  # grey has no chroma

    back = list(video_io.read_y4m(path))
    assert len(back) == 3 and back[0].shape == (48, 64, 3) and back[0].dtype == np.uint8
    error = np.abs(back[0].astype(int) - smooth)
    assert error.max() <= 4 and error[1:-1, 1:-1].max() <= 2 and error.mean() < 0.5  # 4:2:0 rounding
    assert (back[1] == 0).all() and (back[2] == 255).all()
    reader = video_io.Y4MReader(path)
    assert (reader.width, reader.height, reader.fps, reader.frames) == (64, 48, 30, 3)
    reader.close()


@needs_ffmpeg
def test_y4m_layout_agrees_with_ffmpeg(tmp_path):
    rows, cols = np.mgrid[0:48, 0:64].astype(np.float32)
    smooth = np.stack([40 + rows * 3, 20 + cols * 3, 230 - rows * 2 - cols * 2], -1).astype(np.uint8)
    ours = tmp_path / "ours.y4m"
    video_io.write_y4m(ours, [smooth])
    accurate = "scale=flags=accurate_rnd+full_chroma_int+bicubic"  # ffmpeg's default 4:2:0 -> RGB path is coarser
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(ours), "-vf", accurate, "-f", "rawvideo",
                              "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    assert np.abs(np.frombuffer(decoded, np.uint8).reshape(48, 64, 3).astype(int) - smooth).max() <= 4
    for pix_fmt, tag in (("yuv420p", b"C420jpeg"), ("yuv444p", b"C444")):
        theirs = tmp_path / f"{pix_fmt}.y4m"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48", "-i", "-",
                        "-pix_fmt", pix_fmt, "-strict", "-1", str(theirs)], input=smooth.tobytes(), check=True)
        assert tag in theirs.read_bytes().split(b"\n", 1)[0].split()
        (frame,) = video_io.read_y4m(theirs)
        assert np.abs(frame.astype(int) - smooth).max() <= 3, pix_fmt


def test_y4m_errors_name_the_file_and_the_problem(tmp_path):
    mono = tmp_path / "mono.y4m"
    mono.write_bytes(b"YUV4MPEG2 W4 H4 F25:1 Cmono\nFRAME\n" + bytes(16))
    with pytest.raises(frames.InputError, match=r"mono.y4m: Y4M colour space Cmono is not supported; expected one of"):
        list(video_io.read_y4m(mono))
    short = tmp_path / "short.y4m"
    short.write_bytes(b"YUV4MPEG2 W4 H4 F25:1 C420mpeg2\nFRAME\n" + bytes(10))
    with pytest.raises(frames.InputError, match="short.y4m: frame 0 is truncated: 10 of 24 bytes"):
        list(video_io.read_y4m(short))
    with pytest.raises(ValueError, match="even width and height; the frames are 5x4"):
        video_io.write_y4m(tmp_path / "odd.y4m", [np.zeros((4, 5, 3), np.uint8)])
    assert not (tmp_path / "odd.y4m").exists()


def test_an_interrupted_write_leaves_the_previous_file_and_no_temporary_file(tmp_path):
    out = tmp_path / "out.y4m"
    out.write_bytes(b"previous")

    def frames_then_ctrl_c():
        yield np.zeros((4, 6, 3), np.uint8)
        yield np.zeros((4, 6, 3), np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        video_io.write_y4m(out, frames_then_ctrl_c())
    assert out.read_bytes() == b"previous" and os.listdir(tmp_path) == ["out.y4m"]


@needs_ffmpeg
def test_an_interrupted_ffmpeg_write_leaves_no_partial_file(tmp_path):
    from kseg.utils import atomic_path

    out = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(out) as tmp, video_io.open_writer(tmp, 96, 64, fps=10) as writer:
            writer.write(_frame())
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- model heads and effects


def test_every_head_gives_the_same_scores(models):
    frame = _frame()
    classes, logits_scores, (logits,) = _runner_classes(models["logits"], frame)
    assert np.allclose(logits_scores.sum(-1), 1.0, atol=1e-5)
    assert np.allclose(logits_scores, frames._softmax(logits[0]), atol=1e-6)  # metadata activation: softmax
    red, green = frame[..., 0] > 128, frame[..., 1] > 128
    assert (classes[_interior(red & ~green)] == 1).all() and (classes[_interior(green & ~red)] == 2).all()
    assert (classes[_interior(~red & ~green)] == 0).all()
    for head in ("probabilities", "class_map"):
        head_classes, scores, _ = _runner_classes(models[head], frame)
        np.testing.assert_array_equal(head_classes, classes)
        np.testing.assert_allclose(scores.max(-1), logits_scores.max(-1), atol=1e-5)
    _, scores, (quantized,) = _runner_classes(models["int8"], np.asarray(Image.fromarray(frame).resize((64, 64))))
    assert quantized.dtype == np.uint8 and scores.dtype == np.float32 and np.allclose(scores.sum(-1), 1.0, atol=1e-5)


def test_probabilities_of_one_channel_and_quantized_outputs():
    plain, q = {"quantization": (0.0, 0)}, {"quantization": (0.5, 10)}
    logit = np.array([-2.0, 0.0, 3.0], np.float32).reshape(1, 1, 3, 1)
    sigmoid = 1 / (1 + np.exp(-logit[0, ..., 0]))
    for activation in (None, "sigmoid"):  # logits outside [0, 1] get a sigmoid without metadata too
        np.testing.assert_allclose(frames.probabilities([logit], [plain], activation)[..., 1], sigmoid, rtol=1e-6)
    already = np.array([0.2, 0.7], np.float32).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(frames.probabilities([already], [plain], "none")[0], [[0.8, 0.2], [0.3, 0.7]])
    np.testing.assert_array_equal(frames.class_map([already], [plain], "none")[0], [[0, 1]])  # the same decision
    stored = np.array([10, 14], np.uint8).reshape(1, 1, 1, 2)  # dequantized: logits [0, 2]
    expected = frames._softmax(np.array([0.0, 2.0]))
    np.testing.assert_allclose(frames.probabilities([stored], [q], "softmax")[0, 0], expected, rtol=1e-6)
    ids, confidence = np.array([[[2]]], np.int32), np.array([[[26]]], np.uint8)  # confidence (26 - 10) * 0.05 = 0.8
    scores = frames.probabilities([ids, confidence], [plain, {"quantization": (0.05, 10)}], num_classes=3)
    np.testing.assert_allclose(scores[0, 0], [0.1, 0.1, 0.8], rtol=1e-6)


def test_replace_keeps_the_foreground_and_paints_the_background(models, tmp_path):
    frame = _frame()
    classes, scores, _ = _runner_classes(models["logits2"], frame)
    out = effects.apply_effect(frame, scores, "replace", background=(255, 0, 255))
    foreground, background = _interior(classes == 1, 2), _interior(classes == 0, 2)
    assert foreground.sum() > 1000 and background.sum() > 1000
    np.testing.assert_array_equal(out[foreground], frame[foreground])
    assert (out[background] == (255, 0, 255)).all()
    edge = ~foreground & ~background  # soft: between the frame and the colour
    assert ((out[edge] >= np.minimum(frame[edge], (255, 0, 255))) & (out[edge] <= np.maximum(frame[edge], (255, 0, 255)))).all()
    picture = np.random.default_rng(1).integers(0, 255, (32, 48, 3)).astype(np.uint8)  # resized to the frame
    out = effects.apply_effect(frame, scores, "replace", background=picture)
    assert (out[background] == np.asarray(Image.fromarray(picture).resize((96, 64), Image.BILINEAR))[background]).all()


def test_blur_blends_a_sharp_foreground_over_a_blurred_background(models):
    frame = _frame()
    blurred = np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(3)))
    everything = np.zeros((32, 48, 2), np.float32)
    np.testing.assert_array_equal(effects.apply_effect(frame, everything + [0, 1], "blur", blur_radius=3), frame)
    np.testing.assert_array_equal(effects.apply_effect(frame, everything + [1, 0], "blur", blur_radius=3), blurred)
    half = effects.apply_effect(frame, everything + 0.5, "blur", blur_radius=3).astype(int)
    assert np.abs(half - (frame.astype(int) + blurred) / 2).max() <= 0.5 + 1e-6
    classes, scores, _ = _runner_classes(models["logits2"], frame)
    out = effects.apply_effect(frame, scores, "blur", blur_radius=3)
    foreground, background = _interior(classes == 1), _interior(classes == 0)
    np.testing.assert_array_equal(out[foreground], frame[foreground])
    np.testing.assert_array_equal(out[background], blurred[background])


def test_classes_is_kseg_viz_overlay_of_the_model_class_map(models):
    frame = np.asarray(Image.fromarray(_frame()).resize((128, 128)))
    classes, scores, _ = _runner_classes(models["int8"], frame)
    expected = overlay(frame, classes, palette(3), alpha=0.5)
    np.testing.assert_array_equal(effects.apply_effect(frame, scores, "classes"), expected)
    np.testing.assert_array_equal(effects.apply_effect(frame, scores.argmax(-1), "classes"), expected)


def test_outlines_draw_only_on_region_borders_and_skip_small_regions(models):
    frame = _frame()
    classes, scores, _ = _runner_classes(models["logits"], frame)
    out = effects.apply_effect(frame, scores, "outlines", labels=["background", "red", "green"], thickness=1,
                              min_area=40)
    changed = (out != frame).any(-1)
    regions, count = ndimage.label(classes > 0)
    boxes = np.zeros_like(changed)
    colors = palette(3)
    kept = 0
    for k, box in enumerate(ndimage.find_objects(regions), start=1):
        region = regions == k
        border = region & ~ndimage.binary_erosion(region, np.ones((3, 3)), border_value=1)
        if region.sum() < 40:  # the 2x2 red dot
            assert not changed[ndimage.binary_dilation(region, iterations=2)].any()
            continue
        kept += 1
        c = classes[region][0]
        assert (out[border] == colors[c]).all(), f"region {k} (class {c}) has no complete outline"
        boxes[box] = True
    assert kept == 3
    # Outside the borders only the labels are drawn, each inside its region's bounding box.
    borders = (ndimage.maximum_filter(classes, 3) != classes) | (ndimage.minimum_filter(classes, 3) != classes)
    assert not (changed & ~borders & ~boxes).any()
    assert (changed & ~borders).sum() > 20  # the labels are there


def test_regions_and_square_filters_equal_scipy_ndimage():
    """The outlines effect finds regions and borders with numpy alone (the edge install has no scipy)."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = rng.integers(1, 30, 2)
        mask = rng.uniform(size=(h, w)) < rng.uniform(0.0, 1.0)
        ids, count = effects.label_regions(mask)
        expected, expected_count = ndimage.label(mask)  # 4-connected, numbered in raster order
        assert count == expected_count and np.array_equal(ids, expected), trial
        values, radius = rng.integers(0, 5, (h, w)), int(rng.integers(0, 4))
        for reduce, reference in ((np.maximum, ndimage.maximum_filter), (np.minimum, ndimage.minimum_filter)):
            np.testing.assert_array_equal(effects.square_filter(values, radius, reduce),
                                          reference(values, 2 * radius + 1, mode="nearest"))
    snake = np.zeros((40, 30), bool)  # one region that winds back and forth: the slowest case for merging
    snake[::2] = True
    snake[1::4, -1] = snake[3::4, 0] = True
    assert effects.label_regions(snake)[1] == 1


# ----------------------------------------------------------------------------- command line


def _y4m_input(path, count=6):
    video_io.write_y4m(path, [_frame(seed) for seed in range(count)], fps=12)
    return str(path)


def _fps(stdout):
    return float(re.search(r"end to end: +([\d.]+) FPS", stdout).group(1))


def test_demo_video_on_y4m_writes_every_frame_and_prints_fps(models, tmp_path, capsys):
    from kseg import cli

    source = _y4m_input(tmp_path / "in.y4m")
    out, report = tmp_path / "out.y4m", tmp_path / "r.json"
    code = cli.main(["demo-video", "--model", models["logits2"], "--input", source, "--output", str(out),
                     "--effect", "replace", "--background", "255,0,255", "--threads", "1", "--json", str(report)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    written = list(video_io.read_y4m(out))
    assert len(written) == 6 and written[0].shape == (64, 96, 3)
    assert _fps(stdout) > 0 and "inference only" in stdout and "6 frames of 96x64" in stdout
    result = json.loads(report.read_text())
    assert result["frames"] == 6 and result["video_size"] == [96, 64] and result["effect"] == "replace"
    assert result["end_to_end_fps"] > 0 and result["inference_fps"] > result["end_to_end_fps"]
    assert 0 < result["inference_median_ms"] <= result["inference_p90_ms"]
    assert result["stages_ms"]["inference"]["runs"] == 6 and result["model_input"]["shape"] == [1, 32, 48, 3]
    # The background (as the model sees the decoded input) is magenta, within Y4M's rounding.
    decoded = next(video_io.read_y4m(source))
    classes, _, _ = _runner_classes(models["logits2"], decoded)
    background = _interior(classes == 0, 2)
    assert np.abs(written[0][background].astype(int) - (255, 0, 255)).max() <= 6


@needs_ffmpeg
def test_demo_video_mp4_round_trip(models, tmp_path, capsys):
    source = _y4m_input(tmp_path / "in.y4m", count=8)
    mp4, back = tmp_path / "out.mp4", tmp_path / "back.y4m"
    assert video.main(["--model", models["logits2"], "--input", source, "--output", str(mp4)]) == 0
    assert "effect blur" in capsys.readouterr().out  # the default for a 2-class model
    with video_io.open_video(mp4) as reader:
        assert (reader.width, reader.height, reader.fps) == (96, 64, 12)
        decoded = list(reader)
    assert len(decoded) == 8 and decoded[0].shape == (64, 96, 3)
    assert video.main(["--model", models["class_map"], "--input", str(mp4), "--output", str(back),
                       "--max-frames", "5"]) == 0
    assert "effect classes" in capsys.readouterr().out  # the default for 3 classes
    assert len(list(video_io.read_y4m(back))) == 5


def test_demo_video_imports_no_tensorflow(models, tmp_path):
    env, blocked = tensorflow_blocked(tmp_path)
    source = _y4m_input(tmp_path / "in.y4m", count=3)
    out = tmp_path / ("out.mp4" if shutil.which("ffmpeg") else "out.y4m")
    command = [sys.executable, "-m", "kseg.cli", "demo-video", "--model", models["class_map"], "--input", source,
               "--output", str(out), "--effect", "outlines"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not blocked.exists(), f"tried to import {blocked.read_text().split()}"
    assert out.stat().st_size > 0 and _fps(result.stdout) > 0


def _bad_inputs(models, tmp_path):
    source = _y4m_input(tmp_path / "in.y4m", count=2)
    text = tmp_path / "notes.tflite"
    text.write_text("a text file, not the weights of a model\n")
    garbage = tmp_path / "garbage.y4m"
    garbage.write_bytes(b"\x00\x01 not a video")
    odd = tmp_path / "odd.y4m"
    odd.write_bytes(b"YUV4MPEG2 W5 H4 F25:1 C444\nFRAME\n" + bytes(60))
    out = str(tmp_path / "out.y4m")
    base = ["--model", models["logits2"], "--input", source, "--output", out]
    return {
        "missing model": (["--model", str(tmp_path / "nope.tflite"), "--input", source, "--output", out],
                          "--model", "nope.tflite: no such file"),
        "not a model": (["--model", str(text), "--input", source, "--output", out], "--model", "not a TFLite flatbuffer"),
        "missing video": (["--model", models["logits2"], "--input", str(tmp_path / "gone.mp4"), "--output", out],
                          "--input", "gone.mp4: no such video file"),
        "not a video": (["--model", models["logits2"], "--input", str(garbage), "--output", out],
                        "--input", "not a YUV4MPEG2 file"),
        "odd size": (["--model", models["logits2"], "--input", str(odd), "--output", out],
                     "--input", "the frames are 5x4; the output's 4:2:0 chroma needs an even width and height"),
        "bad colour": (base + ["--effect", "replace", "--background", "greenish"], "--background 'greenish'",
                       "expected #RRGGBB"),
        "missing background image": (base + ["--effect", "replace", "--background", str(tmp_path / "bg.png")],
                                     "bg.png", "no such image file"),
        "background without replace": (base + ["--effect", "blur", "--background", "red"], "--background red",
                                       "only --effect replace uses it"),
        "threads": (base + ["--threads", "0"], "--threads 0", "expected an integer >= 1"),
        "output folder": (["--model", models["logits2"], "--input", source, "--output", str(tmp_path)], "--output",
                          "is a directory"),
    }


@pytest.mark.parametrize("case", ["missing model", "not a model", "missing video", "not a video", "odd size",
                                  "bad colour", "missing background image", "background without replace", "threads",
                                  "output folder"])
def test_bad_input_exits_2_naming_the_argument(models, tmp_path, capsys, case):
    argv, name, problem = _bad_inputs(models, tmp_path)[case]
    assert video.main(argv) == video.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and name in err and problem in err, err
    assert not (tmp_path / "out.y4m").exists()


def test_unknown_effect_and_missing_ffmpeg_exit_2(models, tmp_path, capsys, monkeypatch):
    source = _y4m_input(tmp_path / "in.y4m", count=2)
    with pytest.raises(SystemExit) as exit_:
        video.main(["--model", models["logits2"], "--input", source, "--output", "o.y4m", "--effect", "sparkle"])
    assert exit_.value.code == 2 and "--effect: invalid choice: 'sparkle'" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert video.main(["--model", models["logits2"], "--input", source, "--output", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert "--output" in err and "`ffmpeg` is not installed" in err and ".y4m" in err and "apt-get install ffmpeg" in err


def test_ctrl_c_during_a_run_keeps_the_previous_output(models, tmp_path, capsys, monkeypatch):
    source = _y4m_input(tmp_path / "in.y4m", count=6)
    out = tmp_path / "out.y4m"
    out.write_bytes(b"previous")
    calls = []

    def effect_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return args[0]

    monkeypatch.setattr(video, "apply_effect", effect_then_ctrl_c)
    assert video.main(["--model", models["logits2"], "--input", source, "--output", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert out.read_bytes() == b"previous" and sorted(os.listdir(tmp_path)) == ["in.y4m", "out.y4m"]
