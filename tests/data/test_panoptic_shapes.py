"""kseg.data.panoptic_shapes: synthetic panoptic ground truth that is exact and consistent."""

import numpy as np

from kseg.data.panoptic_shapes import PANOPTIC_SHAPE_CATEGORIES, panoptic_shapes_examples

THINGS = {c["id"] for c in PANOPTIC_SHAPE_CATEGORIES if c["isthing"]}


def test_every_pixel_is_in_exactly_one_segment_that_agrees_with_masks_and_semantics():
    for e in panoptic_shapes_examples(6, seed=1, image_size=(64, 96)):
        assert e["panoptic"].min() >= 1  # no void
        assert set(np.unique(e["panoptic"])) == set(e["segments"])
        for i, mask in enumerate(e["masks"].astype(bool), start=1):
            np.testing.assert_array_equal(e["panoptic"] == i, mask)
            assert e["segments"][i]["category_id"] == e["classes"][i - 1] and e["segments"][i]["isthing"]
        for sid, seg in e["segments"].items():
            region = e["panoptic"] == sid
            if seg["isthing"]:
                assert seg["category_id"] in THINGS and (e["semantic"][region] == 0).all()
            else:
                assert (e["semantic"][region] == seg["category_id"] - len(THINGS)).all()


def test_stuff_regions_have_their_own_textures():
    e = panoptic_shapes_examples(1, seed=2, image_size=(128, 128), max_instances=1, min_size=12, max_size=16)[0]
    means = {s: e["image"][e["semantic"] == s].mean(axis=0) for s in (1, 2, 3) if (e["semantic"] == s).any()}
    assert 1 in means and means[1][2] > means[1][1] > means[1][0]  # sky: blue over green over red
    if 2 in means:
        assert means[2][1] > means[2][0] and means[2][1] > means[2][2]  # grass is green


def test_examples_are_deterministic_per_seed():
    a, b = panoptic_shapes_examples(2, seed=3), panoptic_shapes_examples(2, seed=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["panoptic"], y["panoptic"])
    assert not np.array_equal(a[0]["image"], panoptic_shapes_examples(1, seed=4)[0]["image"])
