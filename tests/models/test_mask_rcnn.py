"""Mask R-CNN: targets, selection layers, mask pasting, the model under fit, save/reload and export."""

from collections import Counter

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg.data.instance_pipeline import instance_dataset
from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples
from export.tflite import compare_detections, detector_tflite
from kseg.models import build_model
from kseg.models.mask_rcnn import SMALL_CONFIG, MaskRCNN
from kseg.models.mask_rcnn import targets
from kseg.models.mask_rcnn.layers import Detections, Proposals
from kseg.ops import boxes as box_ops
from kseg.ops.masks import paste_masks
from tests import testing

SIZE = (64, 64)
K = len(SHAPE_CATEGORIES)


def small_model(**overrides):
    return build_model("mask_rcnn", "small", num_classes=K, input_shape=(*SIZE, 3), **overrides)


def shapes_batches(count=8, batch_size=4, max_instances=6, seed=3):
    examples = shapes_dataset_examples(count, seed=seed, image_size=SIZE, max_instances=3, min_size=12)
    return examples, instance_dataset(examples, image_size=SIZE, max_instances=max_instances, batch_size=batch_size,
                                      shuffle=False, flip=False)


# ----------------------------------------------------------------------------- targets


def test_an_anchor_equal_to_a_box_is_positive_with_zero_deltas():
    anchors = box_ops.anchor_boxes(SIZE, sizes=SMALL_CONFIG["anchor_sizes"])
    gt = np.zeros((1, 3, 4), "float32")
    gt[0, 0] = anchors[100]
    classes = np.array([[2, 0, 0]], "int32")
    t = targets.rpn_targets(anchors, gt, classes, num_samples=64, positive_fraction=0.5, seeds=[[0, 1]])
    assert bool(t["positive"][0, 100])
    np.testing.assert_allclose(t["deltas"][0, 100], 0.0, atol=1e-6)
    assert int(tf.reduce_sum(tf.cast(t["positive"], tf.int32))) <= 32
    total = tf.reduce_sum(tf.cast(t["positive"] | t["negative"], tf.int32))
    assert int(total) == 64  # negatives fill the sample
    assert not bool(tf.reduce_any(t["positive"] & t["negative"]))


def test_an_example_with_its_seed_is_sampled_the_same_in_any_batch():
    # What lets N replicas train like one device: the sample depends on the example, not the batch.
    anchors = box_ops.anchor_boxes(SIZE, sizes=SMALL_CONFIG["anchor_sizes"])
    gt = np.zeros((2, 3, 4), "float32")
    gt[0, 0], gt[1, 0], gt[1, 1] = anchors[100], anchors[400], anchors[900]
    classes = np.array([[1, 0, 0], [2, 3, 0]], "int32")
    seeds = np.array([[11, 12], [13, 14]])
    pair = targets.rpn_targets(anchors, gt, classes, num_samples=64, seeds=seeds)
    for i in range(2):
        alone = targets.rpn_targets(anchors, gt[i:i + 1], classes[i:i + 1], num_samples=64, seeds=seeds[i:i + 1])
        for key in ("positive", "negative"):
            np.testing.assert_array_equal(alone[key][0], pair[key][i])
    other = targets.rpn_targets(anchors, gt, classes, num_samples=64, seeds=seeds + 1)
    assert not np.array_equal(other["negative"], pair["negative"])  # the seed, not a constant, decides


def test_no_ground_truth_gives_no_positive_anchor():
    anchors = box_ops.anchor_boxes(SIZE, sizes=SMALL_CONFIG["anchor_sizes"])
    t = targets.rpn_targets(anchors, np.zeros((2, 4, 4), "float32"), np.zeros((2, 4), "int32"), num_samples=32)
    assert not bool(tf.reduce_any(t["positive"]))
    np.testing.assert_array_equal(tf.reduce_sum(tf.cast(t["negative"], tf.int32), axis=1), [32, 32])


def test_roi_sampling_puts_ground_truth_in_the_foreground_slots():
    gt = np.array([[[8, 8, 40, 40], [30, 20, 60, 50], [0, 0, 0, 0]]], "float32")
    classes = np.array([[1, 3, 0]], "int32")
    proposals = np.array([[[9, 9, 41, 41], [0, 40, 20, 63], [0, 0, 0, 0]]], "float32")
    valid = np.array([[True, True, False]])
    t = targets.roi_targets(proposals, valid, gt, classes, num_samples=8, positive_fraction=0.5,
                            seeds=[[4, 5]])
    slots = t["num_foreground_slots"]
    assert slots == 4
    fg = np.asarray(t["foreground"][0])
    assert fg[:slots].sum() == 3 and not fg[slots:].any()  # the near-copy and both real boxes
    fg_classes = sorted(np.asarray(t["classes"][0])[:slots][fg[:slots]].tolist())
    assert fg_classes == [1, 1, 3]
    bg = np.asarray(t["valid"][0])[slots:]
    assert bg.sum() == 1  # the one proposal that overlaps nothing
    assert (np.asarray(t["classes"][0])[slots:] == 0).all()


def test_mask_targets_crop_the_ground_truth_at_bin_centres():
    masks = np.zeros((1, 2, 64, 64), "uint8")
    masks[0, 1, 16:48, 8:40] = 1  # a 32 x 32 square
    rois = np.array([[[16, 8, 48, 40], [16, 8, 48, 72]]], "float32")  # the square; twice as wide
    out = np.asarray(targets.mask_targets(masks, rois, np.array([[1, 1]]), size=28))
    np.testing.assert_array_equal(out[0, 0], 1.0)
    np.testing.assert_array_equal(out[0, 1, :, :14], 1.0)
    np.testing.assert_array_equal(out[0, 1, :, 14:], 0.0)


# ----------------------------------------------------------------------------- selection, pasting


def _paste_reference(mask, box, size):
    """Loops: each pixel centre mapped into the S x S grid, read bilinearly with zeros outside."""
    s = mask.shape[0]
    y1, x1, y2, x2 = box
    out = np.zeros(size, np.float64)
    padded = np.pad(mask.astype(np.float64), 1)
    for py in range(size[0]):
        for px in range(size[1]):
            u = (py + 0.5 - y1) / (y2 - y1) * s - 0.5
            v = (px + 0.5 - x1) / (x2 - x1) * s - 0.5
            if not (-1 < u < s and -1 < v < s):
                continue
            i, j = int(np.floor(u)), int(np.floor(v))
            fu, fv = u - i, v - j
            block = padded[i + 1 : i + 3, j + 1 : j + 3]
            out[py, px] = ((1 - fu) * (1 - fv) * block[0, 0] + (1 - fu) * fv * block[0, 1]
                           + fu * (1 - fv) * block[1, 0] + fu * fv * block[1, 1])
    return out


def test_paste_masks_matches_a_bilinear_reference():
    rng = np.random.default_rng(0)
    masks = rng.uniform(size=(1, 2, 28, 28)).astype("float32")
    boxes = np.array([[[5.5, 10.0, 40.25, 30.0], [-10.0, 50.0, 20.0, 90.0]]], "float32")  # one leaves the image
    got = np.asarray(paste_masks(masks, boxes, (48, 64)))
    for d in range(2):
        np.testing.assert_allclose(got[0, d], _paste_reference(masks[0, d], boxes[0, d], (48, 64)), atol=1e-5)
    ones = np.asarray(paste_masks(np.ones((1, 1, 28, 28), "float32"), np.array([[[8, 8, 40, 40]]], "float32"), (48, 48)))
    assert ones[0, 0, 9:39, 9:39].min() == pytest.approx(1.0) and ones[0, 0, :7].max() == 0.0


def test_proposals_drop_duplicates_and_pad():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], "float32")
    layer = Proposals(anchors, (64, 64), pre_nms_topk=4, post_nms_topk=4, iou_threshold=0.7)
    logits = np.array([[3.0, 2.0, 1.0, -1.0]], "float32")
    boxes, count = layer(logits, np.zeros((1, 4, 4), "float32"))
    assert int(count[0]) == 3
    np.testing.assert_allclose(boxes[0, :3], anchors[[0, 2, 3]])
    np.testing.assert_array_equal(boxes[0, 3], 0.0)


def test_detections_suppress_within_a_class_not_across_classes():
    proposals = np.array([[[10, 10, 30, 30], [10, 10, 30, 30], [40, 40, 60, 60]]], "float32")
    logits = np.full((1, 3, 3), -10.0, "float32")
    logits[0, 0, 1] = logits[0, 1, 1] = 5.0  # the same box twice, class 1
    logits[0, 2, 1] = logits[0, 2, 2] = 5.0  # one box, classes 1 and 2 tie
    layer = Detections((64, 64), max_detections=5, score_threshold=0.05, iou_threshold=0.5)
    boxes, scores, classes, num = layer(proposals, np.array([3]), logits, np.zeros((1, 3, 2, 4), "float32"))
    assert int(num[0]) == 3
    kept = sorted(zip(np.asarray(classes[0, :3]).tolist(), np.asarray(boxes[0, :3, 0]).tolist()))
    assert kept == [(1, 10.0), (1, 40.0), (2, 40.0)]
    assert np.all(np.asarray(classes[0, 3:]) == 0) and np.all(np.asarray(scores[0, 3:]) == 0)


@pytest.mark.parametrize("layer", ["kseg", "torchvision"])
def test_detections_decode_the_box_targets_of_training(layer):
    """The box head's targets (targets.BOX_WEIGHTS) decode back to the ground truth in both
    detection layers: training and inference use one set of delta weights."""
    from kseg.models.mask_rcnn import torchvision_layers

    assert torchvision_layers.BOX_WEIGHTS is targets.BOX_WEIGHTS
    proposal = np.array([[[8.0, 10.0, 40.0, 30.0]]], "float32")
    gt = np.array([[12.0, 6.0, 50.0, 34.0]], "float32")
    deltas = box_ops.encode_boxes(gt, proposal[0], weights=targets.BOX_WEIGHTS)  # [1, 4]
    deltas = np.tile(np.asarray(deltas)[None, :, None, :], (1, 1, 2, 1))  # [B, P, K = 2, 4]
    logits = np.array([[[0.0, 9.0, 0.0]]], "float32")  # class 1
    if layer == "kseg":
        detect = Detections(SIZE, max_detections=2, score_threshold=0.5)
    else:
        detect = torchvision_layers.TorchvisionDetections(SIZE, max_detections=2, score_threshold=0.5)
    boxes, scores, classes, num = detect(proposal, np.array([1]), logits, deltas)
    assert int(num[0]) == 1 and int(classes[0, 0]) == 1
    np.testing.assert_allclose(boxes[0, 0], gt[0], atol=1e-4)


# ----------------------------------------------------------------------------- the model


def test_outputs_have_the_documented_shapes():
    model = small_model()
    out = model.predict(testing.random_images((2, *SIZE, 3)), verbose=0)
    d = SMALL_CONFIG["max_detections"]
    assert out["boxes"].shape == (2, d, 4) and out["scores"].shape == (2, d)
    assert out["classes"].shape == (2, d) and out["masks"].shape == (2, d, *SIZE)
    assert out["num_detections"].shape == (2,)
    for i, n in enumerate(out["num_detections"]):
        assert (out["classes"][i, :n] >= 1).all() and (out["classes"][i, n:] == 0).all()
        assert np.all(np.diff(out["scores"][i, :n]) <= 1e-6)  # best first
        assert (out["boxes"][i, :n, 2] >= out["boxes"][i, :n, 0]).all()


def test_config_round_trip_and_reload_give_the_same_model(tmp_path):
    model = small_model()
    testing.check_config_round_trip(model)
    testing.check_save_reload(model, testing.random_images((1, *SIZE, 3)), tmp_path)


@pytest.fixture(scope="module")
def fitted():
    """A small model after 40 steps on 8 synthetic images (a few seconds)."""
    keras.utils.set_random_seed(0)
    examples, data = shapes_batches()
    model = small_model()
    model.compile(optimizer=keras.optimizers.Adam(2e-3, clipnorm=10.0))
    batch = next(iter(data))
    first = _losses(model, batch)
    history = model.fit(data, steps_per_epoch=40, epochs=1, verbose=0)
    return model, examples, (batch, first), history.history


def _losses(model, batch):
    """The training losses on `batch` (training-mode batch norm, averaged over 4 samplings)."""
    runs = [model.compute_losses(batch, training=True) for _ in range(4)]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def test_fit_trains_every_loss_on_padded_batches(fitted):
    model, _, (batch, first), history = fitted
    assert set(history) == {"loss", "rpn_objectness", "rpn_box", "box_class", "box_regression", "mask"}
    assert all(np.isfinite(v[-1]) for v in history.values())
    after = _losses(model, batch)
    assert sum(after.values()) < 0.6 * sum(first.values()), (first, after)
    for name in ("rpn_objectness", "box_class", "mask"):
        assert after[name] < first[name], (name, first, after)


def test_export_path_matches_the_training_path_and_converts_to_builtin_tflite(fitted, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model, examples, _, _ = fitted
    config = {**model.get_config(), "roi_align_method": "gather"}
    exportable = MaskRCNN.from_config(config)
    exportable.set_weights(model.get_weights())
    image = examples[0]["image"][None].astype("float32")
    reference, got = model(image), exportable(image)
    for key in reference:
        np.testing.assert_allclose(np.asarray(got[key], float), np.asarray(reference[key], float), atol=1e-4)

    interpreter = Interpreter(model_content=detector_tflite(model), num_threads=2)
    interpreter.allocate_tensors()
    ops = Counter(d["op_name"] for d in interpreter._get_ops_details())
    assert ops["NON_MAX_SUPPRESSION_V4"] == 2 and "CUSTOM" not in ops and "FlexCropAndResize" not in ops
    lite = interpreter.get_signature_runner()(image=image)  # outputs keyed as the Keras dict
    assert sorted(lite) == sorted(reference)
    result = compare_detections(reference, lite, SIZE)
    n = result["count"][0]
    assert result["count"] == (n, n) and n > 0
    assert result["unmatched"] == 0  # every Keras detection has a TFLite one of its class
    assert result["max_box_error"] <= 1e-3
    assert min(result["mask_ious"]) >= 0.99


def test_resnet50_fpn_parameters_reconcile_exactly_with_torchvision():
    """torchvision's maskrcnn_resnet50_fpn (91 classes incl. background) has 44,401,393 parameters.

    The same architecture here differs only where the two libraries differ by design:
    keras.applications' ResNet-50 convs carry biases, and its batch norms hold gamma, beta and
    moving statistics as weights (torchvision freezes them into buffers); torchvision also
    regresses a box and predicts a mask for the background class, which kseg does not.
    """
    model = build_model("mask_rcnn", "resnet50", num_classes=90, input_shape=(512, 512, 3))
    count = lambda weights: sum(int(np.prod(w.shape)) for w in weights)  # noqa: E731
    conv_biases = count(w for w in model.backbone.weights if "_conv" in w.path and w.path.endswith("bias"))
    batch_norms = count(w for w in model.backbone.weights if "_bn" in w.path)
    background_box, background_mask = 1024 * 4 + 4, 256 + 1
    assert model.count_params() == 44_529_836
    assert model.count_params() - conv_biases - batch_norms + background_box + background_mask == 44_401_393


def test_anchor_scales_multiply_the_rpn_outputs():
    model = small_model(anchor_scales=(1.0, 1.5))
    assert model.rpn_head.num_anchors == 6
    assert len(model.anchors) == 2 * len(small_model().anchors)
    out = model.predict(testing.random_images((1, *SIZE, 3)), verbose=0)
    assert out["boxes"].shape == (1, SMALL_CONFIG["max_detections"], 4)
