"""kseg export: TFLite variants, in-graph pre/post-processing, the parity report, its CLI and
`export_run` (the same export from Python).

Parity is measured on real images (the vendored ISBI sample), never on noise.
"""

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from export import report as export_report
from export import tflite
from kseg.data.samples import ISBI_CLASSES, ISBI_REMAP, isbi_sample_dirs
from tests import testing
from tests.testing import sample_examples

SWIFTSHADER = Path("/usr/lib/chromium/vk_swiftshader_icd.json")
needs_gpu_emulation = pytest.mark.skipif(
    not SWIFTSHADER.exists(), reason="LiteRT's GPU accelerator needs SwiftShader here: apt-get install chromium libvulkan1"
)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(testing.UNET_VARIANTS))
def test_every_unet_family_exports_with_fp32_parity_and_full_gpu_delegation(variant, tmp_path):
    model = testing.small_unet(variant, num_classes=2)
    examples = sample_examples(limit=4)
    gpu = SWIFTSHADER.exists()
    result = export_report.export_model(
        model, tmp_path, examples=examples, variants=("fp32", "fp16"), image_size=(64, 64),
        labels=ISBI_CLASSES, gpu=gpu, verbose=False,
    )
    fp32 = result["variants"]["fp32"]
    assert fp32["max_abs_error"] <= 1e-4, fp32
    assert fp32["passed"], fp32["failures"]
    for entry in result["variants"].values():
        ops = entry["op_counts"]
        assert not any(op.startswith("Flex") or op == "CUSTOM" for op in ops), ops
        assert Path(entry["file"]).exists()
        if gpu:
            assert entry["gpu"]["fully_accelerated"], entry["gpu"]
            assert entry["gpu"]["analyzer"]["compatible"], entry["gpu"]["analyzer"]
            assert entry["gpu"]["vs_cpu_agreement"] >= 0.99, entry["gpu"]


@pytest.mark.slow
def test_all_variants_of_a_trained_model_keep_its_decisions(trained_unet, tmp_path):
    model, examples = trained_unet
    result = export_report.export_model(
        model, tmp_path, examples=examples, image_size=(64, 64), labels=ISBI_CLASSES, ignore_class=None,
        gpu=False, verbose=False,
    )
    variants = result["variants"]
    assert set(variants) == {"fp32", "fp16", "dynamic", "int8"}
    assert result["passed"], {v: e["failures"] for v, e in variants.items()}
    assert result["keras_mean_iou"] > 0.5  # the fixture did learn something
    for name, entry in variants.items():
        assert abs(entry["mean_iou_drop"]) <= 0.02, (name, entry["mean_iou"], result["keras_mean_iou"])
    # Weight bytes: fp16 halves them, int8 quarters them (the graph itself is a small overhead).
    assert variants["fp16"]["size_ratio_vs_fp32"] > 1.8
    assert variants["int8"]["size_ratio_vs_fp32"] > 3.0
    assert variants["int8"]["input"]["dtype"] == "uint8"
    assert "CONV_2D" in variants["int8"]["op_counts"]
    on_disk = json.loads((tmp_path / "export_report.json").read_text())
    assert on_disk["variants"]["int8"]["agreement"] == variants["int8"]["agreement"]
    assert "| int8 |" in (tmp_path / "export_report.md").read_text()


def test_mean_iou_in_the_report_is_the_confusion_matrix_of_the_predictions(trained_unet, tmp_path):
    model, examples = trained_unet
    result = export_report.export_model(model, tmp_path, examples=examples, variants=("fp32",), image_size=(64, 64),
                                        gpu=False, metadata=False, verbose=False)
    logits = model(examples["images"].astype("float32"), training=False).numpy()
    pred = logits.argmax(-1)
    truth = examples["masks"]
    ious = [((pred == k) & (truth == k)).sum() / ((pred == k) | (truth == k)).sum() for k in (0, 1)]
    assert result["keras_mean_iou"] == pytest.approx(np.mean(ious), abs=1e-9)
    assert result["variants"]["fp32"]["mean_iou"] == pytest.approx(np.mean(ious), abs=1e-3)


def test_class_map_head_returns_argmax_and_confidence(trained_unet):
    model, examples = trained_unet
    fixed = tflite.device_model(model, (64, 64), input_type="uint8", output="class_map")
    content = tflite.convert_variant(fixed, "fp32")
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    assert inp["dtype"] == np.uint8 and tuple(inp["shape"]) == (1, 64, 64, 1)
    image = examples["images"][:1]
    interpreter.set_tensor(inp["index"], image)
    interpreter.invoke()
    outputs = {np.dtype(d["dtype"]).kind: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    logits = model(image.astype("float32"), training=False).numpy()
    assert outputs["i"].shape == (1, 64, 64)
    assert (outputs["i"] == logits.argmax(-1)).mean() >= 0.999
    np.testing.assert_allclose(outputs["f"], tf.nn.softmax(logits).numpy().max(-1), atol=1e-5)
    assert "ARG_MAX" in tflite.op_counts(content)


def test_rgb_input_converts_to_grey_in_the_graph(trained_unet):
    model, examples = trained_unet
    grey = examples["images"][:1]
    rgb = np.repeat(grey, 3, axis=-1)
    rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + 30, 0, 255)  # not grey: the weights matter
    fixed = tflite.device_model(model, (64, 64), input_type="uint8", rgb_input=True)
    content = tflite.convert_variant(fixed, "fp32")
    got = tflite.run(content, rgb)
    luma = rgb.astype(np.float32) @ np.array(tflite.LUMA, np.float32)
    expected = model(luma[..., None], training=False).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
    with pytest.raises(ValueError, match="1-channel"):
        tflite.device_model(testing.small_unet("unet-transpose", channels=3), (64, 64), rgb_input=True)


def test_int8_needs_real_calibration_images_of_the_right_shape(trained_unet):
    model, _ = trained_unet
    fixed = tflite.device_model(model, (64, 64), input_type="uint8")
    with pytest.raises(ValueError, match="representative"):
        tflite.convert_variant(fixed, "int8")
    with pytest.raises(ValueError, match=r"\(1, 32, 32, 1\).*expected \(1, 64, 64, 1\)"):
        tflite.convert_variant(fixed, "int8", representative=[np.zeros((1, 32, 32, 1), np.uint8)])
    with pytest.raises(ValueError, match="variant"):
        tflite.convert_variant(fixed, "int4")


class _CropAndResize(keras.layers.Layer):
    """A layer built on a TF op that is not a TFLite builtin (Flex only)."""

    def call(self, x):
        boxes = tf.constant([[0.0, 0.0, 0.5, 0.5]])
        return tf.image.crop_and_resize(x, boxes, tf.zeros([1], tf.int32), (8, 8))


def test_flex_ops_fail_with_their_names_unless_allowed():
    inputs = keras.Input((16, 16, 1))
    model = keras.Model(inputs, _CropAndResize()(inputs))
    with pytest.raises(tflite.FlexOpsError, match="CropAndResize") as err:
        tflite.convert(model)
    assert err.value.ops == ["CropAndResize"]
    content = tflite.convert(model, allow_flex=True)
    assert "FlexCropAndResize" in tflite.op_counts(content)


def test_a_variant_that_misses_its_tolerance_is_flagged(trained_unet, tmp_path):
    model, examples = trained_unet
    result = export_report.export_model(
        model, tmp_path, examples=examples, variants=("fp32", "dynamic"), image_size=(64, 64), gpu=False,
        metadata=False, tolerances={"dynamic": {"min_agreement": 1.01}}, verbose=False,
    )
    assert not result["passed"]
    assert result["variants"]["fp32"]["passed"]
    assert result["variants"]["dynamic"]["failures"] == [
        f"argmax agreement {result['variants']['dynamic']['agreement']:.4f} < 1.01"
    ]
    assert "**FAIL**" in (tmp_path / "export_report.md").read_text()


def test_export_cli_writes_files_and_exits_nonzero_on_a_parity_failure(trained_unet, tmp_path, capsys):
    from kseg.cli import main

    model, _ = trained_unet
    model.save(tmp_path / "model.keras")
    images, masks = isbi_sample_dirs()
    common = ["export", "--model", str(tmp_path / "model.keras"), "--images", str(images), "--masks", str(masks),
              "--remap", "0:0,255:1", "--image-size", "64", "--labels", "membrane,cell", "--no-gpu", "--quiet",
              "--num-images", "4"]
    assert main(common + ["--variants", "fp32", "int8", "--output", str(tmp_path / "ok")]) == 0
    written = json.loads((tmp_path / "ok" / "export_report.json").read_text())
    assert written["passed"] and set(written["variants"]) == {"fp32", "int8"}
    assert (tmp_path / "ok" / "model_fp32.tflite").exists() or any((tmp_path / "ok").glob("*_int8.tflite"))
    assert main(common + ["--variants", "dynamic", "--output", str(tmp_path / "bad"),
                          "--tolerance", "dynamic:min_agreement=1.01"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_export_cli_bad_input_names_the_problem(tmp_path, capsys):
    from kseg.cli import main

    assert main(["export", "--model", str(tmp_path / "missing.keras"), "--images", "x"]) == 2
    assert "missing.keras" in capsys.readouterr().err
    assert main(["export"]) == 2
    assert "--run" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    model = testing.small_unet("unet-transpose")
    model.save(tmp_path / "m.keras")
    assert main(["export", "--model", str(tmp_path / "m.keras"), "--images", str(tmp_path / "empty"),
                 "--image-size", "64"]) == 2
    assert "no PNG/JPEG images" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "m.keras"), "--images", str(tmp_path / "empty"),
                 "--tolerance", "fp32=1"]) == 2
    assert "VARIANT:KEY=VALUE" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- export_run
TIMINGS = ("convert_seconds", "cpu", "speedup_vs_fp32", "targets_missed")  # of a run, not of the export


def written_report(folder):
    """export_report.json of `folder`, its variants' files by name and without timings."""
    report = json.loads((Path(folder) / "export_report.json").read_text())
    for entry in report["variants"].values():
        assert Path(entry["file"]).parent == Path(folder)
        entry["file"] = Path(entry["file"]).name
        for key in TIMINGS:
            entry.pop(key, None)
    return report


def assert_same_export(a, b, exact=tflite.VARIANTS):
    """Two export folders hold the same files and the same report; the `exact` variants' .tflite bytes
    and measurements are equal, the others' sizes, ops and verdicts."""
    names = sorted(p.name for p in Path(a).iterdir())
    assert names == sorted(p.name for p in Path(b).iterdir())
    first, second = written_report(a), written_report(b)
    for variant in set(first["variants"]) - set(exact):  # e.g. int8 calibration, whose last bits vary
        for report in (first, second):
            entry = report["variants"][variant]
            report["variants"][variant] = {k: entry[k] for k in ("file", "size_bytes", "passed") if k in entry}
    assert first == second
    for variant in exact:
        if variant in first["variants"]:
            name = first["variants"][variant]["file"]
            assert Path(a, name).read_bytes() == Path(b, name).read_bytes(), variant


@pytest.fixture(scope="module")
def isbi_run(tmp_path_factory):
    """A semantic run folder as kseg train leaves it: run.json on the ISBI sample (64x64 grey, masks remapped,
    named classes, 2 of the 10 pairs held out) and best.keras of a small U-Net."""
    from kseg.training import DataSpec

    run = tmp_path_factory.mktemp("isbi_run")
    images, masks = isbi_sample_dirs()
    spec = DataSpec(images=str(images), masks=str(masks), num_classes=2, remap=ISBI_REMAP, channels=1,
                    image_size=(64, 64), class_names=list(ISBI_CLASSES))
    (run / "run.json").write_text(json.dumps({"data": spec.to_json(), "model": {"name": "unet"}, "train": {}}))
    testing.small_unet("unet-transpose", num_classes=2).save(run / "best.keras")
    return run


@pytest.mark.slow
def test_export_run_from_python_writes_what_kseg_export_writes(isbi_run, tmp_path):
    from export import export_run
    from export.run import ExportFailed
    from kseg.cli import main

    flags = ["--variants", "fp32", "int8", "dynamic", "--num-images", "3", "--num-calibration", "5", "--no-gpu",
             "--quiet", "--tolerance", "dynamic:min_agreement=1.01"]
    assert main(["export", "--run", str(isbi_run), "--output", str(tmp_path / "cli"), *flags]) == 1
    with pytest.raises(ExportFailed, match="dynamic") as failed:
        export_run(isbi_run, tmp_path / "python", variants=("fp32", "int8", "dynamic"), num_images=3,
                   num_calibration=5, gpu=False, tolerances={"dynamic": {"min_agreement": 1.01}}, verbose=False)
    assert_same_export(tmp_path / "cli", tmp_path / "python")
    assert (tmp_path / "cli" / "export_report.md").read_text() == (tmp_path / "python" / "export_report.md").read_text()
    report = failed.value.report
    assert report == json.loads((tmp_path / "python" / "export_report.json").read_text())
    # What export_run read from run.json: size, channels, labels, remapped masks, the held-out pairs.
    assert report["input"]["shape"] == [1, 64, 64, 1] and report["labels"] == list(ISBI_CLASSES)
    assert report["parity_images"] == 2 and report["calibration_images"] == 5 and report["keras_mean_iou"] > 0
    assert [v for v, e in report["variants"].items() if not e["passed"]] == ["dynamic"]
    # Without output_dir it writes RUN/export, as kseg export does.
    export_run(isbi_run, variants=("fp32",), gpu=False, verbose=False)
    fp32 = (isbi_run / "export" / "unet_fp32.tflite").read_bytes()
    assert fp32 == (tmp_path / "cli" / "unet_fp32.tflite").read_bytes()


def test_export_run_bad_arguments_name_the_argument(isbi_run, tmp_path):
    from export import export_run

    with pytest.raises(ValueError, match="`run_dir` or `model_path`"):
        export_run()
    with pytest.raises(ValueError, match=r"`tolerances`\['int8'\]: key 'max_box_error', expected one of max_abs_error"):
        export_run(isbi_run, tmp_path, tolerances={"int8": {"max_box_error": 1.0}})
    with pytest.raises(ValueError, match="^`images`: "):
        export_run(model_path=isbi_run / "best.keras", output_dir=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_webdemo_exports_its_models_without_the_cli(isbi_run, tmp_path, monkeypatch, capsys):
    import kseg
    from export import webdemo
    from tests.import_graph import read_imports

    found = [f"{i.path}:{i.line}" for i in read_imports() if i.module.split(".")[0] == "export"
             and i.target.startswith("kseg.cli")]
    assert found == [], "export/ imports kseg.cli"
    monkeypatch.setitem(sys.modules, "kseg.cli", None)  # any import of kseg.cli now raises ImportError
    monkeypatch.delattr(kseg, "cli", raising=False)
    models = tmp_path / "models"
    assert webdemo.main(["--out", str(models), "--run", str(isbi_run), "--name", "isbi"]) == 0, capsys.readouterr()
    report = json.loads((models / "isbi" / "export_report.json").read_text())
    assert list(report["variants"]) == list(tflite.VARIANTS) and report["passed"]
    assert report["input"]["rgb_input"] and report["input"]["shape"] == [1, 64, 64, 3]  # phones feed RGB
    index = json.loads((models / "index.json").read_text())
    assert [e["file"] for e in index["models"]] == [f"isbi/isbi_{v}.tflite" for v in tflite.VARIANTS]
    from kseg.data import find_pairs, split_pairs

    held_out = split_pairs(find_pairs(*isbi_sample_dirs()), val_fraction=0.2, seed=0)[1][0][0]  # the run's split
    sample = np.asarray(keras.utils.load_img(models / "sample.png"))
    assert (sample == np.asarray(keras.utils.load_img(held_out, color_mode="rgb"))).all()
