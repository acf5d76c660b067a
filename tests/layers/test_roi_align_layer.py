"""roi_align's arguments (validation, given levels) and the ROIAlign layer over it."""

import numpy as np
import pytest

from kseg.layers import ROIAlign
from kseg.ops.roi_align import roi_align
from tests.ops.test_roi_align import random_features


def test_arguments_are_validated():
    features = random_features((64, 64), batch=1, channels=2)
    boxes = np.zeros((1, 3, 4), np.float32)
    with pytest.raises(ValueError, match="method"):
        roi_align(features, boxes, image_size=(64, 64), method="bilinear")
    with pytest.raises(ValueError, match=r"features\['P2'\] must be \[B, 16, 32, C\]"):
        roi_align(features, boxes, image_size=(64, 64 + 64))
    with pytest.raises(ValueError, match="needs key 'P5'"):
        roi_align({k: v for k, v in features.items() if k != "P5"}, boxes, image_size=(64, 64))
    with pytest.raises(ValueError, match="boxes must be"):
        roi_align(features, boxes[0], image_size=(64, 64))
    with pytest.raises(ValueError, match="aligned must be True or False, got 'yes'"):
        roi_align(features, boxes, image_size=(64, 64), aligned="yes")
    with pytest.raises(ValueError, match=r"sampling_ratio=-1 \(adaptive.*needs max_sampling_ratio.*got None"):
        roi_align(features, boxes, image_size=(64, 64), sampling_ratio=-1)
    with pytest.raises(ValueError, match="sampling_ratio must be an int"):
        roi_align(features, boxes, image_size=(64, 64), sampling_ratio=2.0)
    with pytest.raises(ValueError, match=r"levels must be \[B, N\]"):
        roi_align(features, boxes, image_size=(64, 64), levels=np.zeros((3,), np.int32))
    with pytest.raises(ValueError, match="max_sampling_ratio"):
        ROIAlign(7, (64, 64), sampling_ratio=0)
    with pytest.raises(ValueError, match="aligned"):
        ROIAlign(7, (64, 64), aligned=1)


def test_given_levels_replace_the_level_rule():
    features = random_features((64, 64), batch=1, channels=2)
    boxes = np.array([[[0, 0, 64, 64], [8, 8, 16, 40]]], np.float32)
    given = roi_align(features, boxes, image_size=(64, 64), levels=[[3, 9]], method="gather").numpy()  # 9 -> 5
    for level, index in ((3, 0), (5, 1)):
        alone = roi_align({f"P{level}": features[f"P{level}"]}, boxes, image_size=(64, 64),
                          min_level=level, max_level=level, method="gather").numpy()
        np.testing.assert_array_equal(given[:, index], alone[:, index])


def test_layer_passes_aligned_and_the_adaptive_ratio_and_round_trips():
    features = random_features((64, 96), batch=1, channels=2, seed=11)
    boxes = np.array([[[-3, -5, 30, 50], [10, 20, 64, 96], [0, 0, 0, 0]]], np.float32)
    layer = ROIAlign(5, (64, 96), sampling_ratio=-1, aligned=False, max_sampling_ratio=4)
    want = roi_align(features, boxes, image_size=(64, 96), output_size=5, sampling_ratio=-1, aligned=False,
                     max_sampling_ratio=4).numpy()
    np.testing.assert_array_equal(layer(features, boxes).numpy(), want)
    config = layer.get_config()
    assert (config["aligned"], config["sampling_ratio"], config["max_sampling_ratio"]) == (False, -1, 4)
    clone = ROIAlign.from_config(config)
    np.testing.assert_array_equal(clone(features, boxes).numpy(), want)
    old = {k: v for k, v in config.items() if k not in ("aligned", "max_sampling_ratio")}  # a pre-`aligned` file
    assert ROIAlign.from_config({**old, "sampling_ratio": 2}).aligned is True
