"""Tests of kseg.data.instances (COCO JSON, label maps, padding, tf.data) and kseg.data.shapes."""

import json
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils

from kseg.data import DataError
from kseg.data.instance_pipeline import instance_dataset, pad_instances
from kseg.data.instances import CocoInstances, masks_to_boxes, read_coco_instances, read_instance_label_map
from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples, shapes_example
from tests.testing import SHARED_DATA, requires_shared_data

COCO_SAMPLE = SHARED_DATA / "coco-panoptic-sample"
COCO_JSON = COCO_SAMPLE / "panoptic_coco_detection_format.json"
STARDIST = SHARED_DATA / "stardist-nuclei"


# ---------------------------------------------------------------------------------- helpers


def test_masks_to_boxes_is_tight_and_continuous():
    masks = np.zeros((2, 10, 12), np.uint8)
    masks[0, 3:8, 2:5] = 1  # rows 3..7, cols 2..4
    np.testing.assert_array_equal(masks_to_boxes(masks), [[3, 2, 8, 5], [0, 0, 0, 0]])
    assert masks_to_boxes(masks).dtype == np.float32
    assert masks_to_boxes(np.zeros((0, 4, 4))).shape == (0, 4)


# ---------------------------------------------------------------------------------- COCO JSON (real sample)


@requires_shared_data
def test_read_coco_sample_matches_the_json():
    data = json.loads(COCO_JSON.read_text())
    examples, categories = read_coco_instances(COCO_JSON, COCO_SAMPLE / "input_images", include_crowd=True)
    assert isinstance(examples, CocoInstances) and len(examples) == 2
    assert [c["id"] for c in categories] == list(range(1, 134))
    assert [c["coco_id"] for c in categories] == sorted(c["id"] for c in data["categories"])
    to_class = {c["coco_id"]: c["id"] for c in categories}
    for example, record in zip(examples, data["images"]):
        anns = [a for a in data["annotations"] if a["image_id"] == record["id"]]
        n, h, w = len(anns), record["height"], record["width"]
        assert example["image_id"] == record["id"]
        assert example["image"].shape == (h, w, 3) and example["image"].dtype == np.uint8
        assert example["masks"].shape == (n, h, w) and example["masks"].dtype == np.uint8
        assert set(np.unique(example["masks"])) <= {0, 1}
        assert example["classes"].dtype == np.int32 and example["boxes"].dtype == np.float32
        np.testing.assert_array_equal(example["classes"], [to_class[a["category_id"]] for a in anns])
        np.testing.assert_array_equal(example["iscrowd"], [a["iscrowd"] for a in anns])
        np.testing.assert_array_equal(example["masks"].sum(axis=(1, 2)), [a["area"] for a in anns])
        x, y, bw, bh = np.array([a["bbox"] for a in anns], np.float32).T  # COCO's boxes are tight on the masks
        np.testing.assert_array_equal(example["boxes"], np.stack([y, x, y + bh, x + bw], axis=1))
        np.testing.assert_array_equal(example["boxes"], masks_to_boxes(example["masks"]))


@requires_shared_data
def test_read_coco_sample_crowds_and_category_names():
    examples, _ = read_coco_instances(COCO_JSON, COCO_SAMPLE / "input_images")
    assert [len(e["classes"]) for e in examples] == [17, 30]  # 3 crowd regions left out
    assert all(e["iscrowd"].sum() == 0 for e in examples)
    examples, categories = read_coco_instances(COCO_JSON, COCO_SAMPLE / "input_images",
                                               category_names=["horse", "person"])
    assert categories == [{"id": 1, "name": "horse", "coco_id": 19}, {"id": 2, "name": "person", "coco_id": 1}]
    assert examples.image_ids == [142238, 439180]
    np.testing.assert_array_equal(examples[0]["classes"], [2] * 13)
    assert sorted(examples[1]["classes"].tolist()) == [1] * 11 + [2] * 13
    with pytest.raises(DataError, match=r"category_names \['unicorn'\].*expected names such as"):
        read_coco_instances(COCO_JSON, COCO_SAMPLE / "input_images", category_names=["unicorn"])


# ---------------------------------------------------------------------------------- COCO JSON (made up)


def _coco_folder(tmp_path, annotations, images=None, drop=None, image_sizes=None):
    """Writes a 20x30 (HxW) and a 10x10 PNG and a JSON with `annotations`; returns the JSON path."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for name, (h, w) in (image_sizes or {"a.png": (20, 30), "b.png": (10, 10)}).items():
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(folder / name)
    data = {"images": images or [{"id": 7, "file_name": "a.png", "height": 20, "width": 30},
                                 {"id": 8, "file_name": "b.png", "height": 10, "width": 10}],
            "annotations": annotations,
            "categories": [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}]}
    if drop:
        del data[drop]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def _ann(segmentation, image_id=7, category_id=5, **extra):
    return {"id": 1, "image_id": image_id, "category_id": category_id, "segmentation": segmentation, **extra}


def test_read_coco_polygons_and_rle_forms(tmp_path):
    expected = np.zeros((20, 30), np.uint8)
    expected[4:10, 3:15] = 1  # rows 4..9, cols 3..14
    compressed = mask_utils.encode(np.asfortranarray(expected))
    flat = expected.ravel(order="F")  # COCO runs go down the columns, starting with a run of zeros
    uncompressed = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    anns = [_ann([[3, 4, 14.99, 4, 14.99, 9.99, 3, 9.99]]),  # pixel centers inside: rows 4..9, cols 3..14
            _ann({"size": [20, 30], "counts": compressed["counts"].decode()}, category_id=2),
            _ann({"size": [20, 30], "counts": uncompressed})]
    examples, categories = read_coco_instances(_coco_folder(tmp_path, anns), tmp_path / "images")
    assert categories == [{"id": 1, "name": "dog", "coco_id": 2}, {"id": 2, "name": "cat", "coco_id": 5}]
    example = examples[0]
    np.testing.assert_array_equal(example["masks"][1:], [expected, expected])
    assert abs(int(example["masks"][0].sum()) - int(expected.sum())) <= 12  # polygon rasterization edges
    np.testing.assert_array_equal(example["classes"], [2, 1, 2])
    np.testing.assert_array_equal(example["boxes"][1:], [[4, 3, 10, 15]] * 2)
    np.testing.assert_array_equal(example["boxes"], masks_to_boxes(example["masks"]))
    assert examples[1]["masks"].shape == (0, 10, 10) and examples[1]["boxes"].shape == (0, 4)  # kept, N = 0


def test_read_coco_zero_area_skipped_and_bbox_fallback(tmp_path):
    anns = [_ann([], bbox=[0, 0, 0, 0]),  # nothing at all: skipped
            _ann(None, bbox=[2.0, 3.0, 4.0, 5.0]),  # a box without a mask: kept, box from the JSON
            _ann([[5, 5, 6, 5, 6, 6, 5, 6, 5, 5]], image_id=8)]
    with pytest.warns(UserWarning, match="skipped 1 zero-area annotation"):
        examples, _ = read_coco_instances(_coco_folder(tmp_path, anns), tmp_path / "images")
    np.testing.assert_array_equal(examples[0]["boxes"], [[3, 2, 8, 6]])
    assert examples[0]["masks"].sum() == 0
    assert examples[1]["masks"].sum() > 0


@pytest.mark.parametrize("case, pattern", [
    ("no annotations", r"instances.json: top-level field\(s\) annotations missing.*expected a COCO instances JSON"),
    ("unknown image", r"annotation id 1 \(annotations\[0\]\): image_id 99 is not the id of any of the 2 images, "
                      r"expected one of 7, 8"),
    ("unknown category", r"annotation id 1 .*category_id 3 is not in 'categories', expected one of 5, 2"),
    ("two points", r"polygon 0 has 4 coordinates .*expected an even number >= 6"),
    ("odd polygon", r"polygon 0 has 7 coordinates .*expected an even number >= 6"),
    ("rle size", r"annotation id 1 .*RLE size \[10, 10\] \(H, W\), expected the image's size \[20, 30\]"),
    ("rle counts", r"uncompressed RLE counts sum to 10, expected non-negative ints summing to H \* W = 600"),
    ("missing file", r"images/c.png: image file not found \(image id 9 of .*instances.json\), expected file_name "
                     r"'c.png' in"),
    ("image size", r"images/a.png: image is 20x30 \(HxW\), expected 21x30 as image id 7 of .*instances.json says"),
])
def test_read_coco_errors_name_file_value_and_expectation(tmp_path, case, pattern):
    images, drop, ann = None, None, _ann([[1, 1, 5, 1, 5, 5]])
    if case == "no annotations":
        drop = "annotations"
    elif case == "unknown image":
        ann["image_id"] = 99
    elif case == "unknown category":
        ann["category_id"] = 3
    elif case == "two points":
        ann["segmentation"] = [[1, 1, 5, 5]]  # pycocotools would read 4 numbers as a box
    elif case == "odd polygon":
        ann["segmentation"] = [[1, 1, 5, 1, 5, 5, 1]]
    elif case == "rle size":
        ann["segmentation"] = {"size": [10, 10], "counts": [100]}
    elif case == "rle counts":
        ann["segmentation"] = {"size": [20, 30], "counts": [4, 6]}
    elif case == "missing file":
        images = [{"id": 9, "file_name": "c.png", "height": 20, "width": 30}]
        ann["image_id"] = 9
    elif case == "image size":
        images = [{"id": 7, "file_name": "a.png", "height": 21, "width": 30}]
    path = _coco_folder(tmp_path, [ann], images=images, drop=drop)
    with pytest.raises(DataError, match=pattern):
        read_coco_instances(path, tmp_path / "images")


# ---------------------------------------------------------------------------------- label maps


def test_read_instance_label_map_uint16(tmp_path):
    labels = np.zeros((16, 20), np.uint16)
    labels[2:5, 3:9] = 300
    labels[10:16, 0:2] = 65535
    labels[7, 7] = 4
    image = (np.arange(16 * 20, dtype=np.uint16).reshape(16, 20) * 200).astype(np.uint16)
    Image.fromarray(labels).save(tmp_path / "labels.png")
    Image.fromarray(image).save(tmp_path / "image.png")
    example = read_instance_label_map(tmp_path / "labels.png", tmp_path / "image.png", class_id=3, image_id=5)
    assert example["image"].shape == (16, 20, 3) and example["image"].dtype == np.uint8
    assert example["image"][0, 0, 0] == 0 and example["image"][-1, -1, 0] == 255  # scaled by percentiles
    np.testing.assert_array_equal(example["image"][..., 0], example["image"][..., 2])
    np.testing.assert_array_equal(example["boxes"], [[7, 7, 8, 8], [2, 3, 5, 9], [10, 0, 16, 2]])  # by label value
    np.testing.assert_array_equal(example["classes"], [3, 3, 3])
    np.testing.assert_array_equal(example["masks"][1], labels == 300)
    assert example["image_id"] == 5
    no_image = read_instance_label_map(tmp_path / "labels.png")
    assert no_image["image"].shape == (16, 20, 3) and no_image["image"].max() == 0
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DataError, match=r"small.png: image is 4x4 \(HxW\), expected the size of its label map .*16x20"):
        read_instance_label_map(tmp_path / "labels.png", tmp_path / "small.png")


@requires_shared_data
def test_read_instance_label_map_stardist():
    example = read_instance_label_map(STARDIST / "instances.png", STARDIST / "image.png")
    labels = np.asarray(Image.open(STARDIST / "instances.png"))
    assert example["masks"].shape == (125, 512, 512)
    assert example["image"].shape == (512, 512, 3) and example["image"].dtype == np.uint8
    assert 5 < example["image"].mean() < 250 and example["image"].std() > 10  # a usable 8-bit rendering
    np.testing.assert_array_equal(example["masks"].sum(axis=0), labels > 0)
    np.testing.assert_array_equal(example["boxes"], masks_to_boxes(example["masks"]))


# ---------------------------------------------------------------------------------- padding


def _example(sizes, h=12, w=12, iscrowd=None):
    masks = np.zeros((len(sizes), h, w), np.uint8)
    for i, s in enumerate(sizes):
        masks[i, :s, :s] = 1
    example = {"image": np.zeros((h, w, 3), np.uint8), "boxes": masks_to_boxes(masks),
               "classes": np.arange(1, len(sizes) + 1, dtype=np.int32), "masks": masks, "image_id": 3}
    if iscrowd is not None:
        example["iscrowd"] = np.array(iscrowd, np.uint8)
    return example


def test_pad_instances_pads_and_keeps_the_largest():
    padded = pad_instances(_example([2, 3]), 4)
    assert padded["num_instances"] == 2 and padded["num_instances"].dtype == np.int32
    np.testing.assert_array_equal(padded["classes"], [1, 2, 0, 0])
    assert padded["boxes"].shape == (4, 4) and not padded["boxes"][2:].any()
    assert padded["masks"].shape == (4, 12, 12) and not padded["masks"][2:].any()
    with pytest.warns(UserWarning, match=r"image 3: 4 instances, max_instances=2: kept the 2 largest.*dropped 2"):
        cut = pad_instances(_example([2, 5, 1, 4]), 2)
    np.testing.assert_array_equal(cut["classes"], [2, 4])  # the largest two, in their original order
    np.testing.assert_array_equal(cut["boxes"], [[0, 0, 5, 5], [0, 0, 4, 4]])
    crowd = pad_instances(_example([2, 5, 3], iscrowd=[0, 1, 0]), 3)
    np.testing.assert_array_equal(crowd["classes"], [1, 3, 0])
    assert "iscrowd" not in crowd
    with pytest.raises(DataError, match=r"masks has shape \[2, 12, 11\], expected \[2, 12, 12\]"):
        pad_instances({**_example([2, 3]), "masks": np.zeros((2, 12, 11), np.uint8)}, 4)


# ---------------------------------------------------------------------------------- tf.data


def _batches(ds, count):
    return [{k: v.numpy() for k, v in batch.items()} for batch in ds.take(count)]


def test_instance_dataset_static_shapes_from_list_and_callable():
    examples = shapes_dataset_examples(5, image_size=(32, 32), min_size=6, max_size=14)
    for source in (examples, lambda: iter(examples)):
        ds = instance_dataset(source, image_size=(32, 32), max_instances=8, batch_size=2, repeat=False)
        spec = ds.element_spec
        assert spec["image"].shape == (2, 32, 32, 3) and spec["image"].dtype == tf.float32
        assert spec["boxes"].shape == (2, 8, 4) and spec["classes"].shape == (2, 8)
        assert spec["masks"].shape == (2, 8, 32, 32) and spec["masks"].dtype == tf.uint8
        assert spec["num_instances"].shape == (2,) and spec["num_instances"].dtype == tf.int32
        assert len(_batches(ds, 10)) == 2  # drop_remainder
    ds = instance_dataset(examples, image_size=(32, 32), max_instances=8, batch_size=2, shuffle=False, flip=False,
                          repeat=False)
    first = _batches(ds, 1)[0]
    np.testing.assert_array_equal(first["image"][0], examples[0]["image"])
    n = len(examples[0]["classes"])
    assert first["num_instances"][0] == n
    np.testing.assert_array_equal(first["masks"][0, :n], examples[0]["masks"])
    with pytest.raises(DataError, match=r"instance_dataset: image_size=None, expected \(H, W\) positive ints"):
        instance_dataset(examples, image_size=None, max_instances=8, batch_size=2)


def test_instance_dataset_flip_is_consistent_and_seeded():
    examples = shapes_dataset_examples(6, image_size=(32, 40), min_size=6, max_size=16)
    kwargs = dict(image_size=(32, 40), max_instances=8, batch_size=3, shuffle=False)
    plain = _batches(instance_dataset(examples, flip=False, **kwargs), 4)
    flipped = _batches(instance_dataset(examples, flip=True, seed=3, **kwargs), 4)
    again = _batches(instance_dataset(examples, flip=True, seed=3, **kwargs), 4)
    seen = set()
    for a, b, c in zip(plain, flipped, again):
        for key in a:
            np.testing.assert_array_equal(b[key], c[key])  # same seed, same flips
        for i in range(3):
            mirrored = bool((b["image"][i] != a["image"][i]).any())
            seen.add(mirrored)
            if mirrored:
                np.testing.assert_array_equal(b["image"][i], a["image"][i][:, ::-1])
                np.testing.assert_array_equal(b["masks"][i], a["masks"][i][:, :, ::-1])
            n = b["num_instances"][i]
            np.testing.assert_array_equal(b["boxes"][i, :n], masks_to_boxes(b["masks"][i, :n]))  # still tight
            assert not b["boxes"][i, n:].any()
    assert seen == {True, False}


def test_instance_dataset_resizes_images_masks_and_boxes():
    example = shapes_example(np.random.default_rng(4), image_size=(64, 96), min_instances=3, min_size=16)
    ds = instance_dataset([example], image_size=(32, 48), max_instances=6, batch_size=1, flip=False, repeat=False)
    batch = _batches(ds, 1)[0]
    n = len(example["classes"])
    assert batch["image"].shape == (1, 32, 48, 3) and 0 <= batch["image"].min() and batch["image"].max() <= 255
    np.testing.assert_array_equal(batch["masks"][0, :n], example["masks"][:, 1::2, 1::2])  # nearest, half-pixel centers
    np.testing.assert_allclose(batch["boxes"][0, :n], example["boxes"] / 2)
    tight = masks_to_boxes(batch["masks"][0, :n])
    assert np.abs(batch["boxes"][0, :n] - tight).max() <= 1.0


def test_instance_dataset_repeats_and_reshuffles():
    examples = shapes_dataset_examples(4, image_size=(16, 16), min_size=4, max_size=8, max_instances=2)
    ds = instance_dataset(examples, image_size=(16, 16), max_instances=2, batch_size=4, flip=False, seed=1)
    epochs = [b["image"] for b in _batches(ds, 3)]
    keys = [[e.tobytes() for e in batch] for batch in epochs]
    assert all(sorted(k) == sorted(keys[0]) for k in keys)  # each epoch is the whole set
    assert len({tuple(k) for k in keys}) > 1  # in another order


# ---------------------------------------------------------------------------------- synthetic shapes


def test_shapes_masks_are_exact_disjoint_and_tight():
    examples = shapes_dataset_examples(30, seed=2)
    counts = [len(e["classes"]) for e in examples]
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) > 2
    for example in examples:
        image, masks = example["image"], example["masks"]
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert masks.dtype == np.uint8 and masks.shape == (len(example["classes"]), 128, 128)
        assert masks.sum(axis=0).max() <= 1  # disjoint
        for mask in masks:
            colours = np.unique(image[mask == 1], axis=0)
            assert len(colours) == 1  # every pixel of the mask has its object's colour
            assert mask.sum() >= 10
        np.testing.assert_array_equal(example["boxes"], masks_to_boxes(masks))
        assert set(example["classes"]) <= {1, 2, 3}
        background = image[masks.sum(axis=0) == 0]
        assert background.std() > 5 and len(np.unique(background, axis=0)) > 100  # textured, not flat
    assert {c["name"]: c["id"] for c in SHAPE_CATEGORIES} == {"circle": 1, "square": 2, "triangle": 3}


def test_shapes_are_deterministic_and_follow_arguments():
    a, b = shapes_dataset_examples(3, seed=5), shapes_dataset_examples(4, seed=5)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a[0]["image"], shapes_dataset_examples(1, seed=6)[0]["image"])
    only = shapes_dataset_examples(10, seed=1, image_size=(48, 64), classes=("triangle",), min_instances=2,
                                   max_instances=3, min_size=8, max_size=16, overlap=False)
    for example in only:
        assert example["image"].shape == (48, 64, 3)
        assert 2 <= len(example["classes"]) <= 3 and set(example["classes"]) == {3}
        heights = example["boxes"][:, 2] - example["boxes"][:, 0]
        assert heights.max() <= 16
    with pytest.raises(DataError, match=r"classes=\['hexagon'\], expected a non-empty list of"):
        shapes_example(0, classes=["hexagon"])
    with pytest.raises(DataError, match=r"placed \d+ objects in 16x16, expected at least min_instances=9"):
        shapes_example(0, image_size=(16, 16), min_instances=9, max_instances=9, min_size=8, overlap=False)


def _touching(masks):
    """Whether two masks of [N, H, W] are 4-neighbours somewhere (one occludes the other)."""
    ids = (masks * np.arange(1, len(masks) + 1)[:, None, None]).sum(axis=0)
    pairs = [(ids[1:], ids[:-1]), (ids[:, 1:], ids[:, :-1])]
    return any(((a > 0) & (b > 0) & (a != b)).any() for a, b in pairs)


def test_shapes_overlap_option():
    crowded = dict(min_instances=6, max_instances=6, min_size=30, max_size=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        occluding = shapes_dataset_examples(10, seed=9, **crowded)
    assert sum(_touching(e["masks"]) for e in occluding) >= 5  # big objects in a crowd hide each other
    apart = shapes_dataset_examples(10, seed=9, **{**crowded, "min_instances": 1, "max_size": 40}, overlap=False)
    assert sum(_touching(e["masks"]) for e in apart) <= 2  # disjoint shapes touch only by chance


def test_docstring_examples_run():
    import doctest

    from kseg.data import instance_pipeline, instances, shapes

    for module in (instances, instance_pipeline, shapes):
        failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert attempted > 0 and failed == 0, module.__name__
