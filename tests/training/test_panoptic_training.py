"""The panoptic task: its tf.data batches, COCO panoptic to training examples, the colour
rendering, and `kseg train/evaluate/predict --task panoptic` end to end."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from kseg import viz
from kseg.cli import main as cli_main
from kseg.data import DataError
from kseg.data.instance_pipeline import instance_dataset
from kseg.data.panoptic import read_coco_panoptic, write_coco_panoptic
from kseg.data.panoptic_training import panoptic_training_example, training_categories
from kseg.data.panoptic_shapes import PANOPTIC_SHAPE_CATEGORIES, panoptic_shapes_examples
from kseg.metrics.panoptic import evaluate_panoptic_folders
from kseg.training.detection_eval import evaluate_panoptic_model
from kseg.training.detection_runs import load_panoptic_model
from kseg.training.detection_spec import PanopticDataSpec
from kseg.training.examples import resize_example
from tests.testing import SHARED_DATA, requires_shared_data

SAMPLE = SHARED_DATA / "coco-panoptic-sample"


def test_batches_flip_the_semantic_map_with_the_image_and_masks():
    examples = panoptic_shapes_examples(6, seed=3, image_size=(64, 96))
    ds = instance_dataset(examples, image_size=(64, 96), max_instances=8, batch_size=2, shuffle=False, flip=True,
                          seed=1, semantic=True, repeat=False)
    flipped = kept = 0
    for b, batch in enumerate(ds):
        semantic, masks = batch["semantic"].numpy(), batch["masks"].numpy()
        assert semantic.shape == (2, 64, 96) and semantic.dtype == np.int32
        for j in range(2):
            source = examples[2 * b + j]
            # The semantic map says "thing" exactly under the (flipped or not) instance masks.
            np.testing.assert_array_equal(semantic[j] == 0, masks[j].any(axis=0))
            if np.array_equal(semantic[j], source["semantic"]):
                kept += 1
            else:
                np.testing.assert_array_equal(semantic[j], source["semantic"][:, ::-1])
                np.testing.assert_array_equal(batch["image"].numpy()[j], source["image"][:, ::-1].astype(np.float32))
                flipped += 1
    assert flipped and kept


def test_batches_resize_the_semantic_map_nearest():
    example = panoptic_shapes_examples(1, seed=4, image_size=(64, 64))[0]
    ds = instance_dataset([example], image_size=(32, 32), max_instances=8, batch_size=1, shuffle=False, flip=False,
                          semantic=True, repeat=False)
    batch = next(iter(ds))
    semantic = batch["semantic"].numpy()[0]
    # Nearest with half-pixel centres: output pixel i reads input pixel 2 i + 1; the masks alike.
    np.testing.assert_array_equal(semantic, example["semantic"][1::2, 1::2])
    np.testing.assert_array_equal(semantic == 0, batch["masks"].numpy()[0].any(axis=0))


def test_batches_without_a_semantic_map_name_the_example():
    example = panoptic_shapes_examples(1, seed=4, image_size=(32, 32))[0]
    del example["semantic"]
    ds = instance_dataset([example], image_size=(32, 32), max_instances=8, batch_size=1, semantic=True, repeat=False)
    with pytest.raises(Exception, match="image_id 0.*no 'semantic' map"):
        next(iter(ds))


def _tiny_panoptic_set():
    """A 6x8 COCO-style example: a car (file id 3), a crowd of cars, sky (id 7), road (id 9), void."""
    panoptic = np.zeros((6, 8), np.int32)
    panoptic[:2] = 10  # sky
    panoptic[4:] = 20  # road
    panoptic[2:4, 1:3] = 30  # a car
    panoptic[2:4, 5:7] = 40  # a crowd of cars
    segments = {10: {"category_id": 7, "iscrowd": 0}, 20: {"category_id": 9, "iscrowd": 0},
                30: {"category_id": 3, "iscrowd": 0}, 40: {"category_id": 3, "iscrowd": 1}}
    categories = [{"id": 9, "name": "road", "isthing": 0}, {"id": 3, "name": "car", "isthing": 1},
                  {"id": 7, "name": "sky", "isthing": 0}]
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    return {"image_id": 5, "panoptic": panoptic, "segments": segments, "image": image}, categories


def test_coco_panoptic_becomes_things_stuff_and_a_semantic_map():
    example, file_categories = _tiny_panoptic_set()
    categories = training_categories(file_categories)
    assert [(c["id"], c["name"], c["isthing"], c["coco_id"]) for c in categories] == [
        (1, "car", 1, 3), (2, "sky", 0, 7), (3, "road", 0, 9)]
    out = panoptic_training_example(example, categories)
    np.testing.assert_array_equal(out["classes"], [1, 1])
    np.testing.assert_array_equal(out["iscrowd"], [0, 1])
    np.testing.assert_array_equal(out["boxes"], [[2, 1, 4, 3], [2, 5, 4, 7]])
    np.testing.assert_array_equal(out["masks"][0], example["panoptic"] == 30)
    expected = np.full((6, 8), 255)
    expected[:2] = 1  # sky: stuff channel 1
    expected[4:] = 2  # road: stuff channel 2
    expected[2:4, 1:3] = 0  # the car is "a thing"; the crowd and the void stay ignored
    np.testing.assert_array_equal(out["semantic"], expected)
    assert out["segments"][40] == {"category_id": 1, "iscrowd": 1, "isthing": True}
    assert out["segments"][20] == {"category_id": 3, "iscrowd": 0, "isthing": False}


def test_coco_panoptic_with_an_unknown_category_names_the_segment():
    example, file_categories = _tiny_panoptic_set()
    example["segments"][20]["category_id"] = 99
    with pytest.raises(DataError, match="image_id 5.*segment 20 has category_id 99"):
        panoptic_training_example(example, training_categories(file_categories))


@requires_shared_data
def test_the_real_coco_panoptic_sample_converts_losslessly():
    coco, file_categories = read_coco_panoptic(SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples",
                                               SAMPLE / "input_images")
    categories = training_categories(file_categories)
    for example in coco:
        out = panoptic_training_example(example, categories)
        things = [sid for sid, info in out["segments"].items() if info["isthing"]]
        assert len(out["classes"]) == len(things) > 0
        # Every thing pixel is one mask's; every stuff pixel carries its category's channel.
        np.testing.assert_array_equal(out["masks"].sum(axis=0), np.isin(example["panoptic"], things))
        num_things = sum(c["isthing"] for c in categories)
        for sid, info in out["segments"].items():
            region = example["panoptic"] == sid
            if not info["isthing"] and not info["iscrowd"]:
                assert (out["semantic"][region] == info["category_id"] - num_things).all()
        assert (out["semantic"][example["panoptic"] == 0] == 255).all()


def test_resizing_an_example_drops_the_segments_that_vanish():
    example, file_categories = _tiny_panoptic_set()
    example = panoptic_training_example(example, training_categories(file_categories))
    example["panoptic"][4, 6] = 50  # one pixel that half-size nearest never reads
    example["segments"][50] = {"category_id": 3, "iscrowd": 0, "isthing": False}
    small = resize_example(example, (3, 4))
    np.testing.assert_array_equal(small["panoptic"], example["panoptic"][1::2, 1::2])
    np.testing.assert_array_equal(small["semantic"], example["semantic"][1::2, 1::2])
    assert sorted(small["segments"]) == [10, 20, 30, 40]


def test_panoptic_overlay_colours_outlines_and_checks_ids():
    example = panoptic_shapes_examples(1, seed=2, image_size=(64, 64))[0]
    categories = PANOPTIC_SHAPE_CATEGORIES
    out = viz.panoptic_overlay(example["image"], example["panoptic"], example["segments"], categories, alpha=1.0,
                               labels=False)
    colors = viz.panoptic_colors(example["panoptic"], example["segments"], categories)
    for sid, info in example["segments"].items():
        region = example["panoptic"] == sid
        if info["isthing"]:
            outline = viz.mask_outline(region)
            assert (out[outline] == 255).all()
            inside = region & ~outline
            assert (out[inside] == colors[sid]).all()
        else:
            assert (out[region] == viz.palette(len(categories))[info["category_id"] - 1]).all() or any(
                segment["isthing"] for segment in example["segments"].values())
    with pytest.raises(ValueError, match=r"panoptic ids \[1\] have no entry in segments"):
        viz.panoptic_overlay(example["image"], example["panoptic"], {k: v for k, v in example["segments"].items()
                                                                     if k != 1}, categories)


def test_data_spec_rejects_mixed_and_partial_sources():
    with pytest.raises(ValueError, match="`panoptic_pngs` and `images`"):
        PanopticDataSpec(source="coco_panoptic", panoptic_json="a.json")
    with pytest.raises(ValueError, match="`shapes` makes its own images"):
        PanopticDataSpec(source="shapes", shapes=10, images="x")
    with pytest.raises(ValueError, match="divisible by 32"):
        PanopticDataSpec(source="shapes", shapes=10, image_size=(100, 100))


def test_cli_rejects_options_of_other_tasks(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "--task", "panoptic", "--coco-json", "x.json", "--output", str(out)]) == 2
    assert "--coco-json: not an option of kseg train --task panoptic" in capsys.readouterr().err
    assert cli_main(["train", "--task", "instance", "--panoptic-json", "x.json", "--output", str(out)]) == 2
    assert "--panoptic-json: not an option of kseg train --task instance" in capsys.readouterr().err
    assert cli_main(["train", "--task", "panoptic", "--shapes", "8", "--images", str(tmp_path),
                     "--output", str(out)]) == 2
    assert "expected one panoptic data source" in capsys.readouterr().err
    assert not out.exists()


def test_train_evaluate_predict_on_synthetic_scenes(tmp_path, capsys):
    run = tmp_path / "run"
    cli_main(["train", "--task", "panoptic", "--shapes", "10", "--image-size", "64", "--epochs", "2",
              "--steps-per-epoch", "2", "--batch-size", "2", "--output", str(run), "--quiet"])
    for name in ("best.keras", "final.keras", "history.csv", "curves.png", "metrics.json", "run.json"):
        assert (run / name).exists(), name
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"semantic", "mask", "val_PQ", "val_SQ", "val_RQ", "val_PQ_things", "val_PQ_stuff"} <= set(header)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == 2 and set(metrics["per_class"]) == {c["name"] for c in PANOPTIC_SHAPE_CATEGORIES}
    assert "PQ" in capsys.readouterr().out

    cli_main(["evaluate", "--run", str(run), "--quiet"])
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["all"] == metrics["all"]

    assert cli_main(["export", "--run", str(run), "--output", str(tmp_path / "export"), "--num-images", "2",
                     "--variants", "fp32"]) == 0
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert report["passed"] and report["task"] == "panoptic"
    assert report["variants"]["fp32"]["parity"]["min_panoptic_agreement"] >= 0.999

    # Predict on held-out-style images at the model's size, then score the written COCO
    # panoptic folder against ground truth written the same way: the same PQ as in memory.
    truth = panoptic_shapes_examples(3, seed=9, image_size=(64, 64))
    images = tmp_path / "images"
    images.mkdir()
    for i, example in enumerate(truth):
        Image.fromarray(example["image"]).save(images / f"{i}.png")
    cli_main(["predict", "--run", str(run), str(images), "--output", str(tmp_path / "pred"), "--quiet"])
    pictures = sorted(os.listdir(tmp_path / "pred"))
    assert pictures == ["0_panoptic.png", "1_panoptic.png", "2_panoptic.png", "panoptic", "panoptic.json"]
    assert Image.open(tmp_path / "pred" / "0_panoptic.png").size == (64, 64)
    write_coco_panoptic([{"image_id": i, "file_name": f"{i}.png", "panoptic": e["panoptic"],
                          "segments": {k: {key: v[key] for key in ("category_id", "iscrowd")}
                                       for k, v in e["segments"].items()}} for i, e in enumerate(truth)],
                        tmp_path / "gt.json", tmp_path / "gt")
    from_files = evaluate_panoptic_folders(tmp_path / "gt.json", tmp_path / "gt", tmp_path / "pred" / "panoptic.json",
                                           tmp_path / "pred" / "panoptic", categories=PANOPTIC_SHAPE_CATEGORIES)
    in_memory = evaluate_panoptic_model(load_panoptic_model(str(run)), truth, PANOPTIC_SHAPE_CATEGORIES)
    for group in ("all", "things", "stuff"):
        for key in ("pq", "sq", "rq"):
            expected = in_memory[group][key]
            actual = from_files[group][key]
            assert (expected is None and np.isnan(actual)) or actual == pytest.approx(expected, abs=1e-12)


def test_maskformer_trains_evaluates_and_exports_through_the_panoptic_task(tmp_path):
    run = tmp_path / "run"
    assert cli_main(["train", "--task", "panoptic", "--model", "maskformer", "--shapes", "8", "--image-size", "64",
                     "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--max-instances", "6",
                     "--output", str(run), "--quiet"]) == 0
    saved = json.loads((run / "run.json").read_text())
    assert saved["model"]["name"] == "maskformer" and saved["model"]["constructor"]["num_queries"] == 20
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"class", "mask", "dice", "aux0", "val_PQ"} <= set(header)
    assert cli_main(["evaluate", "--run", str(run), "--quiet"]) == 0
    assert json.loads((run / "evaluation.json").read_text())["images"] == 2
    assert cli_main(["export", "--run", str(run), "--output", str(tmp_path / "export"), "--num-images", "2",
                     "--variants", "fp32"]) == 0
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert report["passed"] and report["variants"]["fp32"]["parity"]["min_panoptic_agreement"] >= 0.999
