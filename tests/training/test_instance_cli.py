"""`kseg train --task instance`, `kseg evaluate` and `kseg predict` end to end on tiny data.

One small Mask R-CNN is trained once (16 synthetic 64 x 64 images, 2 epochs of 15 steps: about
20 s on 2 CPU cores) and shared by the tests of the run files, evaluation and prediction.
"""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from kseg import cli
from tests.testing import SHARED_DATA, requires_shared_data

COCO_SAMPLE = SHARED_DATA / "coco-panoptic-sample"
SIZE = 64
RUN_FILES = ("run.json", "best.keras", "final.keras", "history.csv", "curves.png", "metrics.json")


def run_cli(*args):
    return cli.main([str(a) for a in args])


def read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("instance") / "run"
    code = run_cli("train", "--task", "instance", "--shapes", 16, "--image-size", SIZE, "--epochs", 2,
                   "--batch-size", 4, "--steps-per-epoch", 15, "--learning-rate", 2e-3, "--output", out, "--quiet")
    assert code == 0
    return out


def model_and_validation(run):
    """best.keras and the run's validation examples, categories (read back from run.json)."""
    import keras

    import kseg.models.mask_rcnn  # noqa: F401  (registers the classes best.keras names)
    from kseg.training.detection_data import load_instance_splits
    from kseg.training.detection_runs import load_instance_run

    record = load_instance_run(run)
    train, val, categories = load_instance_splits(record["data"])
    assert len(train) == 13 and len(val) == 3  # round(16 * 0.2) held out
    assert not {e["image_id"] for e in train} & {e["image_id"] for e in val}
    return keras.models.load_model(run / "best.keras"), list(val), categories


@pytest.mark.slow
def test_train_writes_the_run_files(shapes_run):
    for name in RUN_FILES:
        assert (shapes_run / name).exists(), name
    run = read_json(shapes_run / "run.json")
    assert run["task"] == "instance"
    assert [c["name"] for c in run["categories"]] == ["circle", "square", "triangle"]
    assert run["model"]["config"] == "small" and run["model"]["constructor"]["backbone"] == "small"
    assert run["data"]["source"] == "shapes" and run["data"]["shapes"] == 16
    assert run["train"]["steps_per_epoch"] == 15 and run["train"]["learning_rate"] == 2e-3

    with open(shapes_run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert {"loss", "mask", "rpn_objectness", "val_segm_AP", "val_bbox_AP50"} <= set(rows[0])
    assert all(math.isfinite(float(r["loss"])) for r in rows)

    metrics = read_json(shapes_run / "metrics.json")
    for iou_type in ("segm", "bbox"):
        for stat in ("AP", "AP50", "AP75"):
            value = metrics[iou_type][stat]
            assert value is not None and math.isfinite(value) and 0.0 <= value <= 1.0, (iou_type, stat, value)
    assert metrics["epochs_run"] == 2 and metrics["model"] == "best.keras"
    # best.keras is the epoch of the best validation mask AP, and metrics.json scores it.
    assert metrics["segm"]["AP"] == pytest.approx(max(float(r["val_segm_AP"]) for r in rows), abs=1e-9)
    curves = Image.open(shapes_run / "curves.png")
    assert curves.width > curves.height > 200


@pytest.mark.slow
def test_evaluate_equals_an_independent_coco_evaluation(shapes_run, capsys):
    from kseg.metrics.coco import evaluate_instances

    assert run_cli("evaluate", "--run", shapes_run, "--quiet") == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "mask" in printed and "evaluation.json" in printed
    report = read_json(shapes_run / "evaluation.json")
    metrics = read_json(shapes_run / "metrics.json")

    model, val, categories = model_and_validation(shapes_run)
    outputs = model.predict(np.stack([e["image"] for e in val]).astype("float32"), batch_size=4, verbose=0)
    independent = evaluate_instances(val, outputs, categories)
    assert independent["segm"]["AP"] > 0  # else the comparison below proves little
    for iou_type in ("segm", "bbox"):
        for stat in ("AP", "AP50", "AP75"):
            assert report[iou_type][stat] == pytest.approx(independent[iou_type][stat], abs=1e-9), (iou_type, stat)
            assert report[iou_type][stat] == pytest.approx(metrics[iou_type][stat], abs=1e-9), (iou_type, stat)


@pytest.mark.slow
def test_predict_writes_overlays_and_json_that_decode_to_the_predicted_masks(shapes_run, tmp_path):
    from kseg.data.shapes import shapes_dataset_examples
    from kseg.training.detection_predict import predict_image

    folder = tmp_path / "images"
    folder.mkdir()
    example = shapes_dataset_examples(1, seed=7, image_size=(SIZE, SIZE))[0]
    Image.fromarray(example["image"]).save(folder / "small.png")
    large = shapes_dataset_examples(1, seed=8, image_size=(96, 128))[0]["image"]
    Image.fromarray(large).save(folder / "large.png")
    out = tmp_path / "pred"
    assert run_cli("predict", "--run", shapes_run, folder, "--output", out, "--score-threshold", 0.05,
                   "--quiet") == 0
    assert sorted(p.name for p in out.iterdir()) == ["large_instances.json", "large_instances.png",
                                                     "small_instances.json", "small_instances.png"]

    model, _, categories = model_and_validation(shapes_run)
    names = [c["name"] for c in categories]
    for stem, image in (("small", example["image"]), ("large", large)):
        record = read_json(out / f"{stem}_instances.json")
        overlay = np.asarray(Image.open(out / f"{stem}_instances.png"))
        assert overlay.shape == image.shape and record["height"] == image.shape[0]
        n = len(record["scores"])
        assert len(record["boxes"]) == len(record["classes"]) == len(record["labels"]) == len(record["masks"]) == n
        assert all(s >= 0.05 for s in record["scores"]) and record["scores"] == sorted(record["scores"], reverse=True)
        assert all(names[c - 1] == label for c, label in zip(record["classes"], record["labels"]))
        decoded = mask_utils.decode([{"size": m["size"], "counts": m["counts"].encode()} for m in record["masks"]])
        expected = predict_image(model, image.astype("float32"))
        keep = expected["scores"] >= 0.05
        np.testing.assert_array_equal(decoded.transpose(2, 0, 1), expected["masks"][keep])
        np.testing.assert_allclose(record["boxes"], expected["boxes"][keep].reshape(-1, 4), atol=0.01)
        if stem == "small":  # at the model's size: the masks are the model's own output at 0.5
            assert n > 0
            raw = model.predict(image[None].astype("float32"), verbose=0)
            probabilities = raw["masks"][0, : int(raw["num_detections"][0])][raw["scores"][0, :len(keep)] >= 0.05]
            np.testing.assert_array_equal(decoded.transpose(2, 0, 1), probabilities >= 0.5)


@pytest.mark.slow
@requires_shared_data
def test_export_writes_a_tflite_detector_that_matches_keras(shapes_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert run_cli("export", "--run", shapes_run, "--output", out, "--num-images", 2, "--variants", "fp32") == 0
    report = json.loads((out / "export_report.json").read_text())
    fp32 = report["variants"]["fp32"]
    assert report["passed"] and report["task"] == "instance" and fp32["parity"]["images"] == 2
    assert fp32["parity"]["matched_same_class"] == fp32["parity"]["detections"]
    assert (out / f"{report['model']}_fp32.tflite").stat().st_size > 100_000
    assert not any("Flex" in op for op in fp32["ops"])
    assert run_cli("export", "--run", shapes_run, "--tolerance", "int8:min_agreement=0.9", "--output", out) == 2
    assert "key 'min_agreement', expected one of max_box_error" in capsys.readouterr().err


@requires_shared_data
def test_train_from_a_coco_json_on_the_real_sample(tmp_path):
    out = tmp_path / "coco"
    code = run_cli("train", "--task", "instance", "--coco-json", COCO_SAMPLE / "panoptic_coco_detection_format.json",
                   "--images", COCO_SAMPLE / "input_images", "--image-size", 128, "--epochs", 1,
                   "--steps-per-epoch", 2, "--batch-size", 2, "--output", out, "--quiet")
    assert code == 0
    for name in RUN_FILES:
        assert (out / name).exists(), name
    run = read_json(out / "run.json")
    assert run["data"]["source"] == "coco" and len(run["categories"]) == 133
    assert run["train"]["train_images"] == 1 and run["train"]["val_images"] == 1
    metrics = read_json(out / "metrics.json")
    assert metrics["images"] == 1
    assert all(v is None or 0.0 <= v <= 1.0 for t in ("segm", "bbox") for v in metrics[t].values())


# ----------------------------------------------------------------------------- bad input


def write_fake_run(folder, task="instance"):
    """A run folder with only run.json (no model): enough for the checks made before loading one."""
    from kseg.data.shapes import SHAPE_CATEGORIES
    from kseg.training.detection_spec import InstanceDataSpec

    folder.mkdir()
    spec = InstanceDataSpec(source="shapes", shapes=4, image_size=(SIZE, SIZE))
    (folder / "run.json").write_text(json.dumps({"task": task, "data": spec.to_json(),
                                                 "categories": SHAPE_CATEGORIES}))
    return folder


@pytest.mark.parametrize("args, named", [
    (["--shapes", 1], "--shapes 1"),
    (["--image-size", 100], "--image-size 100x100"),
    (["--coco-json", "{tmp}/missing.json", "--images", "{tmp}"], "missing.json"),
    (["--coco-json", "{tmp}/missing.json"], "--images"),
    (["--label-maps", "{tmp}"], "--images"),
    (["--shapes", 4, "--coco-json", "{tmp}/a.json", "--images", "{tmp}"], "--shapes and --coco-json"),
    (["--masks", "{tmp}", "--num-classes", 3], "--masks, --num-classes"),
    (["--images", "{tmp}"], "--images needs --coco-json or --label-maps"),
    (["--max-instances", 0], "--max-instances 0"),
    (["--val-fraction", 1.5], "--val-fraction 1.5"),
    (["--set", "no_such_argument=1"], "no_such_argument"),
    (["--shapes", 4, "--class-names", "a,b"], "--class-names a,b"),
    (["--label-maps", "{tmp}", "--images", "{tmp}", "--val-coco-json", "{tmp}/v.json"], "--val-coco-json goes with"),
    (["--shapes", 4, "--val-images", "{tmp}"], "--shapes makes its own held-out images"),
])
def test_bad_instance_training_input_exits_2_naming_the_argument(tmp_path, capsys, args, named):
    args = [str(a).format(tmp=tmp_path) for a in args]
    out = tmp_path / "run"
    assert run_cli("train", "--task", "instance", "--epochs", 1, *args, "--output", out, "--quiet") == 2
    assert named.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (out / "run.json").exists()


def test_bad_task_and_option_mixes_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "--task", "depth", "--shapes", 4)
    assert exit_info.value.code == 2 and "invalid choice: 'depth'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # semantic, the default task, still needs its folders
        run_cli("train", "--num-classes", 2)
    assert exit_info.value.code == 2 and "--images, --masks" in capsys.readouterr().err
    assert run_cli("train", "--images", tmp_path, "--masks", tmp_path, "--num-classes", 2, "--shapes", 8) == 2
    assert "--shapes: not an option of kseg train --task semantic" in capsys.readouterr().err

    run = write_fake_run(tmp_path / "run")
    assert run_cli("evaluate", "--run", run, "--masks", tmp_path) == 2
    assert "--masks" in capsys.readouterr().err
    assert run_cli("evaluate", "--run", run, "--images", tmp_path) == 2
    assert "--coco-json or --label-maps" in capsys.readouterr().err
    assert run_cli("predict", "--run", run, tmp_path / "nothing.png", "--output", tmp_path / "p") == 2
    assert "nothing.png" in capsys.readouterr().err
    assert run_cli("evaluate", "--run", write_fake_run(tmp_path / "odd", task="detection")) == 2
    assert "'detection'" in capsys.readouterr().err
    semantic = write_fake_run(tmp_path / "semantic", task="semantic")
    assert run_cli("predict", "--run", semantic, tmp_path, "--output", tmp_path / "p", "--score-threshold", 0.3) == 2
    assert "--score-threshold" in capsys.readouterr().err
