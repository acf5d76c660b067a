"""Tests of kseg.ops.warp (against SciPy/NumPy references) and kseg.data.augment.Augment."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from kseg.data import Augment
from kseg.ops.warp import bilinear_sample, identity_grid, nearest_sample

OFF = dict(flip=False, rot90=False, scale_range=None, brightness=0.0, contrast=0.0, elastic_prob=0.0)
SCIPY_MODE = {"constant": "grid-constant", "symmetric": "reflect", "edge": "nearest"}


def _blocks(h, w, num_ids=5, block=4, seed=0):
    """An int32 mask of constant `block` x `block` tiles of ids 0..num_ids-1."""
    tiles = np.random.default_rng(seed).integers(0, num_ids, (-(-h // block), -(-w // block)))
    return np.kron(tiles, np.ones((block, block), np.int64))[:h, :w].astype(np.int32)


# ---------------------------------------------------------------- kseg.ops.warp


def test_bilinear_hand_computed():
    image = np.array([[0.0, 10.0], [20.0, 30.0]], np.float32)[..., None]
    coords = np.array([[[0.5, 0.5], [0.25, 1.0], [1.0, -0.5]]], np.float32)
    out = bilinear_sample(image, coords, mode="constant", fill_value=100.0).numpy()[..., 0]
    # centre: mean of 4; (0.25, 1): 0.75*10 + 0.25*30; (1, -0.5): half fill, half image[1, 0]
    np.testing.assert_allclose(out, [[15.0, 15.0, 60.0]], rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["constant", "symmetric", "edge"])
def test_bilinear_matches_scipy(mode):
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (7, 9, 2)).astype(np.float32)
    coords = rng.uniform(-4, 12, (5, 6, 2)).astype(np.float32)  # many outside the image
    out = bilinear_sample(image, coords, mode=mode, fill_value=-3.0).numpy()
    for c in range(2):
        ref = ndimage.map_coordinates(image[..., c].astype(np.float64), np.moveaxis(coords, -1, 0),
                                      order=1, mode=SCIPY_MODE[mode], cval=-3.0)
        np.testing.assert_allclose(out[..., c], ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("mode", ["constant", "symmetric", "edge"])
def test_nearest_matches_numpy(mode):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 50, (6, 5, 1)).astype(np.int32)
    coords = rng.uniform(-8, 14, (9, 4, 2)).astype(np.float32)
    out = nearest_sample(image, coords, mode=mode, fill_value=255).numpy()[..., 0]
    idx = np.floor(coords + 0.5).astype(int)
    ref = np.empty(idx.shape[:2], np.int32)
    for i, j in np.ndindex(*ref.shape):
        y, x = idx[i, j]
        if mode == "constant" and not (0 <= y < 6 and 0 <= x < 5):
            ref[i, j] = 255
            continue
        if mode == "symmetric":  # half-sample mirror: -1 -> 0, H -> H - 1
            y = np.pad(np.arange(6), 20, mode="symmetric")[y + 20]
            x = np.pad(np.arange(5), 20, mode="symmetric")[x + 20]
        y, x = np.clip(y, 0, 5), np.clip(x, 0, 4)
        ref[i, j] = image[y, x, 0]
    np.testing.assert_array_equal(out, ref)
    assert out.dtype == np.int32


def test_warp_identity_grid_and_batches():
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
    grid = identity_grid(5, 7)
    np.testing.assert_array_equal(bilinear_sample(images[0], grid).numpy(), images[0])
    np.testing.assert_array_equal(nearest_sample(images[1], grid).numpy(), images[1])
    coords = rng.uniform(-1, 7, (2, 4, 4, 2)).astype(np.float32)
    batched = bilinear_sample(images, coords, mode="edge").numpy()
    for b in range(2):
        np.testing.assert_allclose(batched[b], bilinear_sample(images[b], coords[b], mode="edge"), atol=1e-5)
    with pytest.raises(ValueError, match="mode='wrap'"):
        bilinear_sample(images[0], grid, mode="wrap")
    with pytest.raises(ValueError, match=r"coords has shape \(5, 7\)"):
        nearest_sample(images[0], grid[..., 0])


# ---------------------------------------------------------------- Augment


def test_same_seed_same_output_and_static_shape():
    image = np.random.default_rng(0).uniform(0, 255, (24, 24, 3)).astype(np.float32)
    mask = _blocks(24, 24)
    aug = Augment(elastic_prob=1.0, ignore_class=255)
    a = aug(image, mask, tf.constant([4, 2]))
    b = aug(image, mask, (4, 2))
    c = aug(image, mask, (5, 2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (24, 24, 3) and a[0].dtype == tf.float32 and a[1].dtype == tf.int32
    assert float(tf.reduce_min(a[0])) >= 0 and float(tf.reduce_max(a[0])) <= 255


@pytest.mark.parametrize("ignore_class", [None, 255])
def test_mask_ids_never_interpolated(ignore_class):
    mask = _blocks(20, 28, num_ids=4) * 3  # ids 0, 3, 6, 9: a blended id would show up
    image = np.zeros((20, 28, 1), np.float32)
    aug = Augment(scale_range=(0.6, 1.4), elastic_prob=1.0, elastic_sigma=6.0, ignore_class=ignore_class)
    allowed = {0, 3, 6, 9} | ({ignore_class} if ignore_class is not None else set())
    for seed in range(6):
        _, out = aug(image, mask, (seed, 0))
        assert set(np.unique(out.numpy())) <= allowed


def test_flip_moves_pixels_left_right():
    mask = np.arange(12, dtype=np.int32).reshape(3, 4)
    image = mask[..., None].astype(np.float32)
    seen = set()
    for seed in range(12):
        out_image, out_mask = Augment(**{**OFF, "flip": True})(image, mask, (seed, 1))
        flipped = np.array_equal(out_mask, mask[:, ::-1])
        assert flipped or np.array_equal(out_mask, mask)
        np.testing.assert_array_equal(out_image[..., 0], out_mask)
        seen.add(flipped)
    assert seen == {True, False}


def test_rot90_square_all_four_nonsquare_only_180():
    square = np.arange(16, dtype=np.int32).reshape(4, 4)
    wide = np.arange(12, dtype=np.int32).reshape(3, 4)
    aug = Augment(**{**OFF, "rot90": True})
    for mask, allowed_k in [(square, {0, 1, 2, 3}), (wide, {0, 2})]:
        seen = set()
        for seed in range(24):
            out_image, out_mask = aug(mask[..., None].astype(np.float32), mask, (seed, 2))
            ks = [k for k in range(4) if np.array_equal(out_mask, np.rot90(mask, k))]  # counter-clockwise
            assert len(ks) == 1 and out_mask.shape == mask.shape
            np.testing.assert_array_equal(out_image[..., 0], out_mask)
            seen.add(ks[0])
        assert seen == allowed_k


def test_rot90_unknown_static_shape():
    aug = Augment(**{**OFF, "rot90": True})
    fn = tf.function(aug, input_signature=[tf.TensorSpec([None, None, 1]), tf.TensorSpec([None, None], tf.int32),
                                           tf.TensorSpec([2], tf.int32)])
    wide = np.arange(12, dtype=np.int32).reshape(3, 4)
    for seed in range(8):
        _, out = fn(wide[..., None].astype(np.float32), wide, tf.constant([seed, 0]))
        assert any(np.array_equal(out, np.rot90(wide, k)) for k in (0, 2))


def test_elastic_sigma_zero_is_identity():
    image = np.random.default_rng(0).uniform(0, 255, (16, 12, 3)).astype(np.float32)
    mask = _blocks(16, 12)
    out_image, out_mask = Augment(**{**OFF, "elastic_prob": 1.0, "elastic_sigma": 0.0})(image, mask, (1, 1))
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)


def test_scale_down_pads_with_ignore_or_mirrors():
    image = np.full((16, 16, 1), 200.0, np.float32)
    mask = np.ones((16, 16), np.int32)
    aug = Augment(**{**OFF, "scale_range": (0.5, 0.5), "crop": False, "ignore_class": 255})
    out_image, out_mask = aug(image, mask, (0, 0))
    inside = np.zeros((16, 16), bool)
    inside[4:12, 4:12] = True  # the 8 x 8 scaled pair, centred
    np.testing.assert_array_equal(out_mask.numpy() == 1, inside)
    assert np.all(out_mask.numpy()[~inside] == 255) and np.all(out_image.numpy()[~inside] == 0)
    mirrored = Augment(**{**OFF, "scale_range": (0.5, 0.5)})(image, mask, (0, 0))
    np.testing.assert_array_equal(mirrored[1], mask)
    np.testing.assert_allclose(mirrored[0], image)


def test_scale_up_crops_the_pattern():
    mask = np.zeros((8, 8), np.int32)
    mask[:, 4:] = 1  # left half 0, right half 1
    aug = Augment(**{**OFF, "scale_range": (2.0, 2.0), "crop": False})
    _, out = aug(mask[..., None].astype(np.float32), mask, (0, 0))
    expected = np.zeros((8, 8), np.int32)
    expected[:, 4:] = 1  # centre crop of the 2x pair: the edge stays in the middle
    np.testing.assert_array_equal(out, expected)
    _, out = Augment(**{**OFF, "scale_range": (2.0, 2.0)})(mask[..., None].astype(np.float32), mask, (3, 0))
    assert set(np.unique(out)) <= {0, 1}


@pytest.mark.parametrize("ignore_class", [None, 10_000])
def test_image_and_mask_stay_aligned_under_all_geometry(ignore_class):
    # mask = a unique id per pixel, image = that pixel's (y, x): the image is a function of
    # the mask. Bilinear sampling of a linear ramp is exact, so after any warp the image
    # holds the exact source position and the mask must hold the id of its nearest pixel.
    h, w = 40, 40
    yy, xx = np.mgrid[:h, :w]
    mask = (yy * w + xx).astype(np.int32)
    image = np.stack([yy, xx], -1).astype(np.float32)
    aug = Augment(scale_range=(0.7, 1.3), elastic_prob=1.0, elastic_sigma=4.0, brightness=0.0, contrast=0.0,
                  ignore_class=ignore_class)
    for seed in range(8):
        out_image, out_mask = (t.numpy() for t in aug(image, mask, (seed, 9)))
        src_y, src_x = np.divmod(out_mask, w)
        # pixels whose sample lies fully inside the image (no fill, no mirror in the blend)
        interior = (out_mask != ignore_class) & (src_y >= 1) & (src_y <= h - 2) & (src_x >= 1) & (src_x <= w - 2)
        assert interior.mean() > 0.3
        assert np.abs(out_image[..., 0] - src_y)[interior].max() <= 0.5 + 1e-3
        assert np.abs(out_image[..., 1] - src_x)[interior].max() <= 0.5 + 1e-3
        moved = np.abs(out_image[..., 0] - yy).max() + np.abs(out_image[..., 1] - xx).max()
        assert moved > 1  # the geometry did change something


def test_photometric_changes_image_only_and_clips():
    image = np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.float32)
    mask = _blocks(8, 8)
    aug = Augment(**{**OFF, "brightness": 0.5, "contrast": 0.9})
    changed = False
    for seed in range(5):
        out_image, out_mask = aug(image, mask, (seed, 3))
        np.testing.assert_array_equal(out_mask, mask)
        assert float(tf.reduce_min(out_image)) >= 0 and float(tf.reduce_max(out_image)) <= 255
        changed |= not np.allclose(out_image, image)
    assert changed


def test_augment_argument_errors():
    for kwargs, match in [
        ({"scale_range": (1.2, 0.8)}, r"scale_range=\(1.2, 0.8\)"),
        ({"contrast": 1.0}, r"contrast=1.0, expected a value in \[0.0, 1.0\)"),
        ({"elastic_prob": 2}, "elastic_prob=2.0"),
        ({"elastic_grid": 1}, "elastic_grid=1, expected an int >= 2"),
        ({"flip": "yes"}, "flip='yes'"),
        ({"ignore_class": -1}, "ignore_class=-1"),
    ]:
        with pytest.raises(ValueError, match=match):
            Augment(**kwargs)
    with pytest.raises(ValueError, match=r"seed \(3,\)"):
        Augment()(np.zeros((4, 4, 1), np.float32), np.zeros((4, 4), np.int32), (1, 2, 3))
    with pytest.raises(ValueError, match="mask dtype float32"):
        Augment()(np.zeros((4, 4, 1), np.float32), np.zeros((4, 4), np.float32), (1, 2))
    assert Augment(ignore_class=11).get_config()["ignore_class"] == 11
