"""Bad input, tried systematically (issue 8): every entry point fed malformed input.

Each case is one row of a table and ends in one of two ways:

    error      the documented exception (a `DataError` / `ValueError` / `ModelFileError`), or,
               for the `kseg` command, exit status 2 with a one-paragraph message on stderr
               and no traceback; the message names the file or argument, the value seen and
               what was expected (asserted on substrings).
    graceful   documented handling (an image with no instances is a training example,
               zero-area annotations are skipped with a warning, ...), asserted as documented.

"Loses nothing" cases run a command into a folder that already holds a previous run's files
and check that they are byte-identical afterwards and that no temporary file is left.

Existing bad-input tests elsewhere
(test_data_folder, test_instances, test_panoptic_data, test_runtime, test_bench,
test_instance_cli, test_cli, test_export, model tests) are not repeated here.
"""

import contextlib
import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kseg import cli
from kseg.data import (
    DataError,
    find_pairs,
    folder_dataset,
    instance_dataset,
    masks_to_boxes,
    pad_instances,
    read_coco_instances,
    read_coco_panoptic,
    read_image,
    read_instance_label_map,
    read_mask,
    remap_table,
    validate_pairs,
    write_coco_panoptic,
)
from tests.training.test_training import write_blob_folder

# ------------------------------------------------------------------------------ helpers


def png(path, array, mode=None):
    img = Image.fromarray(np.asarray(array)) if mode is None else Image.fromarray(np.asarray(array), mode)
    img.save(path)
    return str(path)


def truncated_png(path, shape=(16, 16, 3)):
    rng = np.random.default_rng(0)
    png(path, rng.integers(0, 256, shape, dtype=np.uint8))
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return str(path)


def expect_error(fn, exc, *substrings):
    with pytest.raises(exc) as info:
        fn()
    message = str(info.value)
    for text in substrings:
        assert str(text) in message, f"{text!r} not in the message: {message}"
    if issubclass(exc, ValueError):  # kseg's own errors carry no TensorFlow op decoration
        assert "{{function_node" not in message and "Traceback" not in message
    return message


def run_cli(capsys, *argv):
    """kseg's main in this process: (exit status, stderr); a crash propagates (the test fails)."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def snapshot(folder):
    """{relative path: sha256} of every file under `folder`."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_kept(before, folder):
    """Every file of `before` is still there, byte-identical, and no temporary file was left."""
    after = snapshot(folder)
    assert {k: after.get(k) for k in before} == before
    assert not [k for k in after if ".tmp-" in k], after


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory):
    """A semantic run folder as `kseg train` leaves it (run.json + best.keras of a tiny U-Net, not trained)."""
    from kseg.models import build_model
    from kseg.training import DataSpec

    root = tmp_path_factory.mktemp("semantic")
    images, masks = write_blob_folder(root / "data", count=4)
    spec = DataSpec(images=images, masks=masks, num_classes=2, remap={0: 0, 255: 1}, channels=1,
                    image_size=(32, 32))
    run = root / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"data": spec.to_json(), "model": {"name": "unet"}, "train": {}}))
    build_model("unet", num_classes=2, input_shape=(32, 32, 1), filters=4, depth=2).save(run / "best.keras")
    (run / "evaluation.json").write_text('{"earlier": "report"}\n')
    return {"root": root, "run": run, "images": images, "masks": masks}


TRAIN = ["--remap", "0:0,255:1", "--channels", 1, "--image-size", 32, "--epochs", 1, "--batch-size", 2,
         "--set", "filters=4", "--set", "depth=2", "--quiet"]


def data_copy(semantic_run, tmp_path):
    """A writable copy of the blob images/masks: (images folder, masks folder)."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for src, dst in ((semantic_run["images"], images), (semantic_run["masks"], masks)):
        for p in Path(src).iterdir():
            (dst / p.name).write_bytes(p.read_bytes())
    return images, masks


def previous_run(semantic_run, tmp_path):
    """An output folder holding a previous run's files (they must survive a failed rerun)."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("run.json", "best.keras"):
        (out / name).write_bytes((semantic_run["run"] / name).read_bytes())
    (out / "history.csv").write_text("epoch,loss\n0,0.5\n")
    return out


# ============================================================================== readers
# Each builder writes what it needs under tmp_path and returns (callable, exception, substrings).


def _read_image_file(kind):
    def build(tmp):
        path = tmp / f"{kind}.png"
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("not an image")
        elif kind == "truncated":
            truncated_png(path)
        elif kind == "folder":
            path.mkdir()
        return (lambda: read_image(path)), DataError, (str(path), "cannot read the image", "expected a complete PNG")
    return build


def _read_mask_truncated(tmp):
    path = truncated_png(tmp / "m.png", (16, 16))
    return (lambda: read_mask(path)), DataError, (path, "cannot read the mask", "expected a complete image file")


def _read_mask_cmyk(tmp):
    path = tmp / "m.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).convert("CMYK").save(path)
    return (lambda: read_mask(path)), DataError, (str(path), "mode CMYK (4 channels)", "expected one class id")


def _validate(image_kind, mask_kind):
    def build(tmp):
        image, mask = tmp / "a.png", tmp / "a_mask.png"
        if image_kind == "cmyk":
            image = tmp / "a.jpg"
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).convert("CMYK").save(image)
        elif image_kind == "float":
            image = tmp / "a.tif"
            Image.fromarray(np.zeros((8, 8), np.float32), "F").save(image)
        else:
            png(image, np.zeros((8, 8), np.uint8))
        if mask_kind == "negative":
            mask = tmp / "a_mask.tif"
            Image.fromarray(np.full((8, 8), -1, np.int32), "I").save(mask)
        else:
            png(mask, np.full((8, 8), 3, np.uint8))
        remap = {3: 9} if mask_kind == "remapped" else None
        expected = {"cmyk": (str(image), "image mode CMYK (4 channels)", "expected grey, RGB or palette"),
                    "float": (str(image), "image mode F", "expected grey, RGB or palette")}.get(image_kind)
        expected = expected or {
            "negative": (str(mask), "label values -1 out of range", "expected 0..1 (num_classes=2)"),
            "remapped": (str(mask), "label values 9 out of range after remap", "expected 0..1")}[mask_kind]
        return (lambda: validate_pairs([(image, mask)], num_classes=2, remap=remap)), DataError, expected
    return build


def _folder_dataset_size_mismatch(tmp):
    import tensorflow as tf

    image, mask = png(tmp / "a.png", np.zeros((8, 8), np.uint8)), png(tmp / "m.png", np.zeros((6, 8), np.uint8))

    def iterate():
        for _ in folder_dataset([(image, mask)], channels=1):
            pass
    # Documented: folder_dataset does not read files up front; run validate_pairs first. A bad
    # pair met while iterating stops it with a TF error that names both files.
    return iterate, tf.errors.InvalidArgumentError, ("image and mask sizes differ", image, mask)


def _label_map(kind):
    def build(tmp):
        if kind == "negative":
            path = tmp / "labels.tif"
            Image.fromarray(np.array([[-1, 0], [2, 3]], np.int32), "I").save(path)
            return (lambda: read_instance_label_map(path)), DataError, (str(path), "negative value -1", "expected 0")
        if kind == "rgb":
            path = png(tmp / "labels.png", np.zeros((8, 8, 3), np.uint8))
            return (lambda: read_instance_label_map(path)), DataError, (path, "mode RGB (3 channels)")
        labels = png(tmp / "labels.png", np.eye(8, dtype=np.uint8))
        image = png(tmp / "image.png", np.zeros((4, 6, 3), np.uint8))
        return ((lambda: read_instance_label_map(labels, image)), DataError,
                (image, "image is 4x6 (HxW)", "expected the size of its label map", "8x8"))
    return build


def _coco(annotations=None, images=None, categories=None, raw=None, index=None):
    """A COCO JSON with a 20x30 a.png (id 7); `index`: decode examples[index] too."""
    def build(tmp):
        folder = tmp / "images"
        folder.mkdir()
        png(folder / "a.png", np.full((20, 30, 3), 100, np.uint8))
        data = {"images": [{"id": 7, "file_name": "a.png", "height": 20, "width": 30}] if images is None else images,
                "annotations": annotations or [],
                "categories": categories or [{"id": 5, "name": "cat"}]}
        path = tmp / "instances.json"
        path.write_text(raw if raw is not None else json.dumps(data))
        if index is not None:
            truncated_png(folder / "a.png", (20, 30, 3))
            return (lambda: read_coco_instances(path, folder)[0][index]), path, folder
        return (lambda: read_coco_instances(path, folder)), path, folder
    return build


def _ann(segmentation=None, **extra):
    return {"id": 1, "image_id": 7, "category_id": 5, "segmentation": segmentation, **extra}


def _coco_error(substrings, **kwargs):
    def build(tmp):
        fn, path, folder = _coco(**kwargs)(tmp)
        return fn, DataError, tuple(s.format(json=path, folder=folder) for s in substrings)
    return build


def _panoptic(mutate=None, png_mode=None, truncate=False):
    """A valid COCO panoptic set (one 6x8 image), then `mutate(data)` / a grey or truncated PNG."""
    def build(tmp):
        panoptic = np.zeros((6, 8), np.int32)
        panoptic[:3], panoptic[3:, :4] = 300000, 26
        example = {"image_id": 3, "file_name": "3.png", "image_file_name": "3.jpg", "panoptic": panoptic,
                   "segments": {300000: {"category_id": 7}, 26: {"category_id": 1}}}
        categories = [{"id": 1, "name": "person", "isthing": 1}, {"id": 7, "name": "sky", "isthing": 0}]
        data = write_coco_panoptic([example], tmp / "p.json", tmp / "png", categories=categories)
        if mutate:
            mutate(data)
        (tmp / "p.json").write_text(json.dumps(data))
        if png_mode:
            png(tmp / "png" / "3.png", np.zeros((6, 8), np.uint8))
        if truncate:
            data = (tmp / "png" / "3.png").read_bytes()
            (tmp / "png" / "3.png").write_bytes(data[: len(data) // 2])
        return (lambda: read_coco_panoptic(tmp / "p.json", tmp / "png")[0][0]), tmp / "p.json", tmp / "png" / "3.png"
    return build


def _panoptic_error(substrings, **kwargs):
    def build(tmp):
        fn, path, png_path = _panoptic(**kwargs)(tmp)
        return fn, DataError, tuple(s.format(json=path, png=png_path) for s in substrings)
    return build


def _set(key, value):
    def mutate(data):
        target = data
        *path, last = key
        for k in path:
            target = target[k]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return mutate


_DELETE = object()


def _truncated_json(tmp, reader):
    path = tmp / "broken.json"
    path.write_text('{"images": [')
    return (lambda: reader(path, tmp)), DataError, (str(path), "cannot read the COCO", "JSONDecodeError")


def _remap_negative(tmp):
    return (lambda: remap_table({-1: 0})), DataError, ("remap entry -1", "expected ints with 0 <= source")


def _instance_dataset_empty(tmp):
    return ((lambda: instance_dataset([], image_size=(32, 32), max_instances=2, batch_size=1)), DataError,
            ("examples is empty", "expected at least one example"))


def _folder_dataset_empty(tmp):
    return (lambda: folder_dataset([])), DataError, ("folder_dataset: pairs", "expected a non-empty list")


def _find_pairs_no_images(tmp):
    (tmp / "images").mkdir()
    (tmp / "images" / "notes.txt").write_text("x")
    (tmp / "images" / ".hidden.png").write_bytes(b"")
    return ((lambda: find_pairs(tmp / "images", tmp / "images")), DataError,
            (f"image_dir={tmp / 'images'}", "holds no file ending in .png"))


def _image_bomb(reader):
    def build(tmp):
        path = png(tmp / "big.png", np.zeros((40, 50), np.uint8))
        return ((lambda: _with_pixel_limit(reader, path, 100)), DataError,
                (path, "expected at most 100 pixels" if reader is read_image else "decompression bomb"))
    return build


def _with_pixel_limit(reader, path, limit):
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        return reader(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _shapes_tiny(tmp):
    from kseg.data import shapes_example

    return (lambda: shapes_example(0, image_size=(4, 4))), DataError, ("image_size=(4, 4)", "expected (H, W) ints >= 8")


READER_ERRORS = {
    # truncated / corrupt files
    "read_image/empty file": ("corrupt", _read_image_file("empty")),
    "read_image/text file": ("corrupt", _read_image_file("text")),
    "read_image/truncated PNG": ("corrupt", _read_image_file("truncated")),
    "read_image/a folder": ("corrupt", _read_image_file("folder")),
    "read_mask/truncated PNG": ("corrupt", _read_mask_truncated),
    "read_coco_instances/truncated JSON": ("corrupt", lambda tmp: _truncated_json(tmp, read_coco_instances)),
    "read_coco_instances/truncated image": ("corrupt", _coco_error(
        ("{folder}/a.png", "cannot read the image", "truncated"), index=0)),
    "read_coco_panoptic/truncated JSON": ("corrupt", lambda tmp: _truncated_json(tmp, read_coco_panoptic)),
    "read_coco_panoptic/truncated PNG": ("corrupt", _panoptic_error(("{png}", "cannot read the panoptic PNG"),
                                                                     truncate=True)),
    # wrong channel counts
    "read_mask/CMYK": ("channels", _read_mask_cmyk),
    "validate_pairs/CMYK image": ("channels", _validate("cmyk", None)),
    "validate_pairs/float image": ("channels", _validate("float", None)),
    "read_instance_label_map/RGB labels": ("channels", _label_map("rgb")),
    "read_coco_panoptic/grey PNG": ("channels", _panoptic_error(("{png}", "mode L, expected RGB"), png_mode="L")),
    # mask / image size mismatch
    "read_instance_label_map/size": ("size mismatch", _label_map("size")),
    "folder_dataset/size while iterating": ("size mismatch", _folder_dataset_size_mismatch),
    # labels out of range
    "validate_pairs/negative label": ("labels", _validate(None, "negative")),
    "validate_pairs/out of range after remap": ("labels", _validate(None, "remapped")),
    "read_instance_label_map/negative id": ("labels", _label_map("negative")),
    "remap_table/negative source": ("labels", _remap_negative),
    "read_coco_instances/iscrowd 'yes'": ("labels", _coco_error(
        ("{json}", "annotation id 1", "iscrowd 'yes'", "expected 0 or 1"),
        annotations=[_ann([[1, 1, 5, 1, 5, 5]], iscrowd="yes")])),
    "read_coco_panoptic/segment id 0": ("labels", _panoptic_error(
        ("{json}", "segments_info[0] has id 0", "expected an int in [1, 16777215]"),
        mutate=_set(("annotations", 0, "segments_info", 0, "id"), 0))),
    "read_coco_panoptic/iscrowd 2": ("labels", _panoptic_error(
        ("{json}", "iscrowd 2", "expected 0 or 1"), mutate=_set(("annotations", 0, "segments_info", 0, "iscrowd"), 2))),
    # empty data sets
    "find_pairs/only non-images": ("empty", _find_pairs_no_images),
    "folder_dataset/no pairs": ("empty", _folder_dataset_empty),
    "instance_dataset/no examples": ("empty", _instance_dataset_empty),
    # COCO JSON with missing or mistyped fields
    "read_coco_instances/image lacks height": ("coco fields", _coco_error(
        ("{json}", "images[0] lacks field(s) height", "expected id, file_name, height and width"),
        images=[{"id": 7, "file_name": "a.png", "width": 30}])),
    "read_coco_instances/height a string": ("coco fields", _coco_error(
        ("{json}", "images[0] has height '20'", "expected an int >= 1"),
        images=[{"id": 7, "file_name": "a.png", "height": "20", "width": 30}])),
    "read_coco_instances/file_name null": ("coco fields", _coco_error(
        ("{json}", "images[0] has file_name None", "expected a non-empty string"),
        images=[{"id": 7, "file_name": None, "height": 20, "width": 30}])),
    "read_coco_instances/image id a list": ("coco fields", _coco_error(
        ("{json}", "images[0] has id [7]", "expected an int or a string"),
        images=[{"id": [7], "file_name": "a.png", "height": 20, "width": 30}])),
    "read_coco_instances/annotation lacks image_id": ("coco fields", _coco_error(
        ("{json}", "annotation id 1", "image_id None is not the id of any of the 1 images", "expected one of 7"),
        annotations=[{"id": 1, "category_id": 5, "segmentation": [[1, 1, 5, 1, 5, 5]]}])),
    "read_coco_instances/annotation lacks category_id": ("coco fields", _coco_error(
        ("{json}", "category_id None is not in 'categories'", "expected one of 5"),
        annotations=[{"id": 1, "image_id": 7, "segmentation": [[1, 1, 5, 1, 5, 5]]}])),
    "read_coco_instances/category lacks name": ("coco fields", _coco_error(
        ("{json}", "categories[0]", "expected a dict with 'id' and 'name'"), categories=[{"id": 5}])),
    "read_coco_instances/annotation a list": ("coco fields", _coco_error(
        ("{json}", "annotations[0]", "has type list, expected a dict"), annotations=[[1, 2]])),
    "read_coco_instances/JSON a list": ("coco fields", _coco_error(
        ("{json}", "missing or not a list", "expected a COCO instances JSON"), raw="[]")),
    "read_coco_panoptic/segment lacks category_id": ("coco fields", _panoptic_error(
        ("{json}", "segments_info[0]", "expected a dict with 'id' and 'category_id'"),
        mutate=_set(("annotations", 0, "segments_info", 0, "category_id"), _DELETE))),
    "read_coco_panoptic/image lacks width": ("coco fields", _panoptic_error(
        ("{json}", "images[0] lacks field(s) width"), mutate=_set(("images", 0, "width"), _DELETE))),
    # invalid polygons
    "read_coco_instances/NaN coordinate": ("polygons", _coco_error(
        ("{json}", "polygon 0 has 6 coordinates", "nan", "of finite numbers"),
        annotations=[_ann([[1, 1, float("nan"), 1, 5, 5]])])),
    "read_coco_instances/string coordinates": ("polygons", _coco_error(
        ("{json}", "polygon 0", "expected an even number >= 6 of finite numbers"),
        annotations=[_ann([["a", "b", "c", "d", "e", "f"]])])),
    "read_coco_instances/polygon a dict": ("polygons", _coco_error(
        ("{json}", "polygon 0 has dict", "expected an even number >= 6"), annotations=[_ann([{"x": 1}])])),
    "read_coco_instances/segmentation a string": ("polygons", _coco_error(
        ("{json}", "segmentation is 'polygon'", "expected a list of polygons or an RLE dict"),
        annotations=[_ann("polygon")])),
    "read_coco_instances/RLE counts an int": ("polygons", _coco_error(
        ("{json}", "RLE counts has type int", "expected a list (uncompressed) or a string"),
        annotations=[_ann({"size": [20, 30], "counts": 5})])),
    # zero-area / malformed boxes
    "read_coco_instances/bbox of 3 numbers": ("boxes", _coco_error(
        ("{json}", "bbox [1, 2, 3]", "expected [x, y, width, height] finite numbers"),
        annotations=[_ann(None, bbox=[1, 2, 3])])),
    "read_coco_instances/bbox NaN": ("boxes", _coco_error(
        ("{json}", "bbox [1, 2, nan, 4]", "finite numbers"), annotations=[_ann(None, bbox=[1, 2, float("nan"), 4])])),
    # absurd sizes
    "read_image/decompression bomb": ("absurd sizes", _image_bomb(read_image)),
    "read_mask/decompression bomb": ("absurd sizes", _image_bomb(read_mask)),
    "shapes_example/4x4 image": ("absurd sizes", _shapes_tiny),
}


@pytest.mark.parametrize("case", list(READER_ERRORS))
def test_reader_errors_name_the_file_the_value_and_the_expectation(tmp_path, case):
    _, build = READER_ERRORS[case]
    fn, exc, substrings = build(tmp_path)
    expect_error(fn, exc, *substrings)


# ------------------------------------------------------------------------------ readers: graceful


def _skipped(annotation):
    """read_coco_instances of one annotation: (examples, warnings)."""
    def run(tmp):
        fn, _, _ = _coco(annotations=[annotation])(tmp)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            examples = fn()[0]
        return examples, [str(w.message) for w in caught]
    return run


def _assert_skipped(annotation):
    def check(tmp):
        examples, caught = _skipped(annotation)(tmp)
        assert examples[0]["masks"].shape == (0, 20, 30) and examples[0]["boxes"].shape == (0, 4)
        assert any("skipped 1 zero-area annotation" in m and "instances.json" in m for m in caught), caught
    return check


def _polygon_outside_with_bbox(tmp):
    examples, caught = _skipped(_ann([[100, 100, 110, 100, 110, 110]], bbox=[100, 100, 10, 10]))(tmp)
    (example,) = examples
    assert example["masks"].shape == (1, 20, 30) and example["masks"].sum() == 0  # documented: bbox, empty mask
    np.testing.assert_array_equal(example["boxes"], [[100, 100, 110, 110]])
    assert not caught


def _polygon_partly_outside(tmp):
    (example,), _ = _skipped(_ann([[-10, -10, 5, -10, 5, 5, -10, 5]]))(tmp)
    np.testing.assert_array_equal(example["boxes"], [[0, 0, 5, 5]])  # the part inside the image
    np.testing.assert_array_equal(example["boxes"], masks_to_boxes(example["masks"]))


def _self_intersecting(tmp):
    (example,), _ = _skipped(_ann([[0, 0, 10, 10, 10, 0, 0, 10]]))(tmp)
    assert example["masks"].sum() > 0 and np.isfinite(example["boxes"]).all()


def _no_images(tmp):
    fn, _, _ = _coco(images=[])(tmp)
    examples, categories = fn()
    assert len(examples) == 0 and categories == [{"id": 1, "name": "cat", "coco_id": 5}]


def _no_instances_coco(tmp):
    fn, _, _ = _coco(annotations=[])(tmp)
    (example,) = fn()[0]
    assert example["masks"].shape == (0, 20, 30) and example["classes"].shape == (0,)


def _no_instances_label_map(tmp):
    labels = png(tmp / "labels.png", np.zeros((8, 8), np.uint8))
    example = read_instance_label_map(labels, png(tmp / "image.png", np.zeros((8, 8), np.uint8)))
    assert example["masks"].shape == (0, 8, 8) and example["boxes"].shape == (0, 4)
    assert example["image"].shape == (8, 8, 3)  # grey -> 3 equal channels


def _no_instances_pad_and_batch(tmp):
    empty = {"image": np.zeros((32, 32, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
             "classes": np.zeros(0, np.int32), "masks": np.zeros((0, 32, 32), np.uint8), "image_id": 0}
    padded = pad_instances(empty, 3)
    assert int(padded["num_instances"]) == 0 and padded["masks"].shape == (3, 32, 32)
    batch = next(iter(instance_dataset([empty, empty], image_size=(32, 32), max_instances=3, batch_size=2,
                                       repeat=False)))
    assert batch["num_instances"].numpy().tolist() == [0, 0] and batch["boxes"].shape == (2, 3, 4)
    assert not batch["classes"].numpy().any()


def _empty_mask_box(tmp):
    np.testing.assert_array_equal(masks_to_boxes(np.zeros((2, 5, 5))), np.zeros((2, 4)))  # documented: zeros
    assert masks_to_boxes(np.zeros((0, 5, 5))).shape == (0, 4)


def _grey_and_alpha_images(tmp):
    grey = png(tmp / "grey.png", np.full((5, 7), 9, np.uint8))
    rgba = png(tmp / "rgba.png", np.full((5, 7, 4), 9, np.uint8))
    assert read_image(grey, channels=3).shape == (5, 7, 3)  # documented: grey <-> RGB converted
    assert read_image(rgba, channels=1).shape == (5, 7, 1)  # alpha dropped


def _one_pixel_image(tmp):
    image = read_image(png(tmp / "one.png", np.full((1, 1, 3), 200, np.uint8)))
    assert image.shape == (1, 1, 3) and image[0, 0, 0] == 200


def _panoptic_no_annotations(tmp):
    (tmp / "png").mkdir()
    (tmp / "p.json").write_text(json.dumps({"annotations": [], "categories": []}))
    examples, categories = read_coco_panoptic(tmp / "p.json", tmp / "png")
    assert len(examples) == 0 and categories == []


READER_GRACEFUL = {
    "read_coco_instances/polygon wholly outside": ("polygons", _assert_skipped(_ann([[100, 100, 110, 100, 110, 110]]))),
    "read_coco_instances/collinear polygon": ("polygons", _assert_skipped(_ann([[1, 1, 2, 2, 3, 3]]))),
    "read_coco_instances/huge coordinates": ("polygons", _assert_skipped(_ann([[1e30, 1e30, 2e30, 1e30, 2e30, 2e30]]))),
    "read_coco_instances/outside polygon with bbox": ("polygons", _polygon_outside_with_bbox),
    "read_coco_instances/polygon partly outside": ("polygons", _polygon_partly_outside),
    "read_coco_instances/self-intersecting polygon": ("polygons", _self_intersecting),
    "read_coco_instances/zero-width bbox": ("boxes", _assert_skipped(_ann(None, bbox=[1, 2, 0, 4]))),
    "read_coco_instances/negative-width bbox": ("boxes", _assert_skipped(_ann(None, bbox=[1, 2, -3, 4]))),
    "read_coco_instances/no segmentation, no bbox": ("boxes", _assert_skipped(
        {"id": 1, "image_id": 7, "category_id": 5})),
    "masks_to_boxes/empty masks": ("boxes", _empty_mask_box),
    "read_coco_instances/no images": ("empty", _no_images),
    "read_coco_panoptic/no annotations": ("empty", _panoptic_no_annotations),
    "read_coco_instances/image without instances": ("no instances", _no_instances_coco),
    "read_instance_label_map/all background": ("no instances", _no_instances_label_map),
    "pad_instances+instance_dataset/no instances": ("no instances", _no_instances_pad_and_batch),
    "read_image/grey and RGBA": ("channels", _grey_and_alpha_images),
    "read_image/one pixel": ("absurd sizes", _one_pixel_image),
}


@pytest.mark.parametrize("case", list(READER_GRACEFUL))
def test_reader_graceful_handling_is_the_documented_one(tmp_path, case):
    READER_GRACEFUL[case][1](tmp_path)


# ============================================================================== kseg train


def _train_case(mutate, extra=(), substrings=()):
    return {"mutate": mutate, "extra": list(extra), "substrings": substrings}


def _corrupt_image(images, masks):
    truncated_png(images / "001.png", (32, 32))
    return [images / "001.png", "cannot read the image"]


def _cmyk_image(images, masks):
    (images / "001.png").unlink()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).convert("CMYK").save(images / "001.jpg")
    return [images / "001.jpg", "image mode CMYK (4 channels)", "expected grey, RGB or palette"]


def _small_mask(images, masks):
    png(masks / "002.png", np.zeros((16, 32), np.uint8))
    return [masks / "002.png", "mask is 16x32 (HxW)", "expected the size of its image", "32x32"]


def _empty_images(images, masks):
    for p in images.iterdir():
        p.unlink()
    return [f"image_dir={images}", "holds no file ending in"]


def _no_change(images, masks):
    return []


TRAIN_CASES = {
    "corrupt image": ("corrupt", _train_case(_corrupt_image)),
    "CMYK image": ("channels", _train_case(_cmyk_image)),
    "mask of another size": ("size mismatch", _train_case(_small_mask)),
    "empty image folder": ("empty", _train_case(_empty_images)),
    "unknown model name": ("unknown model", _train_case(_no_change, ["--model", "vnet"], [
        "unknown model 'vnet'", "expected one of unet"])),
    "negative filters": ("absurd sizes", _train_case(_no_change, ["--set", "filters=-1"], [
        "`filters` must be a positive int", "-1"])),
    "zero classes": ("labels", _train_case(_no_change, ["--num-classes", 0], ["num_classes=0", "expected an int >= 1"])),
    "class names of another count": ("labels", _train_case(_no_change, ["--class-names", "a,b,c"], [
        "--class-names has 3 names", "num_classes = 2"])),
    "val fraction 1.5": ("absurd sizes", _train_case(_no_change, ["--val-fraction", 1.5], [
        "val_fraction=1.5", "expected a number in [0, 1)"])),
    "batch size 0": ("absurd sizes", _train_case(_no_change, ["--batch-size", 0], [
        "--batch-size 0", "expected an int >= 1"])),
    "steps per epoch 0": ("absurd sizes", _train_case(_no_change, ["--steps-per-epoch", 0], [
        "--steps-per-epoch 0", "expected an int >= 1"])),
    "epochs 0": ("absurd sizes", _train_case(_no_change, ["--epochs", 0], ["--epochs 0", "expected an int >= 1"])),
    "crop larger than the images": ("absurd sizes", _train_case(_no_change, ["--native-size", "--crop-size", 64], [
        "--crop-size 64x64", "32x32"])),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_bad_input_exits_2_and_keeps_the_previous_run(semantic_run, tmp_path, capsys, case):
    spec = TRAIN_CASES[case][1]
    images, masks = data_copy(semantic_run, tmp_path)
    expected = [str(s) for s in spec["mutate"](images, masks)] + [str(s) for s in spec["substrings"]]
    out = previous_run(semantic_run, tmp_path)
    before = snapshot(out)
    code, err = run_cli(capsys, "train", "--images", images, "--masks", masks, "--num-classes", 2, *TRAIN,
                        *spec["extra"], "--output", out)
    assert code == 2
    assert err.startswith("kseg train: error: ") or "\nkseg train: error: " in err
    for text in expected:
        assert text in err, f"{text!r} not in {err}"
    assert_kept(before, out)


def test_train_output_that_is_a_file_exits_2(semantic_run, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    code, err = run_cli(capsys, "train", "--images", semantic_run["images"], "--masks", semantic_run["masks"],
                        "--num-classes", 2, *TRAIN, "--output", tmp_path / "taken")
    assert code == 2 and str(tmp_path / "taken") in err


def test_absurd_image_size_is_refused_by_the_parser():
    import argparse

    from kseg.cli_args import parse_size

    with pytest.raises(argparse.ArgumentTypeError, match="100000"):
        parse_size("100000")


# ============================================================================== kseg evaluate / predict


def _write_run(tmp_path, text):
    run = tmp_path / "broken"
    run.mkdir()
    (run / "run.json").write_text(text)
    return run


EVALUATE_CASES = {
    "corrupt .keras": ("corrupt .keras", lambda r, t: (["--model", _bytes(t / "m.keras", b"PK\x03\x04garbage")],
                                                      [t / "m.keras", "cannot load model", "expected a .keras file"])),
    "empty .keras": ("corrupt .keras", lambda r, t: (["--model", _bytes(t / "m.keras", b"")],
                                                    [t / "m.keras", "expected a .keras file"])),
    ".keras that is a zip of junk": ("corrupt .keras", lambda r, t: (["--model", _junk_zip(t / "m.keras")],
                                                                    [t / "m.keras", "expected a .keras file"])),
    "a folder as --model": ("corrupt .keras", lambda r, t: (["--model", t], [t, "expected a .keras file"])),
    "a .tflite as --model": ("corrupt .keras", lambda r, t: (["--model", _bytes(t / "m.tflite", b"\0" * 4 + b"TFL3")],
                                                            [t / "m.tflite", "expected a .keras file"])),
    "batch size 0": ("absurd sizes", lambda r, t: (["--batch-size", 0], ["batch_size=0", "expected an int >= 1"])),
    "--images with mismatched masks": ("size mismatch", lambda r, t: (_mismatched_folder(t), [
        "mask is 16x32 (HxW)", "expected the size of its image"])),
}


def _bytes(path, content):
    Path(path).write_bytes(content)
    return path


def _junk_zip(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{not json")
        z.writestr("metadata.json", "[]")
    return path


def _mismatched_folder(tmp):
    images, masks = tmp / "ev_images", tmp / "ev_masks"
    images.mkdir()
    masks.mkdir()
    png(images / "a.png", np.zeros((32, 32), np.uint8))
    png(masks / "a.png", np.zeros((16, 32), np.uint8))
    return ["--images", images, "--masks", masks]


@pytest.mark.parametrize("case", list(EVALUATE_CASES))
def test_evaluate_bad_input_exits_2_and_keeps_the_earlier_report(semantic_run, tmp_path, capsys, case):
    run = semantic_run["run"]
    before = snapshot(run)
    args, expected = EVALUATE_CASES[case][1](run, tmp_path)
    code, err = run_cli(capsys, "evaluate", "--run", run, "--quiet", *args)
    assert code == 2 and "kseg evaluate: error: " in err
    for text in expected:
        assert str(text) in err, f"{text!r} not in {err}"
    assert_kept(before, run)


@pytest.mark.parametrize("text, named", [
    pytest.param("{not json", "run.json"),
    pytest.param('{"model": {}}', "run.json"),
    pytest.param('{"data": {"images": "x"}}', "run.json"),
    pytest.param('{"task": "depth"}', "task 'depth'"),
], ids=["not JSON", "no data", "data lacks fields", "unknown task"])
def test_evaluate_a_broken_run_json_exits_2_naming_it(tmp_path, capsys, text, named):
    run = _write_run(tmp_path, text)
    code, err = run_cli(capsys, "evaluate", "--run", run, "--quiet")
    assert code == 2 and str(run / "run.json") in err and named in err


def test_predict_stops_at_a_corrupt_image_and_keeps_what_was_written(semantic_run, tmp_path, capsys):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "old_mask.png").write_bytes(b"an earlier prediction")
    before = snapshot(out)
    good = png(tmp_path / "a_good.png", np.zeros((32, 32), np.uint8))
    bad = truncated_png(tmp_path / "b_bad.png", (32, 32))
    code, err = run_cli(capsys, "predict", "--run", semantic_run["run"], good, bad, "--output", out, "--quiet")
    assert code == 2 and bad in err and "cannot read the image" in err and "expected a complete PNG" in err
    assert_kept(before, out)
    assert sorted(os.listdir(out)) == ["a_good_mask.png", "a_good_overlay.png", "old_mask.png"]


@pytest.mark.parametrize("case", ["corrupt .keras", "folder without images", "text file as image"])
def test_predict_bad_input_exits_2(semantic_run, tmp_path, capsys, case):
    out = tmp_path / "pred"
    inputs, named = [semantic_run["images"]], []
    args = []
    if case == "corrupt .keras":
        args = ["--model", _bytes(tmp_path / "m.keras", b"garbage")]
        named = [tmp_path / "m.keras", "expected a .keras file"]
    elif case == "folder without images":
        (tmp_path / "nothing").mkdir()
        inputs, named = [tmp_path / "nothing"], ["no images", "nothing"]
    else:
        inputs = [_bytes(tmp_path / "notes.png", b"hello")]
        named = [tmp_path / "notes.png", "cannot read the image"]
    code, err = run_cli(capsys, "predict", "--run", semantic_run["run"], *inputs, "--output", out, *args, "--quiet")
    assert code == 2
    for text in named:
        assert str(text) in err
    assert not out.exists() or not os.listdir(out)


def test_predict_output_that_is_a_file_exits_2(semantic_run, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    code, err = run_cli(capsys, "predict", "--run", semantic_run["run"], semantic_run["images"], "--output",
                        tmp_path / "taken", "--quiet")
    assert code == 2 and str(tmp_path / "taken") in err


def test_predict_on_extreme_image_sizes_is_graceful(semantic_run, tmp_path, capsys):
    """Documented (predict_logits): any image size is resized to the model's and the logits back."""
    one = png(tmp_path / "one.png", np.full((1, 1, 3), 200, np.uint8))
    tall = png(tmp_path / "tall.png", np.zeros((300, 2), np.uint8))
    code, _ = run_cli(capsys, "predict", "--run", semantic_run["run"], one, tall, "--output", tmp_path / "p", "--quiet")
    assert code == 0
    assert np.asarray(Image.open(tmp_path / "p" / "one_mask.png")).shape == (1, 1)
    assert np.asarray(Image.open(tmp_path / "p" / "tall_mask.png")).shape == (300, 2)


# ============================================================================== kseg export / bench


def test_export_bad_input_exits_2_and_keeps_an_earlier_export(semantic_run, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "unet_fp32.tflite").write_bytes(b"an earlier export")
    (out / "export_report.json").write_text("{}")
    before = snapshot(out)
    run = semantic_run["run"]
    common = ["--variants", "fp32", "--no-gpu", "--quiet", "--output", out]
    junk = tmp_path / "junk"
    junk.mkdir()
    png(junk / "ok.png", np.zeros((32, 32), np.uint8))
    _bytes(junk / "z_broken.png", b"not a png")
    cases = {
        "corrupt .keras": (["--model", _bytes(tmp_path / "m.keras", b"PK\x03\x04")],
                           [tmp_path / "m.keras", "expected a .keras file"]),
        "image size the model does not take": (["--image-size", 30], [
            "image_size 30x30 (`--image-size`)", "built for 32x32", "expected 32x32"]),
        "zero parity images": (["--num-images", 0], ["limit=0 (`--num-images`", "expected an int >= 1"]),
        "corrupt parity image": (["--images", junk], [junk / "z_broken.png", "cannot read the image"]),
    }
    for case, (args, expected) in cases.items():
        code, err = run_cli(capsys, "export", "--run", run, *common, *args)
        assert code == 2, case
        for text in expected:
            assert str(text) in err, f"{case}: {text!r} not in {err}"
        assert_kept(before, out)


def test_runtime_and_bench_refuse_corrupt_tflite_files(semantic_run, tmp_path, capsys):
    from export import runtime

    rng = np.random.default_rng(0)
    files = {
        "empty": (b"", "too small"),
        "random bytes with a TFL3 header": (b"\x1c\0\0\0TFL3" + rng.bytes(400), "truncated or corrupt"),
        "a .keras renamed .tflite": ((semantic_run["run"] / "best.keras").read_bytes(), "not a TFLite flatbuffer"),
    }
    for name, (content, problem) in files.items():
        path = _bytes(tmp_path / f"{name.replace(' ', '_')}.tflite", content)
        expect_error(lambda: runtime.read_model(str(path)), runtime.ModelFileError, path, problem)
        code, err = run_cli(capsys, "bench", path, "--runs", 1)  # `kseg bench`, this process survives
        assert code == 2 and str(path) in err and problem in err and len(err.strip().splitlines()) == 1
    code, err = run_cli(capsys, "bench", path, "--runs", 0)
    assert code == 2 and "--runs 0: expected an integer >= 1" in err


# ============================================================================== model constructors


def _maskrcnn(**kwargs):
    from kseg.models import build_model

    return build_model("mask_rcnn", "small", **{"num_classes": 2, "input_shape": (64, 64, 3), **kwargs})


def _panoptic_fpn(**kwargs):
    from kseg.models import build_model

    return build_model("panoptic_fpn", "small", **{"num_classes": 2, "num_stuff_classes": 2,
                                                   "input_shape": (64, 64, 3), **kwargs})


def _constructor(cls_name, **kwargs):
    """A detector constructor given plain values only (what `build_model` is for)."""
    import kseg.models
    from kseg.models import mask_rcnn, maskformer

    small = (maskformer if cls_name == "MaskFormer" else mask_rcnn).SMALL_CONFIG
    return getattr(kseg.models, cls_name)(**{"num_classes": 2, "input_shape": (64, 64, 3), **small, **kwargs})


def _unet(**kwargs):
    from kseg.models.unet import UNet

    return UNet(**{"num_classes": 2, "input_shape": (64, 64, 1), "filters": 4, "depth": 2, **kwargs})


def _segformer(**kwargs):
    from kseg.models.segformer import SegFormer

    return SegFormer(**{"num_classes": 2, "input_shape": (64, 64, 3), **kwargs})


def _build(name, **kwargs):
    from kseg.models import build_model

    return build_model(name, **kwargs)


MODEL_CASES = {
    "MaskRCNN/image size 100": ("absurd sizes", lambda: _maskrcnn(input_shape=(100, 100, 3)),
                                ["(100, 100, 3)", "divisible by 32"]),
    "MaskRCNN/image size 0": ("absurd sizes", lambda: _maskrcnn(input_shape=(0, 0, 3)),
                              ["`input_shape`", "(0, 0, 3)", "positive ints"]),
    "MaskRCNN/negative image size": ("absurd sizes", lambda: _maskrcnn(input_shape=(-32, 64, 3)),
                                     ["`input_shape`", "(-32, 64, 3)"]),
    "MaskRCNN/unknown backbone": ("unknown model", lambda: _maskrcnn(backbone="vgg"),
                                  ["unknown backbone 'vgg'", "expected one of resnet50"]),
    "MaskRCNN/backbone a name": ("unknown model", lambda: _constructor("MaskRCNN"),
                                 ["`backbone`", "'small'", "kseg.models.build_model", "kseg.backbones.build_backbone"]),
    "MaskRCNN/no backbone": ("unknown model", lambda: _constructor("MaskRCNN", backbone=None),
                             ["`backbone`", "got None", "kseg.models.build_model"]),
    "MaskFormer/backbone a name": ("unknown model", lambda: _constructor("MaskFormer", backbone="resnet50"),
                                   ["`backbone`", "'resnet50'", "kseg.models.build_model"]),
    "build_model/image_size": ("absurd sizes", lambda: _build("mask_rcnn", num_classes=2, image_size=(64, 64)),
                               ["`image_size`", "input_shape=(H, W, 3)", "(64, 64)"]),
    "PanopticFPN/plain values": ("unknown model", lambda: _constructor("PanopticFPN", num_stuff_classes=2),
                                 ["`detector`", "build_model(\"panoptic_fpn\"", "panoptic_fpn_parts"]),
    "MaskRCNN/unknown ROI Align method": ("unknown model", lambda: _maskrcnn(roi_align_method="magic"),
                                         ["'magic'", "crop_and_resize"]),
    "MaskRCNN/zero classes": ("labels", lambda: _maskrcnn(num_classes=0), ["`num_classes`", "got 0"]),
    "PanopticFPN/zero stuff classes": ("labels", lambda: _panoptic_fpn(num_stuff_classes=0),
                                       ["`num_stuff_classes`", "got 0"]),
    "PanopticFPN/stuff categories of another count": ("labels", lambda: _panoptic_fpn(stuff_categories=[5]),
                                                      ["gives 1 ids", "num_stuff_classes=2"]),
    "SegFormer/zero classes": ("labels", lambda: _segformer(num_classes=0), ["`num_classes`", "got 0"]),
    "build_model/num_classes a string": ("labels", lambda: _build("unet", num_classes="2"), ["got '2'"]),
    "build_model/unknown name, other case": ("unknown model", lambda: _build("UNet", num_classes=2),
                                             ["unknown model 'UNet'", "expected one of unet"]),
    "UNet/zero input channels": ("channels", lambda: _unet(input_shape=(64, 64, 0)), ["input_shape", "(64, 64, 0)"]),
}
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model_constructors_name_the_bad_argument(case):
    _, build, substrings = MODEL_CASES[case]
    expect_error(build, ValueError, *substrings)


def test_training_on_images_without_instances_or_with_zero_area_boxes_is_finite():
    """Documented (read_coco_instances, instance_dataset): such images are valid training examples."""
    model = _maskrcnn()
    batch = {"image": np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32"),
             "boxes": np.zeros((2, 4, 4), np.float32), "classes": np.zeros((2, 4), np.int32),
             "masks": np.zeros((2, 4, 64, 64), np.uint8), "num_instances": np.zeros(2, np.int32)}
    losses = {k: float(v) for k, v in model.compute_losses(batch).items()}
    assert all(np.isfinite(v) for v in losses.values()), losses
    assert losses["box_regression"] == 0.0 and losses["mask"] == 0.0  # nothing to regress or segment
    batch["boxes"][:, 0] = [10, 10, 10, 20]  # a zero-height box of class 1
    batch["classes"][:, 0], batch["num_instances"][:] = 1, 1
    losses = {k: float(v) for k, v in model.compute_losses(batch).items()}
    assert all(np.isfinite(v) for v in losses.values()), losses


def test_instance_training_on_an_empty_coco_json_names_the_file(tmp_path, capsys):
    fn, path, folder = _coco(images=[])(tmp_path)
    code, err = run_cli(capsys, "train", "--task", "instance", "--coco-json", path, "--images", folder,
                        "--image-size", 64, "--epochs", 1, "--output", tmp_path / "run", "--quiet")
    assert code == 2 and str(path) in err and "no images" in err
