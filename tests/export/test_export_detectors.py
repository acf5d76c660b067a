"""Detector export variants: fp32, fp16, dynamic range and int8 TFLite of Mask R-CNN, Panoptic FPN and
MaskFormer through export_detector, builtin ops only, integer convolutions in int8, and the report's
flag (and `kseg export`'s exit status) for a variant that misses its bound; `export_run` of an
instance run folder writes what `kseg export` writes."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from export import runtime
from export.detector_report import detector_markdown, export_detector
from kseg.data.panoptic_shapes import PANOPTIC_SHAPE_CATEGORIES, panoptic_shapes_examples
from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples
from kseg.models import build_model

SIZE = (64, 64)
VARIANTS = ("fp32", "fp16", "dynamic", "int8")


def input_types(content, op_name="CONV_2D", scope=""):
    """The dtype of the first input of every `op_name` op (whose output name holds `scope`):
    int8 where the op computes in integers."""
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return {np.dtype(tensors[op["inputs"][0]]["dtype"]).name for op in interpreter._get_ops_details()
            if op["op_name"] == op_name and scope in tensors[op["outputs"][0]]["name"]}


def conv_input_types(content):
    """The dtype of every CONV_2D's activation input: int8 where the convolution computes in integers."""
    return input_types(content, "CONV_2D")


def check_variants(report):
    """Every variant is a builtin-op model that LiteRT runs; sizes and compute types are those of its variant."""
    entries = report["variants"]
    assert list(entries) == list(VARIANTS)
    contents = {v: open(e["file"], "rb").read() for v, e in entries.items()}
    for content in contents.values():
        runtime.check_model(content)  # raises on Flex or custom ops
    assert conv_input_types(contents["fp32"]) == {"float32"}
    assert conv_input_types(contents["int8"]) == {"int8"}  # integer compute in backbone, FPN and heads
    # ROI Align samples in float (DETECTOR_FLOAT_LAYERS); the box geometry, mask pasting and fusion too
    assert "int8" not in input_types(contents["int8"], "GATHER", "roi_align")
    assert entries["fp16"]["ops"].get("DEQUANTIZE", 0) > 0  # float16 weights, dequantized to float32
    assert entries["fp16"]["size_ratio_vs_fp32"] >= 1.9
    assert entries["dynamic"]["size_ratio_vs_fp32"] >= 3.0
    assert entries["int8"]["size_ratio_vs_fp32"] >= 3.0
    for e in entries.values():
        assert e["cpu"]["median_ms"] > 0 and e["parity"]["images"] == report["images"]
        assert e["accuracy"] is not None and e["metric"] == report["metric"]


@pytest.fixture(scope="module")
def mask_rcnn_report(tmp_path_factory):
    keras.utils.set_random_seed(0)  # the same weights whatever ran before (an untrained mask sits near 0.5)
    model = build_model("mask_rcnn", "small", num_classes=len(SHAPE_CATEGORIES), input_shape=(*SIZE, 3))
    examples = shapes_dataset_examples(3, seed=2, image_size=SIZE, max_instances=3, min_size=12)
    calibration = np.stack([e["image"] for e in shapes_dataset_examples(4, seed=1, image_size=SIZE,
                                                                        max_instances=3, min_size=12)])
    # int8 boxes cannot agree with float ones to 1e-6 of the image size: this bound is missed.
    report = export_detector(model, tmp_path_factory.mktemp("mask_rcnn"), examples, SHAPE_CATEGORIES,
                             calibration=calibration.astype(np.float32), tolerances={"int8": {"max_box_error": 1e-6}},
                             latency_runs=2, verbose=False)
    return report


def test_mask_rcnn_exports_every_variant_with_builtin_ops(mask_rcnn_report):
    check_variants(mask_rcnn_report)
    assert mask_rcnn_report["metric"] == "mask_AP"
    int8 = open(mask_rcnn_report["variants"]["int8"]["file"], "rb").read()
    sampled = input_types(int8, "GATHER", "roi_align")
    assert "float32" in sampled and "int8" not in sampled  # ROI Align is there, and samples in float
    assert mask_rcnn_report["variants"]["int8"]["kept_float"]["layers"][:2] == ["proposals", "box_roi_align"]
    fp32 = mask_rcnn_report["variants"]["fp32"]
    assert fp32["passed"], fp32["failures"]
    assert fp32["parity"]["detections"] > 0 and fp32["parity"]["max_box_error"] <= 1e-3
    # Beside fp32 and fp16: the GPU package, the runs of ops between the two NMS ops as GPU parts.
    for variant in ("fp32", "fp16"):
        package = mask_rcnn_report["variants"][variant]["gpu_package"]
        assert [p["device"] for p in package["parts"]] == ["gpu", "cpu", "gpu", "cpu", "gpu"]
        assert package["crossings"] == 4 and package["folder"] == f"mask_rcnn_{variant}.gpu"
        folder = Path(mask_rcnn_report["variants"][variant]["file"]).parent / package["folder"]
        assert len(runtime.read_partitioned(folder)[0]) == 5
    assert "gpu_package" not in mask_rcnn_report["variants"]["int8"]


def test_a_variant_that_misses_its_bound_is_flagged(mask_rcnn_report):
    int8 = mask_rcnn_report["variants"]["int8"]
    assert not int8["passed"] and any(f.startswith("max_box_error") for f in int8["failures"])
    assert not mask_rcnn_report["passed"]
    row = next(line for line in detector_markdown(mask_rcnn_report).splitlines() if line.startswith("| int8 "))
    assert "**FAIL**" in row and "> 1e-06" in row


def test_int8_needs_calibration_images(tmp_path):
    model = build_model("mask_rcnn", "small", num_classes=len(SHAPE_CATEGORIES), input_shape=(*SIZE, 3))
    examples = shapes_dataset_examples(1, seed=2, image_size=SIZE, max_instances=3, min_size=12)
    with pytest.raises(ValueError, match="calibration"):
        export_detector(model, tmp_path, examples, SHAPE_CATEGORIES, variants=("int8",), verbose=False)
    with pytest.raises(ValueError, match="max_ap"):
        export_detector(model, tmp_path, examples, SHAPE_CATEGORIES, variants=("fp32",),
                        tolerances={"fp32": {"max_ap": 1.0}}, verbose=False)


def panoptic_report(model, tmp_path):
    examples = panoptic_shapes_examples(2, seed=3, image_size=SIZE)
    calibration = np.stack([e["image"] for e in panoptic_shapes_examples(4, seed=1, image_size=SIZE)])
    return export_detector(model, tmp_path, examples, PANOPTIC_SHAPE_CATEGORIES,
                           calibration=calibration.astype(np.float32), latency_runs=2, verbose=False)


@pytest.mark.slow
def test_panoptic_fpn_exports_every_variant_with_builtin_ops(tmp_path):
    model = build_model("panoptic_fpn", "small", num_classes=3, num_stuff_classes=3, input_shape=(*SIZE, 3),
                        semantic_channels=32)
    report = panoptic_report(model, tmp_path)
    check_variants(report)
    assert report["metric"] == "PQ" and report["variants"]["int8"]["parity"]["min_panoptic_agreement"] is not None
    package = report["variants"]["fp32"]["gpu_package"]
    assert [p["device"] for p in package["parts"]] == ["gpu", "cpu"] * 3 + ["gpu"]  # NMS, NMS, the fusion's IFs
    if Path(runtime.SWIFTSHADER_ICD).exists():
        # kseg bench runs the package with its GPU parts on the accelerator; the IF part runs on the
        # CPU interpreter (LiteRT's CompiledModel fails to invoke it on its CPU path).
        from tests.export.test_bench import gpu_row

        folder = Path(report["variants"]["fp32"]["file"]).parent / package["folder"]
        assert gpu_row(str(folder), tmp_path)["fully_accelerated"] is True


@pytest.mark.slow
def test_maskformer_exports_every_variant_with_builtin_ops(tmp_path):
    from kseg.models.maskformer import SMALL_CONFIG as MASKFORMER_SMALL

    model = build_model("maskformer", num_classes=3, num_stuff_classes=3, input_shape=(*SIZE, 3), **MASKFORMER_SMALL)
    report = panoptic_report(model, tmp_path)
    check_variants(report)
    assert report["metric"] == "PQ"


@pytest.mark.slow
def test_export_run_of_an_instance_run_writes_what_kseg_export_writes(tmp_path):
    from export import export_run
    from export.run import ExportFailed
    from kseg.cli import main
    from tests.export.test_export import assert_same_export

    run = tmp_path / "run"  # as kseg train --task instance --shapes 8 --image-size 64 leaves it
    run.mkdir()
    data = {"source": "shapes", "image_size": list(SIZE), "max_instances": 3, "shapes": 8}
    (run / "run.json").write_text(json.dumps({"task": "instance", "data": data, "categories": SHAPE_CATEGORIES,
                                              "model": {"name": "mask_rcnn"}}))
    build_model("mask_rcnn", "small", num_classes=len(SHAPE_CATEGORIES), input_shape=(*SIZE, 3)).save(run / "best.keras")
    with pytest.raises(ValueError, match="^`images`, `head`: not options of exporting an instance run"):
        export_run(run, tmp_path / "refused", images=str(tmp_path), head="class_map")
    # int8 boxes cannot agree with float ones to 1e-6 of the image size: the int8 variant is flagged.
    assert main(["export", "--run", str(run), "--output", str(tmp_path / "cli"), "--variants", "fp32", "int8",
                 "--num-calibration", "3", "--tolerance", "int8:max_box_error=1e-6", "--quiet"]) == 1
    with pytest.raises(ExportFailed, match="int8") as failed:
        export_run(run, tmp_path / "python", variants=("fp32", "int8"), num_calibration=3,
                   tolerances={"int8": {"max_box_error": 1e-6}}, verbose=False)
    assert_same_export(tmp_path / "cli", tmp_path / "python", exact=("fp32",))  # int8 calibration: last bits vary
    report = failed.value.report
    assert report == json.loads((tmp_path / "python" / "export_report.json").read_text())
    # What export_run read from the run: its size, its 2 held-out images, 3 of its 6 training images.
    assert report["task"] == "instance" and report["image_size"] == list(SIZE)
    assert report["images"] == 2 and report["calibration_images"] == 3
    assert report["variants"]["fp32"]["passed"] and not report["variants"]["int8"]["passed"]
    assert not (tmp_path / "refused").exists()


class _Branching(keras.layers.Layer):
    """x * 3 + 1 where the input's sum is positive, else x - 2: an IF op with two branch subgraphs."""

    def call(self, x):
        return tf.cond(tf.reduce_sum(x) > 0.0, lambda: x * 3.0 + 1.0, lambda: x - 2.0)


def test_float_layers_keep_the_branches_of_their_if_ops_float():
    # The panoptic fusion op paints each block of slots in an IF op: quantizing its branches
    # made a trained Panoptic FPN's int8 variant write segments of category 0.
    from export.runtime import dtype_name, op_name, parse_model
    from export.tflite import convert_variant

    image = keras.Input((8, 8, 3), batch_size=1)
    features = keras.layers.Conv2D(4, 3, padding="same", name="body")(image)
    model = keras.Model(image, _Branching(name="branching")(features))
    samples = [np.random.default_rng(i).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32) for i in range(4)]
    content = convert_variant(model, "int8", samples, int8_io="float32", float_layers=["branching"])
    parsed = parse_model(content)
    assert input_types(content, "CONV_2D") == {"int8"}
    assert any(op_name(parsed, op) == "IF" for op in parsed.subgraphs[0].operators)
    assert len(parsed.subgraphs) == 3
    for branch in parsed.subgraphs[1:]:
        assert {dtype_name(t.type) for t in branch.tensors} == {"float32"}, branch.name


def test_float_layers_keep_their_ops_and_the_outputs_they_write_float():
    """`float_layers` names Keras layers: their ops, and the model outputs they write, stay float
    in the int8 variant while the other layers compute in integers."""
    from export.tflite import convert_variant, layer_nodes

    image = keras.Input((8, 8, 3), batch_size=1)
    features = keras.layers.Conv2D(4, 3, padding="same", name="body")(image)
    flat = keras.layers.Flatten()(features)
    post = keras.layers.Dense(5, name="post")(flat)
    model = keras.Model(image, {"score": keras.layers.Activation("sigmoid", name="squash")(post), "raw": flat})
    samples = [np.random.default_rng(i).uniform(0, 1, (1, 8, 8, 3)).astype(np.float32) for i in range(4)]
    nodes = layer_nodes(convert_variant(model, "fp32"), ["post"])
    assert nodes and all("post" in name or ":" in name for name in nodes)  # its op, and the output it writes
    plain = convert_variant(model, "int8", samples, int8_io="float32", float_fallback=True)
    kept = convert_variant(model, "int8", samples, int8_io="float32", float_layers=["post"])
    assert input_types(plain, "FULLY_CONNECTED") == {"int8"} and input_types(kept, "FULLY_CONNECTED") == {"float32"}
    assert input_types(kept, "CONV_2D") == {"int8"}
    assert input_types(kept, "LOGISTIC") == {"float32"}  # the output op that "post" feeds
    with pytest.raises(ValueError, match="no op of the model"):
        convert_variant(model, "int8", samples, int8_io="float32", float_layers=["absent"])
