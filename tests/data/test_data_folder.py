"""Tests of kseg.data.folder and kseg.data.split: pairing, validation, splitting, the tf.data reader."""

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kseg.data import (
    Augment,
    DataError,
    apply_remap,
    find_pairs,
    folder_dataset,
    read_image,
    read_mask,
    remap_table,
    resize_image,
    split_pairs,
    validate_pairs,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
requires_shared = pytest.mark.skipif(
    not SHARED.exists(), reason="../shared/data is absent: real-data tests need the shared data sets"
)
PALETTE = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [7] * (256 * 3 - 12)


def _save(path, array, mode=None, palette=None):
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    if palette is not None:
        img.putpalette(palette)  # turns an L image into a P image with these colours
    img.save(path)
    return str(path)


def _mask(h, w, values, seed=0):
    return np.random.default_rng(seed).choice(values, size=(h, w)).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    """Three pairs: grey PNG + L mask, RGB JPEG + P mask, RGBA PNG + 16-bit mask; ids 0..2."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    _save(images / "a.png", rng.integers(0, 256, (8, 12), dtype=np.uint8))
    _save(masks / "a.png", _mask(8, 12, [0, 1, 2], 1))
    _save(images / "b.jpg", rng.integers(0, 256, (8, 12, 3), dtype=np.uint8))
    _save(masks / "b.png", _mask(8, 12, [0, 1, 2], 2), palette=PALETTE)
    _save(images / "c.png", rng.integers(0, 256, (8, 12, 4), dtype=np.uint8))
    _save(masks / "c.png", _mask(8, 12, [0, 1, 2], 3).astype(np.uint16))
    (images / "notes.txt").write_text("not an image")
    (images / ".hidden.png").write_bytes(b"")
    return images, masks


def test_find_pairs_pairs_by_stem_sorted(folder):
    images, masks = folder
    pairs = find_pairs(images, masks)
    assert pairs == [
        (str(images / "a.png"), str(masks / "a.png")),
        (str(images / "b.jpg"), str(masks / "b.png")),
        (str(images / "c.png"), str(masks / "c.png")),
    ]


def test_find_pairs_errors(folder, tmp_path):
    images, masks = folder
    with pytest.raises(DataError, match="missing.*is not an existing folder"):
        find_pairs(tmp_path / "missing", masks)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds no file ending in \.png"):
        find_pairs(images, tmp_path / "empty")
    _save(images / "d.png", np.zeros((8, 12), np.uint8))
    _save(masks / "e.png", np.zeros((8, 12), np.uint8))
    with pytest.raises(DataError) as err:
        find_pairs(images, masks)
    message = str(err.value)
    assert f"{images / 'd.png'} has no mask: expected {masks / 'd.png'}" in message
    assert f"{masks / 'e.png'} has no image: expected {images / 'e'}" in message
    os.remove(masks / "e.png")
    _save(images / "d.jpeg", np.zeros((8, 12), np.uint8))
    _save(masks / "d.png", np.zeros((8, 12), np.uint8))
    with pytest.raises(DataError, match=r"appear twice in image_dir=.*d\.jpeg and d\.png"):
        find_pairs(images, masks)


def test_validate_summary_reads_every_mode(folder):
    pairs = find_pairs(*folder)
    summary = validate_pairs(pairs, num_classes=3)
    assert summary["count"] == 3
    assert summary["image_sizes"] == [[8, 12]]
    assert summary["channels"] == [1, 3]
    assert summary["image_modes"] == ["L", "RGB", "RGBA"]
    assert set(summary["mask_modes"]) <= {"L", "P", "I;16", "I"} and "P" in summary["mask_modes"]
    expected = sum(np.bincount(read_mask(m).ravel(), minlength=3) for _, m in pairs)
    assert summary["class_pixels"] == expected.tolist() and sum(expected) == 3 * 8 * 12
    assert summary["ignore_pixels"] == 0


def test_validate_errors_name_file_and_values(folder):
    images, masks = folder
    pairs = find_pairs(images, masks)
    with pytest.raises(DataError) as err:
        validate_pairs(pairs, num_classes=2, ignore_class=255)
    message = str(err.value)
    assert "3 of 3 pairs" in message
    assert f"{masks / 'a.png'}: label values 2 out of range" in message
    assert "expected 0..1 (num_classes=2) or ignore_class=255" in message
    # a truncated image, a mask of another size, a colour mask
    data = (images / "a.png").read_bytes()
    (images / "a.png").write_bytes(data[: len(data) // 2])
    _save(masks / "b.png", np.zeros((5, 7), np.uint8))
    _save(masks / "c.png", np.zeros((8, 12, 3), np.uint8))
    with pytest.raises(DataError) as err:
        validate_pairs(pairs, num_classes=3)
    message = str(err.value)
    assert f"{images / 'a.png'}: cannot read the image" in message
    assert f"{masks / 'b.png'}: mask is 5x7 (HxW), expected the size of its image" in message
    assert "8x12" in message
    assert f"{masks / 'c.png'}: mask has mode RGB (3 channels)" in message


def test_validate_argument_errors(folder):
    pairs = find_pairs(*folder)
    with pytest.raises(DataError, match="num_classes=0"):
        validate_pairs(pairs, num_classes=0)
    with pytest.raises(DataError, match="channels=2, expected 1, 3 or None"):
        validate_pairs(pairs, num_classes=3, channels=2)
    with pytest.raises(DataError, match="expected a non-empty list"):
        validate_pairs([], num_classes=3)


def test_remap_table_numpy_and_graph_agree():
    table = remap_table({0: 0, 255: 1, 3: 7})
    mask = np.array([[0, 255, 3], [4, 300, 1]], np.int32)
    expected = np.array([[0, 1, 7], [4, 300, 1]], np.int32)  # unmapped values kept
    np.testing.assert_array_equal(apply_remap(mask, table), expected)
    np.testing.assert_array_equal(apply_remap(tf.constant(mask), table).numpy(), expected)
    assert remap_table(None) is None
    with pytest.raises(DataError, match="remap entry -1"):
        remap_table({-1: 0})
    with pytest.raises(DataError, match="expected a non-empty dict"):
        remap_table([(0, 1)])


def test_validate_with_remap(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    _save(tmp_path / "i" / "0.png", np.zeros((4, 4), np.uint8))
    _save(tmp_path / "m" / "0.png", _mask(4, 4, [0, 255]))
    pairs = find_pairs(tmp_path / "i", tmp_path / "m")
    with pytest.raises(DataError, match="label values 255 out of range"):
        validate_pairs(pairs, num_classes=2)
    summary = validate_pairs(pairs, num_classes=2, remap={0: 0, 255: 1})
    assert sum(summary["class_pixels"]) == 16


def test_palette_and_16bit_masks_read_as_indices(folder):
    _, masks = folder
    ids = _mask(8, 12, [0, 1, 2], 2)
    np.testing.assert_array_equal(read_mask(str(masks / "b.png")), ids)
    # TF's PNG decoder would return the palette colours, not the ids
    colours = tf.io.decode_png(tf.io.read_file(str(masks / "b.png"))).numpy()
    assert colours.shape[-1] == 3 and colours.max() == 255
    np.testing.assert_array_equal(read_mask(masks / "c.png"), _mask(8, 12, [0, 1, 2], 3))
    big = np.full((3, 3), 40000, np.uint16)
    _save(masks / "big.png", big)
    np.testing.assert_array_equal(read_mask(masks / "big.png"), big.astype(np.int32))


def test_split_pairs_deterministic_disjoint_covering():
    pairs = [(f"/data/im/{i:03d}.png", f"/data/gt/{i:03d}.png") for i in range(50)]
    train, val = split_pairs(pairs, val_fraction=0.2, seed=0)
    assert len(val) == 10 and len(train) == 40
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(pairs)
    assert train == sorted(train) and val == sorted(val)
    rng = np.random.default_rng(0)
    shuffled = [pairs[i] for i in rng.permutation(len(pairs))]
    assert split_pairs(shuffled, 0.2, seed=0) == (train, val)  # independent of listing order
    moved = [(p.replace("/data", "/elsewhere"), m) for p, m in pairs]
    assert [os.path.basename(p) for p, _ in split_pairs(moved, 0.2, 0)[1]] == [
        os.path.basename(p) for p, _ in val]  # independent of where the data lives
    assert split_pairs(pairs, 0.2, seed=1)[1] != val
    assert split_pairs(pairs[:2], 0.01)[1] != []  # at least one validation pair
    assert split_pairs(pairs, 0.0) == (pairs, [])
    with pytest.raises(DataError, match="val_fraction=1.0"):
        split_pairs(pairs, 1.0)
    with pytest.raises(DataError, match="1 pair"):
        split_pairs(pairs[:1], 0.5)


def test_folder_dataset_shapes_dtypes_ranges(folder):
    pairs = find_pairs(*folder)
    ds = folder_dataset(pairs, image_size=(6, 10), channels=3, batch_size=2)
    images_spec, masks_spec = ds.element_spec
    assert images_spec.shape.as_list() == [None, 6, 10, 3] and images_spec.dtype == tf.float32
    assert masks_spec.shape.as_list() == [None, 6, 10] and masks_spec.dtype == tf.int32
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [2, 1]
    images = np.concatenate([b[0] for b in batches])
    masks = np.concatenate([b[1] for b in batches])
    assert images.min() >= 0 and images.max() <= 255 and images.max() > 1
    assert set(np.unique(masks)) <= {0, 1, 2}
    # full size, grey output: palette mask of pair b arrives as ids
    ds = folder_dataset(pairs, channels=1, cache=False)
    assert ds.element_spec[0].shape.as_list() == [None, None, None, 1]
    elements = list(ds)
    np.testing.assert_array_equal(elements[1][1][0], _mask(8, 12, [0, 1, 2], 2))
    grey = np.asarray(Image.open(pairs[0][0]), np.float32)
    np.testing.assert_array_equal(elements[0][0][0, ..., 0], grey)


def test_read_image_and_resize_match_the_pipeline(folder):
    images, _ = folder
    pairs = find_pairs(*folder)
    grey = read_image(images / "a.png", channels=3)
    assert grey.shape == (8, 12, 3) and grey.dtype == np.float32
    np.testing.assert_array_equal(grey, np.repeat(np.asarray(Image.open(images / "a.png"))[..., None], 3, -1))
    assert read_image(images / "c.png", channels=3).shape == (8, 12, 3)  # RGBA: alpha dropped
    (element,), = [list(folder_dataset(pairs[:1], image_size=(5, 7)))]
    resized = resize_image(grey, (5, 7))
    np.testing.assert_allclose(resized, element[0][0], atol=1e-4)
    assert resize_image(grey, None) is grey
    with pytest.raises(DataError, match="notes.txt: cannot read the image"):
        read_image(images / "notes.txt")
    with pytest.raises(DataError, match="missing.png: cannot read the image"):
        read_image(images / "missing.png")


def test_folder_dataset_remap_and_static_batch(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    for n in range(3):
        _save(tmp_path / "i" / f"{n}.png", np.full((4, 4), 10 * n, np.uint8))
        _save(tmp_path / "m" / f"{n}.png", _mask(4, 4, [0, 255], n))
    pairs = find_pairs(tmp_path / "i", tmp_path / "m")
    ds = folder_dataset(pairs, image_size=(4, 4), remap={0: 0, 255: 1}, batch_size=2, drop_remainder=True)
    assert ds.element_spec[1].shape.as_list() == [2, 4, 4]
    (images, masks), = list(ds)
    np.testing.assert_array_equal(masks, np.stack([_mask(4, 4, [0, 255], n) // 255 for n in range(2)]))
    np.testing.assert_array_equal(images[:, 0, 0, 0], [0, 10])


def test_pad_to_multiple_fills_ignore(folder):
    pairs = find_pairs(*folder)
    ds = folder_dataset(pairs, image_size=(6, 10), pad_to_multiple=4, ignore_class=255, batch_size=3)
    assert ds.element_spec[0].shape.as_list() == [None, 8, 12, 3]
    images, masks = next(iter(ds))
    assert np.all(masks[:, 6:, :] == 255) and np.all(masks[:, :, 10:] == 255)
    assert np.all(images[:, 6:] == 0) and np.all(images[:, :, 10:] == 0)
    assert set(np.unique(masks[:, :6, :10])) <= {0, 1, 2}
    with pytest.raises(DataError, match=r"pads image_size=\(6, 10\) to \(8, 12\), but ignore_class is None"):
        folder_dataset(pairs, image_size=(6, 10), pad_to_multiple=4)
    ds = folder_dataset(pairs, image_size=(8, 12), pad_to_multiple=4)  # nothing to pad: fine
    assert ds.element_spec[0].shape.as_list() == [None, 8, 12, 3]
    with pytest.raises(tf.errors.InvalidArgumentError, match="ignore_class is None"):
        list(folder_dataset(pairs, pad_to_multiple=5))  # run-time check when sizes are unknown


def test_folder_dataset_seeded_shuffle_and_augment(folder):
    pairs = find_pairs(*folder)

    def run(seed, epochs=1):
        ds = folder_dataset(pairs, image_size=(8, 8), shuffle=True, seed=seed, batch_size=3,
                            augment=Augment(ignore_class=255))
        return [[b.numpy() for b in next(iter(ds))] for _ in range(epochs)]

    first, second = run(3, epochs=2)
    again = run(3)[0]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], second[0])  # a new epoch gets new randomness
    assert set(np.unique(first[1])) <= {0, 1, 2, 255}


def test_folder_dataset_argument_errors(folder):
    pairs = find_pairs(*folder)
    for kwargs, match in [
        ({"image_size": (0, 4)}, r"image_size=\(0, 4\)"),
        ({"channels": 4}, "channels=4, expected 1 or 3"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"augment": "flip"}, "augment='flip'"),
        ({"pad_to_multiple": -2}, "pad_to_multiple=-2"),
    ]:
        with pytest.raises(DataError, match=match):
            folder_dataset(pairs, **kwargs)


@pytest.mark.data
@requires_shared
def test_isbi_train_pairs_and_validates():
    root = SHARED / "isbi2012-membranes" / "train"
    pairs = find_pairs(root / "image", root / "label")
    assert len(pairs) == 30
    summary = validate_pairs(pairs, num_classes=2, remap={0: 0, 255: 1}, channels=1)
    assert summary["image_sizes"] == [[512, 512]] and summary["channels"] == [1]
    assert min(summary["class_pixels"]) > 0 and sum(summary["class_pixels"]) == 30 * 512 * 512
    ds = folder_dataset(pairs[:2], channels=1, remap={0: 0, 255: 1}, batch_size=2, image_size=(128, 128))
    images, masks = next(iter(ds))
    assert images.shape == (2, 128, 128, 1) and set(np.unique(masks)) == {0, 1}


@pytest.mark.data
@requires_shared
def test_camvid_val_validates():
    root = SHARED / "camvid"
    pairs = find_pairs(root / "val", root / "valannot")
    assert len(pairs) == 101
    summary = validate_pairs(pairs, num_classes=11, ignore_class=11, channels=3)
    assert summary["image_sizes"] == [[360, 480]] and summary["channels"] == [3]
    assert summary["ignore_pixels"] > 0 and all(c > 0 for c in summary["class_pixels"])
    assert sum(summary["class_pixels"]) + summary["ignore_pixels"] == 101 * 360 * 480


def test_crop_size_cuts_the_same_window_from_image_and_mask(tmp_path):
    # The image encodes each pixel's mask id, so a misaligned crop would break the relation.
    rng = np.random.default_rng(3)
    (tmp_path / "im").mkdir()
    (tmp_path / "ma").mkdir()
    for i in range(3):
        mask = rng.integers(0, 5, (40, 48)).astype(np.uint8)
        _save(tmp_path / "ma" / f"{i}.png", mask)
        _save(tmp_path / "im" / f"{i}.png", (mask * 40).astype(np.uint8))
    pairs = find_pairs(tmp_path / "im", tmp_path / "ma")
    ds = folder_dataset(pairs, channels=1, batch_size=3, crop_size=(16, 24), shuffle=True, repeat=True, seed=5)
    assert ds.element_spec[0].shape.as_list() == [None, 16, 24, 1]
    first = [(x.numpy(), y.numpy()) for x, y in ds.take(4)]
    for images, masks in first:
        np.testing.assert_array_equal(images[..., 0], masks * 40.0)
    # Windows differ between draws, and the same seed reproduces them.
    assert not np.array_equal(first[0][1], first[1][1])
    again = [y.numpy() for _, y in folder_dataset(pairs, channels=1, batch_size=3, crop_size=(16, 24),
                                                  shuffle=True, repeat=True, seed=5).take(4)]
    for (_, a), b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="crop_size"):
        folder_dataset(pairs, crop_size=(16,))


def test_validate_counts_match_the_class_weight_counting(tmp_path):
    from kseg.losses import class_pixel_counts

    (tmp_path / "im").mkdir()
    (tmp_path / "ma").mkdir()
    masks = [np.array([[0, 0], [0, 1]]), np.array([[1, 1], [2, 255]]), np.array([[0, 2], [255, 255]])]
    for i, mask in enumerate(masks):
        _save(tmp_path / "ma" / f"{i}.png", mask.astype(np.uint8))
        _save(tmp_path / "im" / f"{i}.png", np.zeros((2, 2), np.uint8))
    summary = validate_pairs(find_pairs(tmp_path / "im", tmp_path / "ma"), num_classes=4, ignore_class=255)
    pixels, image_pixels = class_pixel_counts(masks, 4, ignore_class=255)
    assert summary["class_pixels"] == pixels.tolist() == [4, 3, 2, 0]
    assert summary["class_image_pixels"] == image_pixels.tolist() == [6, 7, 5, 0]
