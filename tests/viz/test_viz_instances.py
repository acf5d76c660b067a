"""kseg.viz.instances: one colour per instance, outlines on mask borders, boxes, labels, thresholds."""

import os
import subprocess
import sys

import numpy as np
import pytest

from kseg.viz import instance_colors, instance_overlay, mask_outline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H, W = 40, 48
GREY = 100


def two_squares():
    """A grey image and two disjoint square masks of the same class."""
    image = np.full((H, W, 3), GREY, np.uint8)
    masks = np.zeros((2, H, W), np.uint8)
    masks[0, 5:15, 5:15] = 1
    masks[1, 20:35, 25:40] = 1
    return image, masks, np.array([1, 1])


def test_mask_pixels_are_tinted_with_their_instance_colour():
    image, masks, classes = two_squares()
    out = instance_overlay(image, masks, classes, alpha=0.5)
    colors = instance_colors(2).astype(np.float64)
    assert not np.array_equal(colors[0], colors[1])  # by instance, although both have class 1
    for i in range(2):
        interior = masks[i].astype(bool) & ~mask_outline(masks[i])
        expected = np.rint(0.5 * GREY + 0.5 * colors[i]).astype(np.uint8)
        assert interior.sum() > 20
        np.testing.assert_array_equal(out[interior], np.broadcast_to(expected, (interior.sum(), 3)))
    untouched = ~masks.any(axis=0)
    np.testing.assert_array_equal(out[untouched], image[untouched])


def test_outline_pixels_are_on_mask_borders_in_the_solid_colour():
    image, masks, classes = two_squares()
    out = instance_overlay(image, masks, classes, alpha=0.0)
    colors = instance_colors(2)
    for i in range(2):
        m = masks[i].astype(bool)
        drawn = np.all(out == colors[i], axis=-1)
        np.testing.assert_array_equal(drawn, mask_outline(m))
        # Each outline pixel is in the mask and has a 4-neighbour outside it.
        padded = np.pad(m, 1)
        outside = ~padded[:-2, 1:-1] | ~padded[2:, 1:-1] | ~padded[1:-1, :-2] | ~padded[1:-1, 2:]
        assert np.all(m[drawn]) and np.all(outside[drawn])
    assert mask_outline(masks[0]).sum() == 4 * 10 - 4  # the ring of a 10 x 10 square


def test_boxes_are_outlined_and_labels_stay_inside_the_image():
    image = np.full((H, W, 3), GREY, np.uint8)
    masks = np.zeros((2, H, W), np.uint8)
    masks[0, 0:10, 0:10] = 1  # at the top-left corner: no room above the box
    masks[1, 20:30, W - 4 : W] = 1  # at the right edge: no room for the text to the right
    boxes = np.array([[0, 0, 10, 10], [20, W - 4, 30, W]], np.float32)
    classes, scores = np.array([1, 2]), np.array([0.93, 0.81])
    plain = instance_overlay(image, masks, classes, boxes=boxes, alpha=0.0)
    colors = instance_colors(2)
    assert np.all(plain[20:30, W - 4] == colors[1]) and np.all(plain[29, W - 4 :] == colors[1])  # box sides
    for i, corner in ((0, (0, 0)), (1, (20, W - 4))):
        one = dict(boxes=boxes[i : i + 1], alpha=0.0)
        without = instance_overlay(image, masks[i : i + 1], classes[i : i + 1], **one)
        labelled = instance_overlay(image, masks[i : i + 1], classes[i : i + 1], scores=scores[i : i + 1],
                                    labels=["cat", "dog"], **one)
        rows, cols = np.nonzero(np.any(labelled != without, axis=-1))
        assert len(rows) > 20
        if i == 0:  # no room above the box: the label goes just inside its top-left corner
            assert rows.min() <= 1 and cols.min() <= 1 and rows.max() < 20  # (row 0, column 0: the box)
        else:  # above the box, moved left so that the text fits in the image
            assert rows.max() == corner[0] - 1 and cols.max() == W - 1 and cols.min() < corner[1] - 10


def test_label_text_names_the_class_and_score():
    from kseg.viz.instances import _label_text

    assert _label_text(2, ["cat", "dog"], 0.934) == "dog 0.93"
    assert _label_text(3, {3: "car"}, None) == "car"
    assert _label_text(7, None, 0.5) == "class 7 0.50"


def test_instances_below_the_threshold_and_padding_are_not_drawn():
    image, masks, _ = two_squares()
    out = instance_overlay(image, masks, [1, 2], scores=[0.9, 0.3], score_threshold=0.5)
    second = masks[1].astype(bool)
    np.testing.assert_array_equal(out[second], image[second])
    assert not np.array_equal(out[masks[0].astype(bool)], image[masks[0].astype(bool)])
    padded = instance_overlay(image, masks, [0, 0])  # class 0 marks padding
    np.testing.assert_array_equal(padded, image)


def test_float_masks_are_probabilities_thresholded_at_one_half():
    image, masks, classes = two_squares()
    soft = masks.astype(np.float32) * 0.7 + 0.2  # 0.9 inside, 0.2 outside
    np.testing.assert_array_equal(instance_overlay(image, soft, classes), instance_overlay(image, masks, classes))


def test_empty_input_returns_the_image_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    out = instance_overlay(image, np.zeros((0, H, W), bool), np.zeros(0, int), scores=np.zeros(0),
                           boxes=np.zeros((0, 4)), labels=["a"])
    np.testing.assert_array_equal(out, image)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    grey = instance_overlay(image[..., 0], np.zeros((0, H, W)), [])
    np.testing.assert_array_equal(grey, np.repeat(image[..., :1], 3, axis=-1))


def test_bad_shapes_name_the_argument():
    image, masks, classes = two_squares()
    with pytest.raises(ValueError, match="masks has shape"):
        instance_overlay(image, masks[:, :10], classes)
    with pytest.raises(ValueError, match="scores has shape"):
        instance_overlay(image, masks, classes, scores=[0.5])
    with pytest.raises(ValueError, match="boxes has shape"):
        instance_overlay(image, masks, classes, boxes=np.zeros((2, 3)))


def test_instance_colors_are_distinct_and_prefix_stable():
    colors = instance_colors(20)
    assert len({tuple(c) for c in colors}) == 20
    np.testing.assert_array_equal(instance_colors(5), colors[:5])


def test_drawing_instances_imports_no_tensorflow():
    code = ("import sys, numpy as np; from kseg.viz import instance_overlay; "
            "m = np.zeros((1, 8, 8), bool); m[0, 2:5, 2:5] = True; "
            "instance_overlay(np.zeros((8, 8, 3), np.uint8), m, [1], scores=[0.9], boxes=[[2, 2, 5, 5]], "
            "labels=['a']); "
            "bad = [k for k in ('tensorflow', 'keras') if k in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
