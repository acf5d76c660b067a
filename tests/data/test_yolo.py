"""Tests of kseg.data.yolo (the Ultralytics YOLO segmentation layout) and `kseg train --yolo-data`."""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from kseg import cli
from kseg.data import DataError
from kseg.data.instances import read_coco_instances
from kseg.data.yolo import label_path_of, read_yolo_data, read_yolo_yaml
from kseg.training.detection_data import load_instance_splits
from kseg.training.detection_spec import InstanceDataSpec
from tests.testing import SHARED_DATA, requires_shared_data

COCO128 = SHARED_DATA / "coco128-seg"
RECTANGLE = "0 0.25 0.2 0.75 0.2 0.75 0.6 0.25 0.6"  # x 5..15, y 2..6 px on a 20 x 10 image


def write_set(root, labels, names=("cat", "dog"), size=(20, 10), val=None, yaml_text=None):
    """A YOLO data set under `root`: {stem: label text or None (no file)} in images/train, labels/train.

    `val` the same for images/val; `yaml_text` replaces the generated data.yaml.
    """
    for split, items in (("train", labels), ("val", val or {})):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for stem, text in items.items():
            pixels = np.random.default_rng(len(stem)).integers(0, 255, (size[1], size[0], 3), np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"{stem}.jpg")
            if text is not None:
                (root / "labels" / split / f"{stem}.txt").write_text(text)
    names_text = "\n".join(f"  {i}: {n}" for i, n in enumerate(names))
    yaml_path = root / "data.yaml"
    yaml_path.write_text(yaml_text if yaml_text is not None else
                         f"path: .\ntrain: images/train\nval: images/{'val' if val else 'train'}\n"
                         f"names:\n{names_text}\n")
    return yaml_path


def test_reads_polygons_classes_and_images_without_labels(tmp_path):
    triangle = "1 0.1 0.1 0.9 0.15 0.5 0.95"
    yaml_path = write_set(tmp_path, {"a": f"{RECTANGLE}\n\n{triangle}\n", "b": None, "c": ""})
    examples, categories = read_yolo_data(yaml_path)
    assert categories == [{"id": 1, "name": "cat", "coco_id": None}, {"id": 2, "name": "dog", "coco_id": None}]
    assert [e["image_id"] for e in examples] == [0, 1, 2] and len(examples) == 3
    a = examples[0]
    assert a["image"].shape == (10, 20, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["image"], np.asarray(Image.open(tmp_path / "images/train/a.jpg")))
    np.testing.assert_array_equal(a["classes"], [1, 2])  # YOLO class + 1 (0 is background)
    np.testing.assert_array_equal(a["iscrowd"], [0, 0])
    want = np.zeros((10, 20), np.uint8)
    want[2:6, 5:15] = 1  # continuous coordinates: pixel i covers [i, i + 1)
    np.testing.assert_array_equal(a["masks"][0], want)
    np.testing.assert_array_equal(a["boxes"][0], [2, 5, 6, 15])
    for empty in examples[1:]:  # no label file, and an empty one: no instance
        assert empty["masks"].shape == (0, 10, 20) and empty["boxes"].shape == (0, 4)
        assert empty["classes"].shape == (0,)


def test_masks_equal_the_coco_reader_on_the_same_polygons(tmp_path):
    rng = np.random.default_rng(3)
    lines = [f"{k % 2} " + " ".join(f"{v:.6f}" for v in rng.uniform(0, 1, 2 * (3 + k))) for k in range(6)]
    yaml_path = write_set(tmp_path / "yolo", {"img": "\n".join(lines)}, size=(37, 23))
    examples, _ = read_yolo_data(yaml_path)
    anns = [{"id": k, "image_id": 1, "category_id": int(line.split()[0]) + 1, "iscrowd": 0,
             "segmentation": [[float(v) * (37 if i % 2 == 0 else 23) for i, v in enumerate(line.split()[1:])]]}
            for k, line in enumerate(lines)]
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "img.jpg", "height": 23, "width": 37}],
                                "annotations": anns,
                                "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a random polygon may be too thin for a pixel
        want = read_coco_instances(coco, tmp_path / "yolo/images/train")[0][0]
    got = examples[0]
    for key in ("masks", "classes", "boxes"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert got["masks"].sum() > 0


def test_names_as_a_list_coordinates_within_tolerance_and_a_separate_val_split(tmp_path):
    yaml_path = write_set(tmp_path, {"a": "1 -0.0005 0 1.0005 0 1 1.0004 0 1"}, val={"v": RECTANGLE}, yaml_text=(
        "train: images/train\nval: [images/val]\nnames: [cat, dog]\nnc: 2\n"))
    config = read_yolo_yaml(yaml_path)
    assert config["names"] == ["cat", "dog"] and config["root"] == str(tmp_path)
    assert config["val"] == [str(tmp_path / "images/val/v.jpg")]
    a = read_yolo_data(yaml_path)[0][0]
    np.testing.assert_array_equal(a["boxes"], [[0, 0, 10, 20]])  # clipped to the image
    assert a["masks"].sum() == 200
    assert read_yolo_data(yaml_path, "val")[0][0]["masks"].sum() == 40
    train, val, categories = load_instance_splits(InstanceDataSpec(source="yolo", yolo_data=str(yaml_path)))
    assert (len(train), len(val), len(categories)) == (1, 1, 2)
    assert val[0]["masks"].sum() == 40


def test_val_equal_to_train_holds_images_out(tmp_path):
    yaml_path = write_set(tmp_path, {f"im{i}": RECTANGLE for i in range(10)})
    spec = InstanceDataSpec(source="yolo", yolo_data=str(yaml_path), val_fraction=0.3)
    train, val, _ = load_instance_splits(spec)
    assert (len(train), len(val)) == (7, 3)
    assert not {e["image_id"] for e in train} & {e["image_id"] for e in val}  # the index in the file order


@pytest.mark.parametrize("labels, yaml_text, pattern", [
    ({"a": RECTANGLE}, "train: images/train\nnames: [cat]\n", r"data.yaml: key\(s\) val missing or empty"),
    ({"a": RECTANGLE}, "train: images/train\nval: images/train\nnames: {0: cat, 2: dog}\n",
     r"names has keys \[0, 2\], expected the class ids 0..1"),
    ({"a": RECTANGLE}, "train: images/train\nval: images/train\nnames: [cat, dog]\nnc: 3\n", r"nc 3, expected 2"),
    ({"a": RECTANGLE}, "train: images/nowhere\nval: images/train\nnames: [cat]\n",
     r"train 'images/nowhere' is .*nowhere, which is not an existing folder"),
    ({"a": RECTANGLE}, "train: [images/train\n", r"cannot read the data yaml"),
    ({"a": "2 0.1 0.1 0.5 0.1 0.5 0.5"}, None, r"a.txt:1: class '2', expected an integer class id in 0..1"),
    ({"a": "0.5 0.1 0.1 0.5 0.1 0.5 0.5"}, None, r"a.txt:1: class '0.5', expected an integer"),
    ({"a": f"{RECTANGLE}\n0 0.1 0.1 0.5 0.1 0.5"}, None, r"a.txt:2: 5 coordinates after the class, expected an even"),
    ({"a": "0 0.1 0.1 0.5 0.5"}, None, r"a.txt:1: 2 point\(s\), expected a polygon of at least 3 points \(4 numbers "
                                       r"is a YOLO detection box"),
    ({"a": "0 0.1 0.1 1.2 0.1 0.5 0.5"}, None, r"a.txt:1: coordinate 3 \(x\) is 1.2, expected a normalized value in "
                                               r"\[0, 1\] \(the pixel coordinate divided by the image width\)"),
    ({"a": "0 0.1 0.1 0.5 -0.01 0.5 0.5"}, None, r"a.txt:1: coordinate 4 \(y\) is -0.01, expected .* height"),
    ({"a": "0 0.1 0.1 0.5 nan 0.5 0.5"}, None, r"a.txt:1: coordinate 4 \(y\) is nan"),
    ({"a": "0 0.1 0.1 0.5 x 0.5 0.5"}, None, r"a.txt:1: could not convert string to float: 'x', expected numbers"),
])
def test_errors_name_the_file_line_value_and_expectation(tmp_path, labels, yaml_text, pattern):
    yaml_path = write_set(tmp_path, labels, yaml_text=yaml_text)
    with pytest.raises(DataError, match=pattern):
        read_yolo_data(yaml_path)


def test_unreadable_image_and_labels_without_images(tmp_path):
    yaml_path = write_set(tmp_path, {"a": RECTANGLE})
    (tmp_path / "labels/train/lonely.txt").write_text(RECTANGLE)
    with pytest.warns(UserWarning, match=r"1 label file\(s\) of split 'train' have no image .*lonely.txt"):
        assert len(read_yolo_data(yaml_path)[0]) == 1
    (tmp_path / "images/train/a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"a.jpg: cannot read the image"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        read_yolo_data(yaml_path)


def test_an_exif_rotated_image_is_refused(tmp_path):
    yaml_path = write_set(tmp_path, {"a": RECTANGLE})
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    Image.open(tmp_path / "images/train/a.jpg").save(tmp_path / "images/train/a.jpg", exif=exif)
    with pytest.raises(DataError, match=r"a.jpg: EXIF orientation 6, expected 1 \(no rotation\)"):
        read_yolo_data(yaml_path)


def test_label_path_follows_ultralytics():
    assert label_path_of("/d/images/train/x.jpg") == "/d/labels/train/x.txt"
    assert label_path_of("/images/d/images/val/y.PNG") == "/images/d/labels/val/y.txt"


def test_cli_rejects_mixed_sources(tmp_path, capsys):
    yaml_path = write_set(tmp_path, {"a": RECTANGLE})
    out = tmp_path / "run"
    for extra, named in [(["--shapes", 4], "--shapes and --yolo-data"),
                         (["--images", tmp_path], "--yolo-data needs no --images"),
                         (["--class-names", "a"], "--yolo-data needs no --images, --val-* or --class-names")]:
        code = cli.main(["train", "--task", "instance", "--yolo-data", str(yaml_path), *map(str, extra),
                         "--output", str(out), "--quiet"])
        assert code == 2 and named in capsys.readouterr().err
    assert cli.main(["train", "--images", str(tmp_path), "--masks", str(tmp_path), "--num-classes", "2",
                     "--yolo-data", str(yaml_path)]) == 2
    assert "--yolo-data: not an option of kseg train --task semantic" in capsys.readouterr().err


@pytest.mark.slow
def test_train_evaluate_predict_on_a_yolo_set(tmp_path, capsys):
    stems = {f"im{i}": f"{RECTANGLE}\n1 0.1 0.1 0.4 0.1 0.3 0.8" for i in range(6)}
    yaml_path = write_set(tmp_path / "data", stems, size=(64, 64))
    out = tmp_path / "run"
    assert cli.main(["train", "--task", "instance", "--yolo-data", str(yaml_path), "--image-size", "64",
                     "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--output", str(out),
                     "--quiet"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["source"] == "yolo" and run["data"]["yolo_data"] == str(yaml_path)
    assert [c["name"] for c in run["categories"]] == ["cat", "dog"]
    assert (run["train"]["train_images"], run["train"]["val_images"]) == (5, 1)
    assert cli.main(["evaluate", "--run", str(out), "--quiet"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["images"] == 1
    other = write_set(tmp_path / "other", stems, size=(48, 80), val={"v1": RECTANGLE, "v2": RECTANGLE})
    assert cli.main(["evaluate", "--run", str(out), "--yolo-data", str(other), "--output", str(tmp_path / "o.json"),
                     "--quiet"]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["images"] == 2  # the other yaml's val split
    renamed = write_set(tmp_path / "renamed", stems, names=("cat", "cow"))
    assert cli.main(["evaluate", "--run", str(out), "--yolo-data", str(renamed), "--quiet"]) == 2
    assert "expected the run's 2 classes in order: ['cat', 'dog']" in capsys.readouterr().err
    assert cli.main(["predict", "--run", str(out), str(tmp_path / "data/images/train/im0.jpg"), "--output",
                     str(tmp_path / "pred"), "--quiet"]) == 0
    assert (tmp_path / "pred/im0_instances.json").exists()


# ----------------------------------------------------------------------------- coco128-seg


def _scanline_mask(points, height, width):
    """Even-odd rule at pixel centres: pixel (r, c) is inside when (c + 0.5, r + 0.5) is."""
    mask = np.zeros((height, width), np.uint8)
    start, end = points, np.roll(points, -1, axis=0)
    for row in range(height):
        y = row + 0.5
        crossing = (start[:, 1] <= y) != (end[:, 1] <= y)
        a, b = start[crossing], end[crossing]
        xs = np.sort(a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1]))
        for left, right in zip(xs[0::2], xs[1::2]):
            mask[row, max(int(np.ceil(left - 0.5)), 0):min(int(np.ceil(right - 0.5)), width)] = 1
    return mask


@pytest.mark.data
@requires_shared_data
def test_coco128_counts_and_mask_areas():
    """coco128-seg: 128 images, 929 instances (254 person) of 71 classes; 2 images have no label
    file, and 2 label files (12 instances, 7 person) have no image, which is why counting every
    .txt line gives 941 and 261. Masks agree with an independent even-odd scanline fill of the
    polygons: total area to 1e-4, each instance within a quarter of its perimeter in pixels."""
    with pytest.warns(UserWarning, match=r"2 label file\(s\) .*000000000656.txt, .*000000000659.txt"):
        examples, categories = read_yolo_data(COCO128 / "data.yaml")
    assert len(examples) == 128 and len(categories) == 80 and categories[0]["name"] == "person"
    counts, got_area, want_area = np.zeros(81, int), 0, 0
    for example, path in zip(examples, examples.paths):
        classes, masks = example["classes"], example["masks"]
        np.add.at(counts, classes, 1)
        height, width = example["image"].shape[:2]
        lines = open(label_path_of(path)).read().split("\n") if len(classes) else []
        polygons = [np.array(line.split()[1:], float).reshape(-1, 2) * (width, height) for line in lines if line]
        assert len(polygons) == len(classes)
        for mask, polygon in zip(masks, polygons):
            want = _scanline_mask(polygon, height, width)
            perimeter = np.hypot(*(polygon - np.roll(polygon, -1, axis=0)).T).sum()
            assert abs(int(mask.sum()) - int(want.sum())) <= perimeter / 4
            got_area, want_area = got_area + int(mask.sum()), want_area + int(want.sum())
    assert counts.sum() == 929 and counts[1] == 254 and (counts[1:] > 0).sum() == 71
    assert sum(len(e["classes"]) == 0 for e in examples) == 2
    assert abs(got_area / want_area - 1) < 1e-4


def test_a_data_yaml_that_is_not_utf8_is_refused_naming_it(tmp_path):
    yaml_path = write_set(tmp_path, {"a": RECTANGLE})
    yaml_path.write_bytes(yaml_path.read_bytes() + b"\n# \xff\xfe\n")
    with pytest.raises(DataError, match=r"data.yaml: the data yaml is not UTF-8 text \(byte \d+: b'\\xff'\)"):
        read_yolo_yaml(yaml_path)
