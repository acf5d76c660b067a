"""kseg demo-video on detectors: Mask R-CNN instances and Panoptic FPN / MaskFormer panoptic maps.

The drawing is checked on hand-made output dicts (what is drawn is known exactly); the command line
on a real tiny Panoptic FPN exported by export.tflite.detector_tflite (it has both the instance and
the panoptic outputs), against its own signature outputs read by LiteRT's signature runner.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export import frames, video, video_detections, video_io
from kseg.viz import instance_colors, instance_overlay, mask_outline, palette, panoptic_overlay

MODEL_SIZE = (32, 48)  # h, w of the hand-made outputs; the frames are twice that
CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "sky"},
              {"id": 4, "name": "road"}]


def _frame(seed=0, size=(64, 96)):
    """A dark textured frame: no pixel is near a drawing colour, so every tinted pixel changes."""
    return np.random.default_rng(seed).integers(0, 40, (*size, 3)).astype(np.uint8)


def _block(top, left, bottom, right, size=MODEL_SIZE, value=1.0):
    m = np.zeros(size, np.float32)
    m[top:bottom, left:right] = value
    return m


def _instance_outputs():
    """Four slots at MODEL_SIZE: two kept detections, one scoring 0.3, one past num_detections."""
    masks = np.stack([_block(2, 2, 14, 14), _block(20, 26, 30, 46), _block(2, 30, 12, 46, value=0.9),
                      _block(20, 2, 30, 12, value=0.9)])
    masks[0, 6, 6] = 0.0  # a hole
    boxes = np.array([[2, 2, 14, 14], [20, 26, 30, 46], [2, 30, 12, 46], [20, 2, 30, 12]], np.float32)
    return {"boxes": boxes, "scores": np.array([0.9, 0.7, 0.3, 0.95], np.float32),
            "classes": np.array([2, 1, 1, 2], np.int32), "masks": masks, "num_detections": np.int32(3)}


def test_instances_are_drawn_exactly_inside_their_masks():
    frame, outputs = _frame(), _instance_outputs()
    drawn = video_detections.instances_at(outputs, frame.shape[:2], score_threshold=0.5)
    assert drawn["classes"].tolist() == [2, 1] and drawn["scores"].tolist() == pytest.approx([0.9, 0.7])
    # A 0/1 mask upsampled 2x bilinearly and thresholded at 0.5 is its nearest-neighbour upsampling.
    expected_masks = np.kron(outputs["masks"][:2] >= 0.5, np.ones((2, 2), bool))
    np.testing.assert_array_equal(drawn["masks"], expected_masks)
    np.testing.assert_allclose(drawn["boxes"], outputs["boxes"][:2] * 2)
    out = video_detections.draw_instances(frame, drawn, CATEGORIES)
    np.testing.assert_array_equal(out, instance_overlay(frame, expected_masks, [2, 1], [0.9, 0.7],
                                                        outputs["boxes"][:2] * 2, labels={1: "circle", 2: "square"},
                                                        alpha=0.5))
    changed = (out != frame).any(-1)
    inside = expected_masks.any(0)
    assert changed[inside].all()  # every pixel of a kept mask, in its own colour
    # A label patch goes just above its box's top-left corner, or just inside it when there is no room above.
    label_rows = np.zeros(frame.shape[:2], bool)
    for y1, x1, _, _ in drawn["boxes"].astype(int):
        label_rows[max(0, y1 - 14):y1 + 14] = True
    colors = instance_colors(2)
    for k in range(2):  # inside its outline, a mask pixel is the frame tinted with the detection's own colour
        core = expected_masks[k] & ~mask_outline(expected_masks[k]) & ~label_rows
        assert core.sum() > 100
        np.testing.assert_array_equal(out[core], np.rint(0.5 * frame[core] + 0.5 * colors[k].astype(np.float32)))
        outline = mask_outline(expected_masks[k]) & ~label_rows
        assert outline.sum() > 10 and (out[outline] == colors[k]).all()
    # Outside the masks only the labels are drawn (the boxes are the masks' bounding boxes, so their outlines
    # lie on the masks); the low-score and padded slots are not drawn at all.
    assert changed[~inside].any() and not (changed & ~inside & ~label_rows).any()
    for k in (2, 3):
        region = np.kron(outputs["masks"][k] > 0, np.ones((2, 2), bool)) & ~label_rows
        assert region.sum() >= 100 and not changed[region].any()


def test_no_detection_leaves_the_frame_as_it_is():
    frame, outputs = _frame(1), _instance_outputs()
    outputs["num_detections"] = np.int32(0)
    drawn = video_detections.instances_at(outputs, frame.shape[:2])
    assert drawn["masks"].shape == (0, 64, 96)
    np.testing.assert_array_equal(video_detections.draw_instances(frame, drawn, CATEGORIES), frame)


def _panoptic_outputs():
    """Segments 1 (circle, thing), 2 (square, thing), 3 (sky, stuff), 4 (road, stuff); slot 5 past num_segments."""
    ids = np.zeros(MODEL_SIZE, np.int32)
    ids[:12] = 3
    ids[20:] = 4
    ids[4:14, 6:14] = 1
    ids[22:30, 30:44] = 2
    ids[14:18, 0:8] = 5  # beyond num_segments: void
    return {"panoptic": ids, "segment_category": np.array([1, 2, 3, 4, 1, 0], np.int32),
            "segment_is_thing": np.array([1, 1, 0, 0, 1, 0], bool),
            "segment_score": np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0], np.float32), "num_segments": np.int32(4)}


def test_panoptic_colours_follow_the_map():
    frame, outputs = _frame(2), _panoptic_outputs()
    drawn = video_detections.panoptic_at(outputs, frame.shape[:2])
    full = np.kron(np.where(outputs["panoptic"] <= 4, outputs["panoptic"], 0), np.ones((2, 2), np.int32))
    np.testing.assert_array_equal(drawn["panoptic"], full)
    assert sorted(drawn["segments"]) == [1, 2, 3, 4] and drawn["segments"][3] == {
        "category_id": 3, "isthing": False, "score": pytest.approx(0.7)}
    out = video_detections.draw_panoptic(frame, drawn, CATEGORIES[::-1])  # coloured in id order, whatever the list's
    np.testing.assert_array_equal(out, panoptic_overlay(frame, full, drawn["segments"], CATEGORIES, alpha=0.5))
    labels = np.zeros(full.shape, bool)  # each thing's label patch: just above its top, or just below without room
    for sid in (1, 2):
        rows, cols = np.nonzero(full == sid)
        top = rows.min()  # full width: a patch near the right edge moves left
        start = top - 14 if top >= 14 else top  # above the segment when there is room, else inside it
        labels[start:start + 14] = True
    void = (full == 0) & ~labels
    np.testing.assert_array_equal(out[void], frame[void])  # the void rows and the segment past num_segments
    stuff_colors = palette(4)
    for sid in (3, 4):  # stuff: the frame tinted with its category's colour
        region = (full == sid) & ~labels
        np.testing.assert_array_equal(out[region], np.rint(0.5 * frame[region] + 0.5 * stuff_colors[sid - 1]))
    assert (out[labels] != frame[labels]).any(-1).sum() > 50  # the labels are there
    things = instance_colors(2)
    for k, sid in enumerate((1, 2)):  # things: tinted with their own colours inside a white outline
        region = full == sid
        outline = mask_outline(region)
        inner = region & ~outline & ~labels
        assert inner.sum() >= 60
        np.testing.assert_array_equal(out[inner], np.rint(0.5 * frame[inner] + 0.5 * things[k].astype(np.float32)))
        assert (out[outline & ~labels] == 255).all()


def test_class_names_from_labels_a_json_file_or_the_run_beside_the_model(tmp_path):
    model = tmp_path / "run" / "export" / "m_int8.tflite"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    with pytest.raises(frames.InputError, match=r"m_int8.tflite: a detector without class names: no \"categories\" "
                                                r"in .*export_report.json, .*run.json; expected --labels"):
        video_detections.read_categories(model)
    run = {"task": "panoptic", "categories": [{"id": 1, "name": "circle", "isthing": 1}, {"id": 4, "name": "sky"}]}
    (tmp_path / "run" / "run.json").write_text(json.dumps(run))
    categories, source = video_detections.read_categories(model)
    assert categories == [{"id": 1, "name": "circle"}, {"id": 4, "name": "sky"}] and source.endswith("run/run.json")
    assert video_detections.read_categories(model, "a, b")[0] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    names = tmp_path / "names.json"
    names.write_text('["x", "y"]')
    assert video_detections.read_categories(model, str(names))[0] == [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]
    names.write_text('{"categories": 3}')
    with pytest.raises(frames.InputError, match=r"--labels .*names.json: found int 3; expected a \"categories\" list"):
        video_detections.read_categories(model, str(names))
    with pytest.raises(frames.InputError, match="--labels 'a,,b': an empty name"):
        video_detections.read_categories(model, "a,,b")


# ----------------------------------------------------------------------------- command line


def _pixel_detector():
    """A Keras model with a kseg Panoptic FPN's named outputs at 32x48 whose detections are known: slot 0
    (class 1, "circle", 0.9) is where red > 128, slot 1 (class 2, 0.8) where green > 128, slot 2 (0.2) red
    again; segments: 1 the red pixels (circle), 2 the other green ones (square), 3 the rest (road, stuff)."""
    import keras
    import tensorflow as tf

    class PixelDetections(keras.layers.Layer):
        def call(self, image):
            red, green = image[..., 0] > 128, image[..., 1] > 128
            zero = tf.reduce_sum(image) * 0.0  # constants that depend on the input stay outputs of the graph
            izero = tf.cast(zero, tf.int32)
            as_float = lambda m: tf.cast(m, tf.float32)
            panoptic = tf.where(red, 1, tf.where(green, 2, 3))
            return {
                "masks": tf.stack([as_float(red), as_float(green), as_float(red)], axis=1),
                "boxes": tf.constant([[[2, 2, 20, 30], [4, 20, 28, 46], [0, 0, 8, 8]]], tf.float32) + zero,
                "scores": tf.constant([[0.9, 0.8, 0.2]]) + zero,
                "classes": tf.constant([[1, 2, 1]]) + izero,
                "num_detections": tf.constant([3]) + izero,
                "panoptic": tf.cast(panoptic, tf.int32) + izero,
                "segment_category": tf.constant([[1, 2, 4]]) + izero,
                "segment_is_thing": tf.constant([[True, True, False]]),
                "segment_score": tf.constant([[0.9, 0.8, 0.7]]) + zero,
                "num_segments": tf.constant([3]) + izero,
            }

    image = keras.Input((*MODEL_SIZE, 3), batch_size=1, name="image")
    return keras.Model(image, PixelDetections()(image))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """`_pixel_detector` as RUN/export/pixels_fp32.tflite with RUN/run.json (what `kseg export --run RUN`
    leaves), a boxes-and-scores-only model, and a 3-frame Y4M video of 96x64 with red and green blocks."""
    import keras

    from export.tflite import convert

    run = tmp_path_factory.mktemp("run")
    (run / "export").mkdir()
    model = run / "export" / "pixels_fp32.tflite"
    model.write_bytes(convert(_pixel_detector()))
    categories = [{"id": 1, "name": "circle", "isthing": 1}, {"id": 2, "name": "square", "isthing": 1},
                  {"id": 3, "name": "sky", "isthing": 0}, {"id": 4, "name": "road", "isthing": 0}]
    (run / "run.json").write_text(json.dumps({"task": "panoptic", "categories": categories}))
    image = keras.Input((16, 16, 3), batch_size=1, name="image")
    flat = keras.layers.Flatten()(keras.layers.Conv2D(1, 1)(image))
    wrong = run / "boxes_only.tflite"
    wrong.write_bytes(convert(keras.Model(image, {"boxes": keras.layers.Reshape((4, 4))(flat[:, :16]),
                                                  "scores": flat[:, :4]})))
    segmenter = run / "segmenter.tflite"  # 2-class logits [1, 16, 16, 2]
    segmenter.write_bytes(convert(keras.Model(image, keras.layers.Conv2D(2, 1)(image))))
    foreign = run / "foreign.tflite"  # three outputs with names no kseg model gives
    conv = keras.layers.Conv2D(3, 1)(image)
    foreign.write_bytes(convert(keras.Model(image, {"detection_boxes": flat[:, :8], "detection_scores": flat[:, :2],
                                                    "heat": conv})))
    clips = []
    for seed in range(3):
        f = _frame(seed)
        f[8:40, 8:40, 0] = 230
        f[20:56, 48:90, 1] = 230
        clips.append(f)
    clip = run / "in.y4m"
    video_io.write_y4m(clip, clips, fps=10)
    return {"model": str(model), "wrong": str(wrong), "segmenter": str(segmenter), "foreign": str(foreign),
            "video": str(clip), "categories": categories, "size": MODEL_SIZE}


def _expected_video(model, source, effect, categories, tmp_path, score_threshold, size):
    """What demo-video should write, from LiteRT's signature runner on the decoded frames, through Y4M."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=model).get_signature_runner()
    pictures, counts, masks = [], [], []
    for frame in video_io.read_y4m(source):
        x = frames.prepare_image(Image.fromarray(frame), {"shape": (1, *size, 3), "dtype": "float32"})
        outputs = {k: v[0] for k, v in runner(image=x).items()}
        if effect == "instances":
            drawn = video_detections.instances_at(outputs, frame.shape[:2], score_threshold)
            pictures.append(video_detections.draw_instances(frame, drawn, categories))
            masks.append(drawn["masks"].any(0))
        else:
            drawn = video_detections.panoptic_at(outputs, frame.shape[:2])
            pictures.append(video_detections.draw_panoptic(frame, drawn, categories))
            masks.append(drawn["panoptic"] > 0)
        counts.append(video_detections.object_count(drawn))
    path = tmp_path / f"expected_{effect}.y4m"
    video_io.write_y4m(path, pictures, fps=10)
    return list(video_io.read_y4m(path)), counts, masks


def _check_demo_video(setup, effect, tmp_path, capsys, kind, extra=(), score_threshold=0.5):
    """demo-video on `setup`'s model writes exactly `_expected_video`; returns the written and source frames."""
    out, report = tmp_path / "out.y4m", tmp_path / "r.json"
    argv = ["--model", setup["model"], "--input", setup["video"], "--output", str(out), "--threads", "1",
            "--json", str(report), *extra]
    assert video.main(argv) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert f"(effect {effect})" in stdout and kind in stdout and "run.json" in stdout
    written = list(video_io.read_y4m(out))
    expected, counts, masks = _expected_video(setup["model"], setup["video"], effect, setup["categories"], tmp_path,
                                              score_threshold, setup["size"])
    assert len(written) == 3 and min(counts) > 0
    for got, want in zip(written, expected):
        np.testing.assert_array_equal(got, want)
    result = json.loads(report.read_text())
    assert result["effect"] == effect and result["detector"]["model"] == kind
    assert result["detector"]["objects_per_frame"]["median"] == float(np.median(counts))
    return written, list(video_io.read_y4m(setup["video"])), masks


def test_demo_video_draws_instances_inside_their_masks(detector, tmp_path, capsys):
    written, source, masks = _check_demo_video(detector, "instances", tmp_path, capsys, "Panoptic FPN",
                                               ["--effect", "instances"])
    for got, frame, inside in zip(written, source, masks):
        red = np.zeros(frame.shape[:2], bool)
        red[10:38, 10:38] = True  # inside the red block, away from its edges (and the 4:2:0 chroma's)
        assert inside[red].all() and (np.abs(got[red].astype(int) - frame[red]).max(-1) > 20).all()


def test_demo_video_draws_the_panoptic_map(detector, tmp_path, capsys):
    written, source, masks = _check_demo_video(detector, "panoptic", tmp_path, capsys, "Panoptic FPN")
    assert all(m.all() for m in masks)  # no void: every pixel is tinted


@pytest.mark.slow
def test_demo_video_runs_an_exported_panoptic_fpn(tmp_path, capsys):
    """A tiny untrained Panoptic FPN exported by export.tflite.detector_tflite, drawn both ways."""
    from export.tflite import detector_tflite
    from kseg.models import build_model

    model = build_model("panoptic_fpn", "small", num_classes=2, num_stuff_classes=2, input_shape=(64, 64, 3),
                        semantic_channels=32)
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    path = run / "export" / "panoptic_fpn_fp32.tflite"
    path.write_bytes(detector_tflite(model, "fp32"))
    categories = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "sky"},
                  {"id": 4, "name": "road"}]
    (run / "run.json").write_text(json.dumps({"task": "panoptic", "categories": categories}))
    clip = run / "in.y4m"
    rng = np.random.default_rng(0)
    video_io.write_y4m(clip, [rng.integers(0, 255, (96, 128, 3)).astype(np.uint8) for _ in range(3)], fps=10)
    setup = {"model": str(path), "video": str(clip), "categories": categories, "size": (64, 64)}
    _check_demo_video(setup, "panoptic", tmp_path, capsys, "Panoptic FPN")
    # Untrained, every detection scores about 1 / (K + 1): drawn with --score-threshold 0.
    _check_demo_video(setup, "instances", tmp_path, capsys, "Panoptic FPN", ["--effect", "instances",
                                                                            "--score-threshold", "0"], 0.0)


@pytest.mark.parametrize("case", ["no labels", "bad labels file", "wrong signature", "segmenter effect",
                                  "threshold with panoptic", "instances on a segmenter", "labels on a segmenter",
                                  "foreign outputs"])
def test_detector_bad_input_exits_2_with_one_line(detector, tmp_path, capsys, case):
    lone = tmp_path / "alone" / "pixels_int8.tflite"  # no run.json beside it nor above it
    lone.parent.mkdir()
    shutil.copy(detector["model"], lone)
    bad = tmp_path / "labels.json"
    bad.write_text("{not json")
    argv, words = {
        "no labels": (["--model", str(lone)], ["pixels_int8.tflite: a detector without class names",
                                                "expected --labels"]),
        "bad labels file": (["--model", str(lone), "--labels", str(bad)], ["--labels", "labels.json",
                                                                            "cannot read it as JSON"]),
        "wrong signature": (["--model", detector["wrong"]], ["boxes_only.tflite: outputs ['boxes', 'scores']",
                                                             "expected a kseg detector's: boxes, scores, classes"]),
        "segmenter effect": (["--model", detector["model"], "--effect", "blur"],
                             ["--effect blur", "is a Panoptic FPN; expected --effect instances or panoptic"]),
        "threshold with panoptic": (["--model", detector["model"], "--score-threshold", "0.2"],
                                    ["--score-threshold 0.2", "with --effect instances (the effect is panoptic)"]),
        "instances on a segmenter": (["--model", detector["segmenter"], "--effect", "instances"],
                                     ["--effect instances", "segmenter.tflite is a segmenter (outputs [[1, 16, 16, 2]])",
                                      "expected one of blur, replace, classes, outlines"]),
        "labels on a segmenter": (["--model", detector["segmenter"], "--labels", "a,b"],
                                  ["--labels a,b: only detectors use it", "segmenter.tflite is a segmenter"]),
        "foreign outputs": (["--model", detector["foreign"]],
                            ["foreign.tflite: outputs of shapes", "expected a segmenter's scores [1, H, W, K]",
                             "or a kseg detector's named outputs"]),
    }[case]
    assert video.main(argv + ["--input", detector["video"], "--output", str(tmp_path / "out.y4m")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "out.y4m").exists()


def test_detector_fps_benchmark_has_one_row_per_detector_and_variant(detector, tmp_path):
    from benchmarks.detector_demo_fps import measure

    folders = [tmp_path / "a", tmp_path / "b"]
    for folder, variants in zip(folders, (("fp32", "int8"), ("fp16",))):
        folder.mkdir()
        for variant in variants:
            shutil.copy(detector["model"], folder / f"pixels_{variant}.tflite")
    result = measure([(f, "circle,square,sky,road") for f in folders], ("fp32", "fp16", "int8"), frames=3,
                     threads=1, work=tmp_path)
    got = [(Path(r["file"]).parent.name, r["variant"]) for r in result["rows"]]
    assert got == [("a", "fp32"), ("a", "int8"), ("b", "fp16")]
    assert result["missing"] == [f"{folders[0]}: fp16", f"{folders[1]}: fp32", f"{folders[1]}: int8"]
    for row in result["rows"]:
        assert row["frames"] == 3 and row["effect"] == "panoptic" and row["objects"] == 3
        assert row["end_to_end_fps"] > 0 and 0 < row["inference_ms"] and row["effect_ms"] > 0


def test_demo_video_on_a_detector_imports_no_tensorflow(detector, tmp_path):
    import subprocess
    import sys

    from tests.export.test_bench import tensorflow_blocked

    env, blocked = tensorflow_blocked(tmp_path)
    command = [sys.executable, "-m", "export.video", "--model", detector["model"], "--input", detector["video"],
               "--output", str(tmp_path / "out.y4m"), "--effect", "instances"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not blocked.exists(), f"tried to import {blocked.read_text().split()}"
    assert "3 frames of 96x64" in result.stdout and "instances drawn per frame" in result.stdout
