"""Panoptic models in the browser demo: a tiny Panoptic FPN's fp32 and int8 variants in headless Chromium.

A small Panoptic FPN is fitted a few steps on synthetic panoptic shapes (64 x 64), exported with
export.webdemo_panoptic.export_panoptic_model (fp32, and int8 calibrated on 4 images, reusing the
fp32 bytes) into a freshly built demo site. Chromium's fake camera shows those images scaled up.
The page's segments and segment id map must equal ai-edge-litert's on the same input, and its
drawing must be kseg.viz.panoptic_overlay's (demo-video's colours, outlines and labels).
The export's command-line path (`--panoptic`) and the bool-to-int32 output rewrite are checked
without a browser. See test_mobile_demo.py for the tools these tests need.
"""

import json

import numpy as np
import pytest

from tests.mobile_demo.test_mobile_demo import (ARTIFACTS, OVERLAY_ALPHA, browser_ready, close,  # noqa: F401
                                                 cpu_kernel_spread, decode, drive)

pytestmark = pytest.mark.slow

SIZE = (64, 64)
ZOOM = 4  # the fake camera shows the 64 x 64 images at 256 x 256 (nearest)
FIT_STEPS = 40  # every camera frame then has thing and stuff segments (thing scores 0.75-0.99); after 25 one had none


def _train(examples):
    """A small Panoptic FPN fitted FIT_STEPS steps on `examples` (batches of 4)."""
    import keras
    import tensorflow as tf

    from kseg.data.instance_pipeline import instance_dataset
    from kseg.models import build_model

    keras.utils.set_random_seed(0)
    data = instance_dataset(examples, image_size=SIZE, max_instances=6, batch_size=4, shuffle=False, flip=False)
    semantic = np.stack([e["semantic"] for e in examples]).astype(np.int32)
    batches = [{**b, "semantic": tf.constant(semantic[4 * i:4 * i + 4])}  # the dataset repeats: one pass
               for i, b in enumerate(data.take(len(examples) // 4))]
    stacked = {k: tf.stack([b[k] for b in batches]) for k in batches[0]}
    model = build_model("panoptic_fpn", "small", num_classes=3, num_stuff_classes=3, input_shape=(*SIZE, 3),
                        semantic_channels=32, min_stuff_area=16)
    model.compile(optimizer=keras.optimizers.Adam(2e-3, clipnorm=10.0))
    model.fit(tf.data.Dataset.from_tensor_slices(stacked).repeat(), steps_per_epoch=FIT_STEPS, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def panoptic_site(browser_ready, tmp_path_factory):  # noqa: F811
    """The demo built with the tiny Panoptic FPN's fp32 and int8 variants, a shapes video, a server."""
    from export import page, webdemo
    from export.video import write_y4m
    from export.webdemo_panoptic import export_panoptic_model
    from kseg.data.panoptic_shapes import PANOPTIC_SHAPE_CATEGORIES, panoptic_shapes_examples

    root = tmp_path_factory.mktemp("panoptic_demo")
    dist = page.build_site(root / "dist")
    examples = panoptic_shapes_examples(8, seed=3, image_size=SIZE, max_instances=3, min_size=12)
    model = _train(examples)
    calibration = np.stack([e["image"] for e in examples[:4]]).astype(np.float32)
    export_panoptic_model(model, dist / "models", "pshapes", PANOPTIC_SHAPE_CATEGORIES, title="Shapes Panoptic FPN",
                          variants=("fp32", "int8"), calibration=calibration)
    index = webdemo.write_index(dist / "models")
    entries = {e["variant"]: e for e in index["models"]}
    video = root / "panoptic.y4m"
    write_y4m(video, [np.repeat(np.repeat(e["image"], ZOOM, 0), ZOOM, 1) for e in examples[:4]], fps=10)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with page.serve(dist) as url:
        yield {"url": url, "root": root, "video": video, "index": index, "entries": entries,
               "paths": {v: dist / "models" / e["file"] for v, e in entries.items()},
               "images": [e["image"] for e in examples[:4]]}


def panoptic_reference(path, rgb):
    """ai-edge-litert on model-size RGB pixels: the outputs by name, the segments and the id map
    (ids outside 1..num_segments read 0, as in engine.js)."""
    from ai_edge_litert.interpreter import Interpreter

    out = Interpreter(model_path=str(path), num_threads=2).get_signature_runner()(image=rgb[None].astype(np.float32))
    n = int(out["num_segments"][0])
    segments = [{"id": k + 1, "category": int(out["segment_category"][0, k]),
                 "isthing": bool(out["segment_is_thing"][0, k]), "score": float(out["segment_score"][0, k])}
                for k in range(n)]
    ids = np.where((out["panoptic"][0] >= 1) & (out["panoptic"][0] <= n), out["panoptic"][0], 0)
    return out, segments, ids


def segment_score_gaps(a, b):
    """|score difference| of the segments two runs give the same category, kind and pixels (a stuff
    score is a mean over the segment's pixels: other pixels, another score)."""
    n = int(min(a["num_segments"][0], b["num_segments"][0]))
    same = ((a["segment_category"][0, :n] == b["segment_category"][0, :n])
            & (a["segment_is_thing"][0, :n] == b["segment_is_thing"][0, :n])
            & np.array([np.array_equal(a["panoptic"][0] == k, b["panoptic"][0] == k) for k in range(1, n + 1)]))
    return np.abs(a["segment_score"][0, :n] - b["segment_score"][0, :n])[same]


def thing_outline(ids, things):
    """Pixels of a thing segment with a 4-neighbour of another id; the frame edge is no border."""
    padded = np.pad(ids, 1, mode="edge")
    same = ((padded[:-2, 1:-1] == ids) & (padded[2:, 1:-1] == ids) & (padded[1:-1, :-2] == ids)
            & (padded[1:-1, 2:] == ids))
    return np.isin(ids, list(things)) & ~same


def test_panoptic_entries_carry_demo_videos_colours_and_categories(panoptic_site):
    from export.video_detections import ALPHA, PANOPTIC_OUTPUTS
    from kseg.data.panoptic_shapes import PANOPTIC_SHAPE_CATEGORIES
    from kseg.viz import instance_colors, palette

    fp32, int8 = panoptic_site["entries"]["fp32"], panoptic_site["entries"]["int8"]
    assert [e["name"] for e in panoptic_site["index"]["models"]] == ["pshapes_fp32", "pshapes_int8"]
    assert fp32["task"] == int8["task"] == "panoptic" and fp32["title"] == "Shapes Panoptic FPN"
    assert int8["size_bytes"] * 2.5 < fp32["size_bytes"]
    assert fp32["labels"] == ["void"] + [c["name"] for c in PANOPTIC_SHAPE_CATEGORIES]
    assert [c["color"] for c in fp32["categories"]] == palette(len(PANOPTIC_SHAPE_CATEGORIES)).tolist()
    assert fp32["colors"][1:] == palette(len(PANOPTIC_SHAPE_CATEGORIES)).tolist()
    assert fp32["alpha"] == ALPHA
    outputs = fp32["panoptic_outputs"]
    assert list(outputs) == list(PANOPTIC_OUTPUTS) and outputs["segment_is_thing"]["dtype"] == "int32"
    assert fp32["instance_colors"] == instance_colors(outputs["segment_category"]["shape"][1]).tolist()
    assert fp32["input"] == {"shape": [1, *SIZE, 3], "dtype": "float32", "quantization": None}


def test_page_panoptic_map_equals_python_litert_for_fp32_and_int8(panoptic_site):
    from kseg.data.panoptic_shapes import PANOPTIC_SHAPE_CATEGORIES
    from kseg.viz.panoptic import panoptic_colors

    entries = panoptic_site["entries"]
    steps = [{"wait": "ready", "frames": 2}, {"capture": "fp32"}, {"stats": "fp32_stats"},
             {"screenshot": str(ARTIFACTS / "demo_panoptic.png")},
             {"model": "pshapes_int8"}, {"wait": "ready", "frames": 2}, {"capture": "int8"}, {"stats": "int8_stats"}]
    result = drive(panoptic_site, "?model=pshapes_fp32", steps, video=panoptic_site["video"])
    for variant in ("fp32", "int8"):
        capture, entry = result[variant], entries[variant]
        stats = capture["stats"]
        assert stats["model"] == entry["name"] and stats["task"] == "panoptic" and capture["effect"] == "panoptic"
        assert stats["panopticOutputsBy"] == "name"
        h, w = capture["inputHeight"], capture["inputWidth"]
        rgb = decode(capture, "input", np.uint8, (h, w, 4))[..., :3]
        out, segments, ids = panoptic_reference(panoptic_site["paths"][variant], rgb)
        page = capture["segments"]
        assert [(s["id"], s["category"], s["isthing"]) for s in page] == [
            (s["id"], s["category"], s["isthing"]) for s in segments], variant
        atol = 1e-5
        if variant == "int8":  # integer kernels: see cpu_kernel_spread
            atol = max(atol, cpu_kernel_spread(panoptic_site["paths"][variant], [rgb, *panoptic_site["images"]],
                                               segment_score_gaps))
        np.testing.assert_allclose([s["score"] for s in page], [s["score"] for s in segments], atol=atol)
        assert any(s["isthing"] for s in page) and any(not s["isthing"] for s in page), page  # both kinds drawn
        page_ids = decode(capture, "panopticIds", np.int32, (h, w))
        np.testing.assert_array_equal(page_ids, ids)
        category = np.zeros(len(page) + 1, np.uint8)
        for s in page:
            category[s["id"]] = s["category"] if s["isthing"] else 0
        np.testing.assert_array_equal(decode(capture, "classes", np.uint8, (h, w)), category[page_ids])
        np.testing.assert_array_equal(decode(capture, "foreground", np.float32, (h, w)), category[page_ids] > 0)
        assert stats["segments"] == len(page)
        hud = result[f"{variant}_stats"]["hud"].splitlines()
        assert hud[0] == entry["name"] and "ms" in hud[2] and "FPS" in hud[2]
        assert hud[-1] == f"{result[f'{variant}_stats']['segments']} segments"

    # The fp32 frame as drawn: kseg.viz.panoptic_overlay's colours (demo-video's), white thing
    # outlines and a "name 0.93" label per thing.
    capture, entry = result["fp32"], entries["fp32"]
    page = capture["segments"]
    page_ids = decode(capture, "panopticIds", np.int32, (capture["inputHeight"], capture["inputWidth"]))
    frame = decode(capture, "frame", np.uint8, (capture["height"], capture["width"], 4))[..., :3]
    output = decode(capture, "output", np.uint8, (capture["height"], capture["width"], 4))[..., :3]
    assert frame.shape[:2] == tuple(s * ZOOM for s in SIZE)
    by_id = {s["id"]: {"category_id": s["category"], "isthing": s["isthing"]} for s in page}
    expected = panoptic_colors(page_ids, by_id, sorted(PANOPTIC_SHAPE_CATEGORIES, key=lambda c: c["id"]))
    drawn = capture["regions"]["segments"]
    assert [(d["id"], d["color"]) for d in drawn] == [(s["id"], expected[s["id"]].tolist()) for s in page]
    assert [d["text"] for d in drawn] == [
        f"{entry['labels'][s['category']]} {s['score']:.2f}" if s["isthing"] else None for s in page]
    table = np.zeros((len(page) + 1, 3))
    for sid, color in expected.items():
        table[sid] = color
    owner = np.kron(page_ids, np.ones((ZOOM, ZOOM), np.int32))
    outline = np.kron(thing_outline(page_ids, [s["id"] for s in page if s["isthing"]]), np.ones((ZOOM, ZOOM), bool))
    labels = np.zeros(owner.shape, bool)
    for d in drawn:
        if d["label"]:
            box = d["label"]
            y, x = max(0, box["y"] - 1), max(0, box["x"] - 1)
            labels[y:box["y"] + box["height"] + 1, x:box["x"] + box["width"] + 1] = True
    assert labels.any()
    tinted = np.round(frame * (1 - OVERLAY_ALPHA) + table[owner] * OVERLAY_ALPHA)
    fill = (owner > 0) & ~outline & ~labels
    assert fill.sum() > 0.5 * owner.size
    assert close(output, tinted)[fill].mean() > 0.99
    bare = outline & ~labels
    assert bare.sum() > 50
    assert close(output, (255, 255, 255))[bare].mean() > 0.99
    assert close(output, frame, tol=0)[(owner == 0) & ~labels].all()
    legend = result["fp32_stats"]["legend"]
    assert len(legend) == result["fp32_stats"]["segments"]
    assert capture["legend"] == [{"text": d["text"] or entry["labels"][d["category"]],
                                  "color": "rgb({}, {}, {})".format(*d["color"])} for d in drawn]


def test_int32_outputs_casts_a_bool_output_and_keeps_the_rest(tmp_path):
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from export.webdemo_panoptic import int32_outputs

    x = keras.Input((6,), name="image")
    dense = keras.layers.Dense(3)(x)
    model = keras.Model(x, {"score": dense, "flag": keras.ops.greater(dense, 0.0)})
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    rewritten = int32_outputs(content, "m.tflite")
    assert int32_outputs(rewritten, "m.tflite") == rewritten  # no bool output left: the same bytes
    values = np.random.default_rng(0).normal(size=(1, 6)).astype(np.float32)
    before = Interpreter(model_content=content).get_signature_runner()
    after = Interpreter(model_content=rewritten).get_signature_runner()
    assert {k: v["dtype"] for k, v in after.get_output_details().items()} == {"score": np.float32, "flag": np.int32}
    old, new = before(image=values), after(image=values)
    assert old["flag"].dtype == bool and 0 < old["flag"].sum() < 3  # both values present
    np.testing.assert_array_equal(new["flag"], old["flag"].astype(np.int32))
    np.testing.assert_array_equal(new["score"], old["score"])


def test_webdemo_panoptic_option_copies_a_kseg_export_folder(panoptic_site, tmp_path, capsys):
    """`python3 -m export.webdemo --panoptic RUN` takes what `kseg export --run RUN` wrote (RUN/export),
    the categories from RUN/run.json (as demo-video finds them), and converts nothing."""
    from export import webdemo
    from export.webdemo_panoptic import add_panoptic_export
    from kseg.data.panoptic_shapes import PANOPTIC_SHAPE_CATEGORIES

    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"task": "panoptic", "categories": PANOPTIC_SHAPE_CATEGORIES}))
    report = {"model": "panoptic_fpn", "task": "panoptic", "variants": {"fp32": {}, "int8": {}}}
    (run / "export" / "export_report.json").write_text(json.dumps(report))
    for variant, path in panoptic_site["paths"].items():
        (run / "export" / f"panoptic_fpn_{variant}.tflite").write_bytes(path.read_bytes())
    out = tmp_path / "models"
    assert webdemo.main(["--out", str(out), "--panoptic", str(run), "--panoptic-variants", "int8"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert [e["name"] for e in index["models"]] == ["panoptic_fpn_int8"]
    copied = {k: v for k, v in index["models"][0].items() if k not in ("name", "file", "title")}
    served = {k: v for k, v in panoptic_site["entries"]["int8"].items() if k not in ("name", "file", "title", "sample")}
    assert copied == served
    assert (out / index["models"][0]["file"]).read_bytes() == panoptic_site["paths"]["int8"].read_bytes()

    report["task"] = "instance"
    (run / "export" / "export_report.json").write_text(json.dumps(report))
    assert webdemo.main(["--out", str(out), "--panoptic", str(run)]) == 2
    assert "says task 'instance'; expected \"panoptic\"" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no export_report.json"):
        add_panoptic_export(tmp_path / "nowhere", out)
