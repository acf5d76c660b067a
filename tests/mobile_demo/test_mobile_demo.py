"""The browser demo (mobile_demo/) in real headless Chromium, fed by a fake camera.

A small U-Net trained on the ISBI sample is exported to every variant and served by the demo's
own `vite preview`. Chromium's fake camera plays a .y4m video of ISBI slices. playwright-core
(mobile_demo/tests/drive.mjs) drives the page and hands back what it saw: the frame, the exact
model input, the page's result and the drawn output. The assertions are here, against kseg's
Python LiteRT run on the same pixels.

Needs node, npm packages installed in mobile_demo (`npm ci`) and /usr/bin/chromium (apt-get
install chromium libvulkan1). Without them the tests skip, unless KSEG_REQUIRE_BROWSER=1 (CI sets
it) turns the skip into a failure.
"""

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "mobile_demo"
SWIFTSHADER = Path("/usr/lib/chromium/vk_swiftshader_icd.json")
ARTIFACTS = Path(os.environ.get("KSEG_TEST_ARTIFACTS", DEMO / "test-artifacts"))
VIDEO_SIZE = (360, 480)  # H, W of the fake camera: not the model's 256 x 256, nor its aspect
MODEL_SIZE = 256
REPLACE_COLOR = (0, 177, 64)  # effects.js REPLACE_COLOR
OVERLAY_ALPHA = 128 / 255  # effects.js OVERLAY_ALPHA (0.5) as a canvas stores it
MIN_REGION_FRACTION = 0.005  # effects.js (and export.frames' outlines)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser_ready():
    from export.page import missing_tools

    missing = missing_tools()
    if missing:
        if os.environ.get("KSEG_REQUIRE_BROWSER") == "1":
            pytest.fail(f"KSEG_REQUIRE_BROWSER=1 but the browser tests lack: {missing}")
        pytest.skip(f"browser tests need {missing}")


def _frames():
    """RGB frames of the fake camera: ISBI slices resized to VIDEO_SIZE, with a colour tint."""
    from PIL import Image

    from kseg.data.samples import isbi_sample_dirs

    images, _ = isbi_sample_dirs()
    frames = []
    for path in sorted(images.iterdir())[:4]:
        grey = np.asarray(Image.open(path).convert("L").resize(VIDEO_SIZE[::-1], Image.BILINEAR), np.float32)
        tint = np.stack([grey, grey * 0.9 + 10, grey * 0.8 + 20], -1)  # RGB, so colour handling shows
        frames.append(np.clip(tint, 0, 255).astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def site(browser_ready, trained_unet, tmp_path_factory):
    """The demo built, four exported variants, the fake camera video and a running server."""
    from export import webdemo
    from export import page
    from export.report import export_model
    from export.video import write_y4m
    from kseg.data.samples import isbi_sample_dirs
    from tests.testing import sample_examples

    root = tmp_path_factory.mktemp("demo")
    dist = page.build_site(root / "dist")
    model, _ = trained_unet
    examples = sample_examples(size=MODEL_SIZE, channels=3, limit=4)
    report = export_model(model, dist / "models" / "unet", examples=examples, image_size=(MODEL_SIZE, MODEL_SIZE),
                          rgb_input=True, labels=["membrane", "cell"], name="unet", gpu=False, verbose=False)
    assert report["passed"]
    # Class 0 (membrane) as the background: cells are the large regions the effects act on.
    webdemo.write_sidecar(dist / "models" / "unet", title="ISBI U-Net", background=0)
    webdemo.write_sample(sorted(isbi_sample_dirs()[0].iterdir())[-1], dist / "models")
    index = webdemo.write_index(dist / "models")
    frames = _frames()
    video = root / "camera.y4m"
    write_y4m(video, frames, fps=10)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with page.serve(dist) as url:
        yield {"url": url, "dist": dist, "root": root, "video": video, "frames": frames, "index": index,
               "models": {e["variant"]: dist / "models" / e["file"] for e in index["models"]}}


def drive(site, query, steps, webgpu=False, video=True):
    """The page at `query`, driven through `steps` (see mobile_demo/tests/drive.mjs); `video`: the
    site's fake camera (True), none (False) or another .y4m."""
    from export.page import drive as run_steps

    video = site["video"] if video is True else video or None
    try:
        result = run_steps(site["url"] + query, steps, site["root"], video=video, webgpu=webgpu)
    except RuntimeError as e:
        pytest.fail(str(e))
    assert not result["pageErrors"], result["pageErrors"]
    return result


def decode(capture, key, dtype, shape):
    return np.frombuffer(base64.b64decode(capture[key]), dtype=dtype).reshape(shape)


def unpack(capture):
    """A capture's arrays: frame/output [H, W, 3], input [h, w, 3], classes/foreground [h, w]."""
    h, w, mh, mw = capture["height"], capture["width"], capture["inputHeight"], capture["inputWidth"]
    out = {
        "frame": decode(capture, "frame", np.uint8, (h, w, 4))[..., :3],
        "output": decode(capture, "output", np.uint8, (h, w, 4))[..., :3],
        "input": decode(capture, "input", np.uint8, (mh, mw, 4))[..., :3],
        "classes": decode(capture, "classes", np.uint8, (mh, mw)),
        "foreground": decode(capture, "foreground", np.float32, (mh, mw)),
    }
    if capture.get("scores"):
        out["scores"] = decode(capture, "scores", np.float32, (mh, mw, -1))
    return out


def python_litert(path, rgb):
    """kseg's Python LiteRT run of `path` on model-size RGB pixels: (classes, float scores)."""
    from export import runtime

    with runtime.Runner(runtime.read_model(path), accelerator="cpu", num_threads=2) as runner:
        detail = runner.outputs[0]
        (scores,) = runner.run(rgb[None].astype(runner.inputs[0]["dtype"]))
    scores = runtime.dequantize(scores[0], detail).astype(np.float32)
    return scores.argmax(-1), scores


def interior(values, display_shape):
    """Display pixels whose model-pixel neighbourhood (the 4 x 4 around the sample point) is uniform,
    so any interpolation gives the same value there; returns (mask, the model value per pixel)."""
    mh, mw = values.shape
    h, w = display_shape
    ys = np.floor((np.arange(h) + 0.5) * mh / h).astype(int)
    xs = np.floor((np.arange(w) + 0.5) * mw / w).astype(int)
    lo = ndimage.minimum_filter(values, size=4, mode="nearest")
    hi = ndimage.maximum_filter(values, size=4, mode="nearest")
    uniform = (lo == hi)[np.ix_(ys, xs)]
    return uniform, values[np.ix_(ys, xs)]


def close(a, b, tol=2):
    return np.abs(a.astype(np.int16) - np.asarray(b, np.int16)).max(-1) <= tol


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def camera_session(site):
    """One page on the fake camera: captures with each effect, the HUD, screenshots."""
    steps = [{"wait": "ready", "frames": 3}]
    for effect in ("replace", "classes", "blur", "outlines"):
        steps += [{"effect": effect}, {"wait": "ready", "frames": 1}, {"capture": effect},
                  {"screenshot": str(ARTIFACTS / f"demo_{effect}.png")}]
    steps += [{"stats": "stats"}]
    return drive(site, "?model=unet_fp32", steps)


def test_page_runs_on_the_fake_camera_cross_origin_isolated(site, camera_session):
    capture = unpack(camera_session["replace"])
    assert camera_session["crossOriginIsolated"] is True  # COOP/COEP served: threaded WASM
    assert camera_session["replace"]["stats"]["source"] == "camera"
    assert capture["frame"].shape[:2] == VIDEO_SIZE
    # The frame the page drew is one of the video's frames (through Chromium's YUV 4:2:0 path).
    errors = [np.abs(capture["frame"].astype(float) - f).mean() for f in site["frames"]]
    assert min(errors) < 4, errors


def test_page_mask_agrees_with_python_litert_on_the_same_pixels(site, camera_session):
    capture = unpack(camera_session["replace"])
    classes, scores = python_litert(site["models"]["fp32"], capture["input"])
    agreement = (capture["classes"] == classes).mean()
    assert agreement >= 0.99, agreement
    assert np.abs(capture["scores"] - scores).max() < 1e-4
    assert 0.05 < capture["classes"].mean() < 0.95  # both classes present: the check means something


def within_blend(output, a, b, low, high, tol=2):
    """output == alpha * a + (1 - alpha) * b for some alpha in [low, high], to `tol` levels per channel."""
    a, b = a.astype(float), np.broadcast_to(np.asarray(b, float), a.shape)
    ends = np.stack([low * a + (1 - low) * b, high * a + (1 - high) * b])
    return ((output >= ends.min(0) - tol) & (output <= ends.max(0) + tol)).all(-1)


def test_replace_draws_the_frame_on_the_foreground_and_the_colour_elsewhere(camera_session):
    c = unpack(camera_session["replace"])
    uniform, value = interior(c["classes"].astype(np.int16), c["frame"].shape[:2])
    cell, membrane = uniform & (value == 1), uniform & (value == 0)  # class 0 (membrane) is the background
    assert cell.sum() > 5000 and membrane.sum() > 500
    assert close(c["output"], c["frame"])[cell].mean() > 0.99
    assert close(c["output"], REPLACE_COLOR)[membrane].mean() > 0.99
    # Between regions the edge is a blend of the two, never anything else.
    edges = ~uniform
    mixed = within_blend(c["output"], c["frame"], REPLACE_COLOR, np.zeros(edges.shape + (1,)), np.ones(edges.shape + (1,)))
    assert mixed[edges].mean() > 0.99


def test_classes_overlay_tints_exactly_the_predicted_pixels(site, camera_session):
    c = unpack(camera_session["classes"])
    uniform, value = interior(c["classes"].astype(np.int16), c["frame"].shape[:2])
    palette = np.array(site["index"]["models"][0]["colors"])
    tinted = np.round(c["frame"] * (1 - OVERLAY_ALPHA) + palette[1] * OVERLAY_ALPHA)
    membrane, cell = uniform & (value == 0), uniform & (value == 1)  # class 0 (membrane) is the background
    assert membrane.sum() > 500 and cell.sum() > 500
    assert close(c["output"], tinted)[cell].mean() > 0.99
    assert close(c["output"], c["frame"])[membrane].mean() > 0.99


def bilinear(values, display_shape):
    """`values` [h, w] resized to `display_shape` with half-pixel centres (how a canvas scales)."""
    (h, w), (mh, mw) = display_shape, values.shape
    ys = np.clip((np.arange(h) + 0.5) * mh / h - 0.5, 0, mh - 1)
    xs = np.clip((np.arange(w) + 0.5) * mw / w - 0.5, 0, mw - 1)
    return ndimage.map_coordinates(values, np.meshgrid(ys, xs, indexing="ij"), order=1, mode="nearest")


def test_blur_blurs_the_background_and_keeps_the_foreground(camera_session):
    c = unpack(camera_session["blur"])
    frame = c["frame"].astype(float)
    alpha = bilinear(c["foreground"], frame.shape[:2])[..., None]
    # CSS blur(12px) is a Gaussian with sigma 12; away from the canvas border (where the CSS
    # filter fades) the output is the frame over that blur, weighted by the foreground probability.
    blurred = ndimage.gaussian_filter(frame, sigma=(12, 12, 0), mode="nearest")
    expected = alpha * frame + (1 - alpha) * blurred
    away = np.zeros(frame.shape[:2], bool)
    away[36:-36, 36:-36] = True
    region = away & (alpha[..., 0] < 0.8)  # where the blur has a real weight
    assert region.sum() > 1000
    to_expected = np.abs(c["output"] - expected)[region].mean()
    to_frame = np.abs(c["output"] - frame)[region].mean()
    assert to_expected < to_frame / 3, (to_expected, to_frame)
    sharp = away & (alpha[..., 0] > 0.97)
    assert sharp.sum() > 1000
    assert np.abs(c["output"] - frame)[sharp].mean() < to_frame / 3


def test_outlines_label_the_connected_regions_of_the_mask(camera_session):
    capture = camera_session["outlines"]
    c = unpack(capture)
    h, w = c["classes"].shape
    min_area = max(4, MIN_REGION_FRACTION * h * w)
    assert capture["regions"]["minArea"] == pytest.approx(min_area)
    expected = []
    for cls in (1,):  # the non-background classes (class 0 is the background)
        labels, n = ndimage.label(c["classes"] == cls)  # 4-connectivity, as in effects.js
        areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        expected += sorted((cls, int(a)) for a in areas if a >= min_area)
    drawn = sorted((r["cls"], r["area"]) for r in capture["regions"]["regions"])
    assert drawn == sorted(expected)
    assert len(drawn) >= 1
    changed = ~close(c["output"], c["frame"], tol=0)
    assert 0.001 < changed.mean() < 0.5  # outlines and labels, not a fill


def test_hud_reports_model_accelerator_and_fps(camera_session):
    stats = camera_session["stats"]
    assert stats["fps"] > 0 and stats["inferenceMs"] > 0
    assert stats["model"] == "unet_fp32" and stats["accelerator"] == "wasm"
    lines = stats["hud"].splitlines()
    assert lines[0] == "unet_fp32"
    assert "WASM" in lines[1]
    fps = float(lines[2].split("·")[1].split()[0])
    assert fps > 0
    assert stats["message"] is None


def test_every_variant_agrees_with_python_litert_in_the_page(site):
    variants = ["fp16", "dynamic", "int8"]
    steps = [{"wait": "ready", "frames": 1}]
    for v in variants:
        steps += [{"model": f"unet_{v}"}, {"capture": v}]
    result = drive(site, "?model=unet_fp32&effect=classes", steps)
    for v in variants:
        c = unpack(result[v])
        assert result[v]["stats"]["model"] == f"unet_{v}"
        classes, _ = python_litert(site["models"][v], c["input"])
        assert (c["classes"] == classes).mean() >= 0.99, v


def test_a_corrupt_or_wrong_model_shows_an_error_not_a_blank_page(site, tmp_path):
    import keras
    import tensorflow as tf

    fp32 = site["models"]["fp32"].read_bytes()
    (tmp_path / "noise.tflite").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "truncated.tflite").write_bytes(fp32[:4096])
    features = keras.Input((8,))
    classifier = keras.Model(features, keras.layers.Dense(3)(features))
    (tmp_path / "classifier.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(classifier).convert())
    steps = [{"wait": "ready", "frames": 2}]
    for name in ("noise", "truncated", "classifier"):
        steps += [{"upload": "#model-file", "file": str(tmp_path / f"{name}.tflite")}, {"wait": "error"},
                  {"stats": name}, {"screenshot": str(ARTIFACTS / f"error_{name}.png")}]
    result = drive(site, "?model=unet_fp32", steps)
    assert "noise.tflite: not a TFLite model" in result["noise"]["message"]
    assert "expected \"TFL3\"" in result["noise"]["message"]
    assert result["truncated"]["message"].startswith("truncated.tflite")
    assert "expected [1, H, W, 1 or 3]" in result["classifier"]["message"]
    for name in ("noise", "truncated", "classifier"):
        assert result[name]["model"] == "unet_fp32"  # the running model keeps going
    assert result["classifier"]["frames"] > result["noise"]["frames"]


def test_a_missing_model_file_is_reported_and_the_camera_still_shows(site):
    index_path = site["dist"] / "models" / "index.json"
    index = json.loads(index_path.read_text())
    broken = {**index["models"][0], "name": "gone", "file": "unet/gone.tflite"}
    index_path.write_text(json.dumps({**index, "models": index["models"] + [broken]}))
    try:
        result = drive(site, "?model=gone", [{"wait": "error"}, {"stats": "s"},
                                             {"screenshot": str(ARTIFACTS / "error_missing.png")}])
    finally:
        index_path.write_text(json.dumps(index))
    assert "gone.tflite: HTTP 404" in result["s"]["message"]
    assert result["s"]["displayed"] > 0 and result["s"]["frames"] == 0


@pytest.mark.skipif(not SWIFTSHADER.exists(), reason="WebGPU here needs SwiftShader: apt-get install chromium")
def test_webgpu_runs_fully_delegated_and_matches_wasm(site):
    steps = [{"wait": "ready", "frames": 2}, {"capture": "gpu"}, {"runWith": ["litert", "wasm"], "on": "gpu", "as": "cpu"},
             {"screenshot": str(ARTIFACTS / "demo_webgpu.png")}]
    result = drive(site, "?model=unet_fp32&accelerator=webgpu&effect=classes", steps, webgpu=True)
    stats = result["gpu"]["stats"]
    assert stats["accelerator"] == "webgpu" and stats["fullyAccelerated"] is True, stats
    gpu = unpack(result["gpu"])["scores"]
    cpu = decode(result["cpu"], "scores", np.float32, gpu.shape)
    assert np.abs(gpu - cpu).max() <= 2e-3


def test_mediapipe_image_segmenter_runs_the_same_file_in_the_page_and_in_python(site, tmp_path):
    steps = [{"wait": "ready", "frames": 2}, {"capture": "mp"}, {"runWith": ["litert", "wasm"], "on": "mp", "as": "lr"},
             {"screenshot": str(ARTIFACTS / "demo_mediapipe.png")}]
    result = drive(site, "?model=unet_fp32&runtime=mediapipe&effect=classes", steps)
    assert result["mp"]["stats"]["runtime"] == "MediaPipe"
    mp = unpack(result["mp"])
    lr = decode(result["lr"], "classes", np.uint8, mp["classes"].shape)
    assert (mp["classes"] == lr).mean() >= 0.99
    fg = decode(result["lr"], "foreground", np.float32, mp["classes"].shape)
    assert np.abs(mp["foreground"] - fg).max() < 1e-3
    # The mediapipe Python package gives the same masks for the same file and pixels.
    from tests.testing import segment_with_mediapipe

    labels, confidence, category = segment_with_mediapipe(site["models"]["fp32"].read_bytes(),
                                                          np.ascontiguousarray(mp["input"]), tmp_path)
    assert labels == ["membrane", "cell"]
    assert (category == mp["classes"]).mean() >= 0.99
    assert np.abs((1 - confidence[..., 0]) - mp["foreground"]).max() < 1e-3


def test_still_image_fallback_without_a_camera(site):
    result = drive(site, "?model=unet_int8&source=image", [{"wait": "ready", "frames": 2}, {"capture": "c"},
                                                           {"screenshot": str(ARTIFACTS / "demo_still.png")}],
                   video=False)
    c = unpack(result["c"])
    assert result["c"]["stats"]["source"] == "image"
    assert c["frame"].std() > 10  # the sample image, not an empty canvas


def test_a_model_picked_from_the_device_runs_and_survives_a_runtime_switch(site):
    local = site["models"]["fp16"]
    steps = [{"wait": "ready", "frames": 1}, {"upload": "#model-file", "file": str(local)},
             {"wait": "model", "name": local.name}, {"capture": "lr"},
             {"runtime": "mediapipe/cpu"}, {"wait": "model", "name": local.name, "runtime": "MediaPipe"},
             {"stats": "after"}]
    result = drive(site, "?model=unet_fp32&effect=classes", steps)
    c = unpack(result["lr"])
    classes, _ = python_litert(local, c["input"])
    assert (c["classes"] == classes).mean() >= 0.99
    after = result["after"]
    assert after["model"] == local.name and after["runtime"] == "MediaPipe" and after["message"] is None


# ----------------------------------------------------------------------------- instance models

INSTANCE_SIZE = (64, 64)
INSTANCE_ZOOM = 4  # the fake camera shows the 64 x 64 shapes images at 256 x 256 (nearest)


@pytest.fixture(scope="module")
def instance_site(site):
    """A tiny Mask R-CNN (80 steps on 8 synthetic shapes images) added to the site with
    export.webdemo, and a fake camera video of shapes images.

    The page captures whichever video frame is showing; after 80 steps every frame has a
    detection above the score threshold (best scores 0.97-1.0). After 40 steps one frame's
    best was 0.48, so the test failed when that frame was the one captured."""
    import keras

    from export import webdemo
    from export.video import write_y4m
    from kseg.data.instance_pipeline import instance_dataset
    from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples
    from kseg.models import build_model

    keras.utils.set_random_seed(0)
    examples = shapes_dataset_examples(8, seed=3, image_size=INSTANCE_SIZE, max_instances=3, min_size=12)
    data = instance_dataset(examples, image_size=INSTANCE_SIZE, max_instances=6, batch_size=4, shuffle=False,
                            flip=False)
    model = build_model("mask_rcnn", "small", num_classes=len(SHAPE_CATEGORIES), input_shape=(*INSTANCE_SIZE, 3))
    model.compile(optimizer=keras.optimizers.Adam(2e-3, clipnorm=10.0))
    model.fit(data, steps_per_epoch=80, epochs=1, verbose=0)

    models = site["dist"] / "models"
    folder = webdemo.export_instance_model(model, models, "shapes", labels=[c["name"] for c in SHAPE_CATEGORIES],
                                           title="Shapes Mask R-CNN", variants=("fp32", "dynamic"))
    index = webdemo.write_index(models)
    entry, dynamic = (next(e for e in index["models"] if e["task"] == "instance" and e["variant"] == v)
                      for v in ("fp32", "dynamic"))
    frames = [np.repeat(np.repeat(e["image"], INSTANCE_ZOOM, 0), INSTANCE_ZOOM, 1) for e in examples[:4]]
    video = site["root"] / "shapes.y4m"
    write_y4m(video, frames, fps=10)
    yield {"entry": entry, "path": models / entry["file"], "video": video, "index": index, "dynamic": dynamic,
           "dynamic_path": models / dynamic["file"], "images": [e["image"] for e in examples[:4]]}
    # The other tests see the site as it was.
    import shutil

    shutil.rmtree(folder)
    webdemo.write_index(models)


def instance_reference(path, rgb, score_threshold=0.5, mask_threshold=0.5):
    """Python LiteRT (ai-edge-litert) on model-size RGB pixels: the outputs by name, the kept
    detection slots (best first) and the instance id map by engine.js's rule."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    out = interpreter.get_signature_runner()(image=rgb[None].astype(np.float32))
    n = int(out["num_detections"][0])
    scores, classes = out["scores"][0], out["classes"][0]
    kept = sorted((d for d in range(n) if classes[d] >= 1 and scores[d] >= score_threshold),
                  key=lambda d: (-scores[d], d))
    ids = np.zeros(rgb.shape[:2], np.int32)
    for d in reversed(kept):  # the best painted last: a pixel goes to the best detection that claims it
        ids[out["masks"][0, d] >= mask_threshold] = d + 1
    return out, kept, ids


def cpu_kernel_spread(path, images, gaps):
    """How far Python LiteRT's two CPU kernel sets land apart on a quantized model: the largest of
    `gaps(xnnpack_outputs, builtin_outputs)` over `images` (model-size RGB), XNNPACK (the default)
    against TFLite's builtin kernels.

    The page's WASM kernels are a third implementation of the same integer arithmetic. They round
    ties differently from x86's, so a quantized variant's scores can move by about one
    quantization step on some frames (1.2e-4 to 3.3e-4 seen, 0 on most), which no fixed fp32-sized
    bound allows for; the page must agree with Python's run at least as closely as Python's own
    two kernel sets agree with each other on the clip (measured: 4.8e-3 for the dynamic Mask R-CNN,
    7.4e-4 for the int8 Panoptic FPN, about 1e-6 for fp32 files)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    runs = []
    for options in ({}, {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}):
        runner = Interpreter(model_path=str(path), num_threads=2, **options).get_signature_runner()
        runs.append([runner(image=image[None].astype(np.float32)) for image in images])
    return max(float(np.max(gaps(a, b), initial=0.0)) for a, b in zip(*runs))


def detection_score_gaps(a, b):
    """|score difference| of the detection slots two runs fill with the same class."""
    n = int(min(a["num_detections"][0], b["num_detections"][0]))
    same = (a["classes"][0, :n] == b["classes"][0, :n]) & (a["classes"][0, :n] >= 1)
    return np.abs(a["scores"][0, :n] - b["scores"][0, :n])[same]


def instance_outline(ids):
    """Pixels of an instance with a 4-neighbour of another id (or none); the frame edge is no border."""
    padded = np.pad(ids, 1, mode="edge")
    same = ((padded[:-2, 1:-1] == ids) & (padded[2:, 1:-1] == ids) & (padded[1:-1, :-2] == ids)
            & (padded[1:-1, 2:] == ids))
    return (ids > 0) & ~same


def test_a_quantized_instance_variant_finds_what_python_litert_finds_on_it(site, instance_site):
    entry, fp32 = instance_site["dynamic"], instance_site["entry"]
    assert entry["name"] == "shapes_dynamic" and entry["size_bytes"] * 3 < fp32["size_bytes"]
    assert entry["instance_outputs"] == fp32["instance_outputs"] and entry["input"] == fp32["input"]
    result = drive(site, f"?model={entry['name']}&effect=outlines", [{"wait": "ready", "frames": 2}, {"capture": "c"}],
                   video=instance_site["video"])
    capture = result["c"]
    c = unpack(capture)
    assert capture["stats"]["task"] == "instance" and capture["stats"]["instanceOutputsBy"] == "name"
    out, kept, _ = instance_reference(instance_site["dynamic_path"], c["input"], entry["score_threshold"],
                                      entry["mask_threshold"])
    page = capture["instances"]
    assert len(kept) >= 1, out["scores"]
    assert [(i["id"], i["cls"]) for i in page] == [(d + 1, int(out["classes"][0, d])) for d in kept]
    np.testing.assert_allclose([i["box"] for i in page], out["boxes"][0, kept], atol=1e-3 * max(INSTANCE_SIZE))
    spread = cpu_kernel_spread(instance_site["dynamic_path"], [c["input"], *instance_site["images"]],
                               detection_score_gaps)
    np.testing.assert_allclose([i["score"] for i in page], out["scores"][0, kept], atol=max(spread, 1e-4))
    assert (~close(c["output"], c["frame"], tol=0)).sum() > 0  # drawn


def test_instance_model_draws_outlines_and_labels_of_the_detections_python_litert_finds(site, instance_site):
    entry = instance_site["entry"]
    assert entry["labels"] == ["background", "circle", "square", "triangle"]
    assert sorted(entry["instance_outputs"]) == ["boxes", "classes", "masks", "num_detections", "scores"]
    assert entry["input"] == {"shape": [1, *INSTANCE_SIZE, 3], "dtype": "float32", "quantization": None}
    semantic = [e for e in instance_site["index"]["models"] if e is not entry and e is not instance_site["dynamic"]]
    assert semantic and all(e["task"] == "semantic" for e in semantic)

    steps = [{"wait": "ready", "frames": 2}, {"capture": "c"}, {"stats": "stats"},
             {"screenshot": str(ARTIFACTS / "demo_instances.png")}, {"effect": "classes"}, {"capture": "classes"}]
    result = drive(site, f"?model={entry['name']}&effect=outlines", steps, video=instance_site["video"])
    capture = result["c"]
    c = unpack(capture)
    assert capture["stats"]["task"] == "instance" and capture["effect"] == "outlines"
    # LiteRT.js names the outputs as the signature does, and the page finds them by name.
    assert sorted(capture["stats"]["outputNames"]) == sorted(entry["instance_outputs"])
    assert capture["stats"]["instanceOutputsBy"] == "name"
    assert c["frame"].shape[:2] == tuple(s * INSTANCE_ZOOM for s in INSTANCE_SIZE)

    # The page's detections are Python LiteRT's on the same input.
    out, kept, ids = instance_reference(instance_site["path"], c["input"], entry["score_threshold"],
                                        entry["mask_threshold"])
    page = capture["instances"]
    assert len(kept) >= 1, out["scores"]  # something to draw, so the checks below mean something
    assert [i["id"] for i in page] == [d + 1 for d in kept]
    assert [i["cls"] for i in page] == [int(out["classes"][0, d]) for d in kept]
    np.testing.assert_allclose([i["box"] for i in page], out["boxes"][0, kept], atol=1e-3 * max(INSTANCE_SIZE))
    np.testing.assert_allclose([i["score"] for i in page], out["scores"][0, kept], atol=1e-4)

    # The instance id map, and the class and foreground maps derived from it.
    page_ids = decode(capture, "instanceIds", np.int32, INSTANCE_SIZE)
    masks = out["masks"][0, kept]
    decided = (np.abs(masks - entry["mask_threshold"]) > 1e-4).all(0)  # no mask within float noise of 0.5
    assert decided.mean() > 0.95
    np.testing.assert_array_equal(page_ids[decided], ids[decided])
    cls_of = np.zeros(out["classes"].shape[1] + 1, np.int64)
    cls_of[1:] = out["classes"][0]
    np.testing.assert_array_equal(c["classes"], cls_of[page_ids])
    inside = page_ids > 0
    chosen = np.take_along_axis(out["masks"][0], np.maximum(page_ids - 1, 0)[None], 0)[0]
    np.testing.assert_allclose(c["foreground"][inside], chosen[inside], atol=1e-4)

    # Outlines: every changed pixel lies on an instance's outline or in a label patch, and the
    # outline pixels carry their instance's colour.
    drawn = capture["regions"]["instances"]
    assert [(d["id"], d["text"]) for d in drawn] == [
        (i["id"], f"{entry['labels'][i['cls']]} {i['score']:.2f}") for i in page]
    display = c["frame"].shape[:2]
    outline = np.kron(instance_outline(page_ids), np.ones((INSTANCE_ZOOM, INSTANCE_ZOOM), bool))
    owner = np.kron(page_ids, np.ones((INSTANCE_ZOOM, INSTANCE_ZOOM), np.int32))
    labels = np.zeros(display, bool)
    for d in drawn:
        box = d["label"]
        assert 0 <= box["x"] and box["x"] + box["width"] <= display[1] and 0 <= box["y"]
        y, x = max(0, box["y"] - 1), max(0, box["x"] - 1)
        labels[y:box["y"] + box["height"] + 1, x:box["x"] + box["width"] + 1] = True  # the patch and 1 px around
    changed = ~close(c["output"], c["frame"], tol=0)
    assert changed.sum() > 0
    near_outline = ndimage.binary_dilation(outline, iterations=1)
    assert (near_outline | labels)[changed].all(), np.argwhere(changed & ~(near_outline | labels))[:10]
    colors = np.array(entry["instance_colors"])
    bare = outline & ~labels
    assert bare.sum() > 50
    assert close(c["output"], colors[owner - 1])[bare].mean() > 0.99
    # Each label patch starts at its box's top-left corner (above the box when there is room).
    for d in drawn:
        y1, x1 = (v * INSTANCE_ZOOM for v in d["box"][:2])
        x, y, w, h = (d["label"][k] for k in ("x", "y", "width", "height"))
        assert abs(x - min(max(x1, 0), display[1] - w)) <= 1
        assert abs(y - (y1 - h if y1 - h >= 0 else min(max(y1, 0), display[0] - h))) <= 1

    # The HUD counts the instances; the legend lists them in their colours.
    assert capture["stats"]["instances"] == len(page)
    assert capture["legend"] == [
        {"text": d["text"], "color": "rgb({}, {}, {})".format(*colors[d["id"] - 1])} for d in drawn]
    stats = result["stats"]
    n = stats["instances"]
    assert stats["hud"].splitlines()[0] == entry["name"]
    assert stats["hud"].splitlines()[-1] == f"{n} instance{'' if n == 1 else 's'}"
    assert len(stats["legend"]) == n

    # `classes` tints each instance in its colour (not its class's), and nothing else.
    tint = result["classes"]
    assert tint["effect"] == "classes"
    t = unpack(tint)
    tint_owner = np.kron(decode(tint, "instanceIds", np.int32, INSTANCE_SIZE), np.ones((INSTANCE_ZOOM,) * 2, np.int32))
    tinted = np.round(t["frame"] * (1 - OVERLAY_ALPHA) + colors[np.maximum(tint_owner, 1) - 1] * OVERLAY_ALPHA)
    assert close(t["output"], tinted)[tint_owner > 0].mean() > 0.99
    assert close(t["output"], t["frame"], tol=0)[tint_owner == 0].all()


# ----------------------------------------------------------------------------- the person model


def _tiny_run(run, channels, class_names, model_file, fit_steps):
    """A semantic run folder as kseg train leaves it, on the ISBI sample at 64x64 (never the person
    data): run.json and `model_file`, a small U-Net fitted `fit_steps` steps."""
    import keras

    from kseg.data.samples import ISBI_REMAP, isbi_sample_dirs
    from kseg.training import DataSpec
    from tests.testing import sample_examples, small_unet

    images, masks = isbi_sample_dirs()
    spec = DataSpec(images=str(images), masks=str(masks), num_classes=2, remap=ISBI_REMAP, channels=channels,
                    image_size=(64, 64), class_names=list(class_names))
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"data": spec.to_json(), "model": {"name": "unet"}, "train": {}}))
    keras.utils.set_random_seed(0)
    model = small_unet("unet-transpose", channels=channels, num_classes=2)
    if fit_steps:
        data = sample_examples(64, channels, limit=4)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(data["images"].astype("float32") / 255, data["masks"], batch_size=4, epochs=fit_steps, verbose=0)
    model.save(run / model_file)
    return run


def _webdemo_main(argv):
    """export.webdemo.main(argv): (exit code, the lines it printed)."""
    import contextlib
    import io

    from export import webdemo

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = webdemo.main(argv)
    return code, out.getvalue().splitlines()


@pytest.fixture(scope="module")
def person_exports(tmp_path_factory):
    """What `npm start` (export.webdemo --if-missing) does in a fresh checkout: first without a
    person run (the ISBI fallback), then again once a person run is at runs/person. A 2-class
    RGB run fitted one step stands in for the person run; the ISBI run is an unfitted U-Net at
    kseg-demo/run, so nothing is trained as `kseg demo` would."""
    from export import webdemo

    root = tmp_path_factory.mktemp("checkout")
    _tiny_run(root / webdemo.DEFAULT_RUN, 1, ["membrane", "cell"], "best.keras", 0)
    models = root / "models"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv(webdemo.PERSON_RUN_ENV, raising=False)
        fallback = _webdemo_main(["--out", str(models), "--if-missing"])
        fallback_index = json.loads((models / "index.json").read_text())
        _tiny_run(root / webdemo.PERSON_RUN, 3, ["background", "person"], "final.keras", 1)
        isbi_file = models / fallback_index["models"][0]["file"]
        isbi_stamp = isbi_file.stat().st_mtime_ns
        person = _webdemo_main(["--out", str(models), "--if-missing"])
        again = _webdemo_main(["--out", str(models), "--if-missing"])
        own = _webdemo_main(["--out", str(root / "own"), "--run", str(webdemo.DEFAULT_RUN), "--name", "mine"])
        own_index = json.loads((root / "own" / "index.json").read_text())
    index = json.loads((models / "index.json").read_text())
    return {"models": models, "fallback": fallback, "fallback_index": fallback_index, "person": person,
            "again": again, "own": own, "own_index": own_index, "index": index, "isbi_kept": isbi_file.stat().st_mtime_ns == isbi_stamp}


def _readme_person_train_command():
    """The README's person training command ("Person segmentation for AR") on one line."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("D=../shared/data/person-segmentation"))
    end = next(i for i in range(start, len(lines)) if "--output runs/person" in lines[i])
    command = " ".join(line.strip().rstrip("\\").strip() for line in lines[start + 1:end + 1])
    return f"{lines[start].strip()}; {command}"


def test_webdemo_without_a_person_run_exports_the_isbi_model_and_says_how_to_train_one(person_exports):
    from export import webdemo

    code, printed = person_exports["fallback"]
    assert code == 0
    names = [e["name"] for e in person_exports["fallback_index"]["models"]]
    assert names == [f"isbi_unet_{v}" for v in ("fp32", "fp16", "dynamic", "int8")]
    hints = [line for line in printed if "person" in line]
    assert hints == [webdemo.person_hint()]
    assert printed[-1] == webdemo.person_hint()
    assert hints[0].endswith(_readme_person_train_command())  # the command the README documents
    assert "--output runs/person" in hints[0] and webdemo.PERSON_RUN == Path("runs/person")


def test_webdemo_exports_a_person_run_first_with_blur_as_its_effect(person_exports):
    from export import webdemo

    code, printed = person_exports["person"]
    assert code == 0, printed
    assert not any(line == webdemo.person_hint() for line in printed)
    entries = person_exports["index"]["models"]
    variants = ("fp32", "fp16", "dynamic", "int8")
    assert [e["name"] for e in entries] == [f"person_{v}" for v in variants] + [f"isbi_unet_{v}" for v in variants]
    for entry in entries[:4]:
        assert entry["effects"] == list(webdemo.PERSON_EFFECTS) and entry["effects"][0] == "blur"
        assert entry["labels"] == ["background", "person"] and entry["background"] == 0
        assert entry["title"] == webdemo.PERSON_TITLE and entry["input"]["shape"] == [1, 64, 64, 3]
    assert all("effects" not in e for e in entries[4:])
    report = json.loads((person_exports["models"] / "person" / "export_report.json").read_text())
    assert report["passed"]
    assert person_exports["isbi_kept"]  # --if-missing exported the new person run alone
    code, printed = person_exports["again"]
    assert code == 0 and printed == [f"{person_exports['models'] / 'index.json'} exists; keeping it (remove it, or "
                                     "run without --if-missing, to export again)"]


def test_webdemo_with_runs_named_exports_only_those(person_exports):
    from export import webdemo

    code, printed = person_exports["own"]
    assert code == 0, printed
    assert [e["name"] for e in person_exports["own_index"]["models"]] == [
        f"mine_{v}" for v in ("fp32", "fp16", "dynamic", "int8")]
    assert webdemo.person_hint() not in printed


def test_webdemo_person_run_option_names_a_missing_folder(tmp_path, capsys):
    from export import webdemo

    assert webdemo.main(["--out", str(tmp_path / "models"), "--person-run", str(tmp_path / "nowhere")]) == 2
    assert f"--person-run {tmp_path / 'nowhere'}: no run.json there" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_page_starts_with_the_person_model_and_its_blur_effect(site, person_exports):
    """The page's model menu lists the person model first and starts with it, on blur."""
    import shutil

    from export import webdemo

    models = site["dist"] / "models"
    folder = models / "x_person"  # after "unet" by name: first by its sidecar's order
    shutil.copytree(person_exports["models"] / "person", folder)
    try:
        index = webdemo.write_index(models)
        assert index["models"][0]["name"] == "person_fp32"
        # An entry naming other effects: the page follows the entry, not the class count.
        other = {**index["models"][0], "name": "person_replace", "effects": ["replace", "blur"]}
        (models / "index.json").write_text(json.dumps({**index, "models": index["models"] + [other]}))
        result = drive(site, "", [{"wait": "ready", "frames": 2}, {"stats": "s"},
                                  {"screenshot": str(ARTIFACTS / "demo_person.png")},
                                  {"model": "person_replace"}, {"wait": "ready", "frames": 1}, {"stats": "other"}])
    finally:
        shutil.rmtree(folder)
        webdemo.write_index(models)
    assert result["other"]["effectMenu"] == ["replace", "blur"]
    assert result["other"]["effect"] == "blur"  # a switch keeps the effect in use when the new model has it
    stats = result["s"]
    assert stats["model"] == "person_fp32" and stats["effect"] == "blur" and stats["message"] is None
    assert stats["modelMenu"] == [e["name"] for e in index["models"]] + ["person_replace"]
    assert stats["modelMenu"][:4] == [f"person_{v}" for v in ("fp32", "fp16", "dynamic", "int8")]
    assert "unet_fp32" in stats["modelMenu"]  # the ISBI model stays in the menu
    assert stats["effectMenu"] == list(webdemo.PERSON_EFFECTS)
