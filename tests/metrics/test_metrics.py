"""Tests for kseg.ops.confusion and kseg.metrics: hand-computed values, Keras agreement, fit."""

import doctest
import importlib
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg import metrics
from kseg.ops import confusion as confusion_ops

# Truth and prediction of a 1x2x3 image, K=3, ignore 255. Counted (truth, pred) pairs:
# (0,0) (0,1) (1,1) (2,2) (1,2); the 255 pixel is dropped.
TRUTH = np.array([[[0, 0, 1], [2, 1, 255]]])
PRED = np.array([[[0, 1, 1], [2, 2, 0]]])
CM = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]], np.float64)
# tp = [1, 1, 1], fp = column sums - tp = [0, 1, 1], fn = row sums - tp = [1, 1, 0].
IOU = [1 / 2, 1 / 3, 1 / 2]
DICE = [2 / 3, 2 / 4, 2 / 3]


def _random_batch(seed, shape=(2, 6, 5), num_classes=4, ignore_class=255):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape + (num_classes,)).astype(np.float32)
    labels = rng.integers(0, num_classes, shape).astype(np.int32)
    labels[rng.random(shape) < 0.2] = ignore_class
    return labels, logits


def test_confusion_matrix_by_hand():
    cm = confusion_ops.confusion_matrix(TRUTH, PRED, 3, ignore_class=255)
    assert cm.dtype == tf.float64
    np.testing.assert_array_equal(cm.numpy(), CM)
    cm = confusion_ops.confusion_matrix(TRUTH, PRED, 3, ignore_class=255, dtype=tf.int64)
    assert cm.dtype == tf.int64
    np.testing.assert_array_equal(cm.numpy(), CM)


def test_scores_by_hand():
    np.testing.assert_allclose(confusion_ops.iou_from_confusion(CM).numpy(), IOU, rtol=1e-12)
    np.testing.assert_allclose(confusion_ops.dice_from_confusion(CM).numpy(), DICE, rtol=1e-12)
    assert float(confusion_ops.mean_iou_from_confusion(CM)) == pytest.approx(4 / 9, rel=1e-12)
    assert float(confusion_ops.mean_dice_from_confusion(CM)) == pytest.approx(11 / 18, rel=1e-12)
    assert float(confusion_ops.pixel_accuracy_from_confusion(CM)) == pytest.approx(3 / 5)


def test_absent_class_is_nan_and_left_out_of_the_means():
    cm = np.zeros((4, 4))
    cm[:3, :3] = CM  # class 3: in neither truth nor prediction
    iou = confusion_ops.iou_from_confusion(cm).numpy()
    assert np.isnan(iou[3]) and np.isnan(confusion_ops.dice_from_confusion(cm).numpy()[3])
    assert float(confusion_ops.mean_iou_from_confusion(cm)) == pytest.approx(4 / 9, rel=1e-12)
    assert float(confusion_ops.mean_dice_from_confusion(cm)) == pytest.approx(11 / 18, rel=1e-12)
    empty = np.zeros((3, 3))
    assert float(confusion_ops.mean_iou_from_confusion(empty)) == 0.0
    assert float(confusion_ops.pixel_accuracy_from_confusion(empty)) == 0.0


def test_ignore_class_and_out_of_range_labels_are_dropped():
    truth = np.array([[[0, 0, 1], [2, 1, 7]]])  # 7 is outside [0, 3): dropped, not wrapped
    cm = confusion_ops.confusion_matrix(truth, PRED, 3).numpy()
    np.testing.assert_array_equal(cm, CM)
    pred = np.array([[[0, 1, 1], [2, 2, -1]]])
    cm = confusion_ops.confusion_matrix(TRUTH.clip(0, 2), pred, 3).numpy()
    np.testing.assert_array_equal(cm, CM)
    # An ignore class inside [0, K) removes its row only; predictions of it still count.
    cm = confusion_ops.confusion_matrix(TRUTH, PRED, 3, ignore_class=2).numpy()
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 1], [0, 0, 0]])


def test_sample_weight_per_image_and_per_pixel():
    truth = np.concatenate([TRUTH, TRUTH])
    pred = np.concatenate([PRED, PRED])
    cm = confusion_ops.confusion_matrix(truth, pred, 3, 255, sample_weight=[1.0, 0.5])
    np.testing.assert_array_equal(cm.numpy(), 1.5 * CM)
    per_pixel = np.ones(truth.shape + (1,))
    cm = confusion_ops.confusion_matrix(truth, pred, 3, 255, sample_weight=per_pixel)
    np.testing.assert_array_equal(cm.numpy(), 2 * CM)


def test_metric_by_hand_and_summary():
    metric = metrics.ConfusionMatrixMetric(3, ignore_class=255, sparse_y_pred=True)
    metric.update_state(TRUTH[..., None], PRED)
    np.testing.assert_array_equal(metric.confusion(), CM)
    np.testing.assert_allclose(metric.per_class_iou(), IOU, rtol=1e-12)
    np.testing.assert_allclose(metric.per_class_dice(), DICE, rtol=1e-12)
    assert metric.pixel_accuracy() == pytest.approx(3 / 5)
    summary = metric.summary(["sky", "road", "car"])
    json.dumps(summary, allow_nan=False)
    assert summary["mean_iou"] == pytest.approx(4 / 9)
    assert summary["mean_dice"] == pytest.approx(11 / 18)
    assert summary["pixel_accuracy"] == pytest.approx(3 / 5)
    assert summary["num_pixels"] == 5
    assert summary["per_class"][1] == {
        "id": 1,
        "name": "road",
        "iou": pytest.approx(1 / 3),
        "dice": pytest.approx(1 / 2),
        "pixels": 2,
        "pred_pixels": 2,
    }
    assert summary["confusion_matrix"] == CM.astype(int).tolist()
    absent = metrics.confusion_summary(np.zeros((2, 2)))
    assert absent["per_class"][0]["iou"] is None and absent["mean_iou"] == 0.0
    with pytest.raises(ValueError, match="class_names.*3 entries"):
        metric.summary(["sky"])
    metric.reset_state()
    np.testing.assert_array_equal(metric.confusion(), np.zeros((3, 3)))


def test_numpy_confusion_matrix_by_hand_and_equal_to_the_keras_metric():
    matrix = metrics.ConfusionMatrix(3, ignore_class=255)
    matrix.update(TRUTH, PRED)
    assert matrix.matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix.matrix, CM)
    np.testing.assert_allclose(matrix.per_class_iou(), IOU, rtol=1e-12)
    np.testing.assert_allclose(matrix.per_class_dice(), DICE, rtol=1e-12)
    assert matrix.pixel_accuracy() == pytest.approx(3 / 5)
    assert matrix.summary()["per_class"][2]["pixels"] == 1
    matrix.reset()
    assert matrix.matrix.sum() == 0

    from_ids = metrics.ConfusionMatrix(4, ignore_class=255)
    from_logits = metrics.ConfusionMatrix(4, ignore_class=255, sparse_y_pred=False)
    keras_metric = metrics.ConfusionMatrixMetric(4, ignore_class=255)
    for seed in range(3):
        labels, logits = _random_batch(seed)
        from_ids.update(labels[..., None], logits.argmax(-1))
        from_logits.update(labels, logits)
        keras_metric.update_state(labels, logits)
    np.testing.assert_array_equal(from_ids.matrix, keras_metric.confusion())
    np.testing.assert_array_equal(from_logits.matrix, keras_metric.confusion())
    assert from_logits.summary() == keras_metric.summary()


def test_counts_stay_exact_past_float32():
    truth = np.zeros((1, 4097, 4096), np.int32)  # 2^24 + 4096 pixels, all class 0
    truth[0, 0, 0] = 1
    expected = [[4097 * 4096 - 1, 0], [1, 0]]
    matrix = metrics.ConfusionMatrix(2)
    matrix.update(truth, np.zeros_like(truth))
    np.testing.assert_array_equal(matrix.matrix, expected)
    metric = metrics.ConfusionMatrixMetric(2, sparse_y_pred=True)
    metric.update_state(truth, np.zeros_like(truth))
    np.testing.assert_array_equal(metric.confusion(), expected)


@pytest.mark.parametrize("ignore_class", [255, 3, None])
@pytest.mark.parametrize("sparse_y_pred", [False, True])
def test_mean_iou_agrees_with_keras(ignore_class, sparse_y_pred):
    ours = metrics.MeanIoU(4, ignore_class=ignore_class, sparse_y_pred=sparse_y_pred)
    # keras.metrics.MeanIoU defaults to an int64 matrix, which truncates float weights.
    theirs = keras.metrics.MeanIoU(
        4, ignore_class=ignore_class, sparse_y_pred=sparse_y_pred, dtype="float32"
    )
    for seed in range(3):
        labels, logits = _random_batch(seed, ignore_class=ignore_class or 3)
        y_pred = logits.argmax(-1) if sparse_y_pred else logits
        weight = np.random.default_rng(seed).random(labels.shape).astype(np.float32)
        ours.update_state(labels, y_pred, sample_weight=weight)
        theirs.update_state(labels, y_pred, sample_weight=weight)
    assert float(ours.result()) == pytest.approx(float(theirs.result()), abs=1e-6)
    unweighted = metrics.MeanIoU(4, ignore_class=ignore_class, sparse_y_pred=sparse_y_pred)
    default = keras.metrics.MeanIoU(4, ignore_class=ignore_class, sparse_y_pred=sparse_y_pred)
    unweighted.update_state(labels, y_pred)
    default.update_state(labels, y_pred)
    assert float(unweighted.result()) == pytest.approx(float(default.result()), abs=1e-6)


def test_several_updates_equal_one_big_update():
    batches = [_random_batch(seed) for seed in range(4)]
    streamed = metrics.MeanDice(4, ignore_class=255)
    for labels, logits in batches:
        streamed.update_state(labels, logits)
    once = metrics.MeanDice(4, ignore_class=255)
    once.update_state(
        np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    )
    np.testing.assert_array_equal(streamed.confusion(), once.confusion())
    assert float(streamed.result()) == float(once.result())


def test_update_state_compiles_with_xla():
    metric = metrics.PixelAccuracy(4, ignore_class=255)
    labels, logits = _random_batch(5)
    tf.function(metric.update_state, jit_compile=True)(labels, logits)
    eager = metrics.PixelAccuracy(4, ignore_class=255)
    eager.update_state(labels, logits)
    np.testing.assert_array_equal(metric.confusion(), eager.confusion())


@pytest.mark.parametrize("cls", [metrics.MeanIoU, metrics.MeanDice, metrics.PixelAccuracy])
def test_config_round_trip(cls):
    metric = cls(5, ignore_class=255, sparse_y_pred=True, name="m")
    config = metric.get_config()
    assert cls.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert type(restored) is cls and restored.get_config() == config


def test_fit_evaluate_save_and_load(tmp_path):
    from kseg.losses import SparseCrossEntropy

    rng = np.random.default_rng(9)
    images = rng.random((4, 8, 8, 3)).astype(np.float32)
    masks = rng.integers(0, 3, (4, 8, 8)).astype(np.int32)
    masks[:, 0] = 255
    data = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 3, padding="same")])
    model.compile(
        optimizer="sgd",
        loss=SparseCrossEntropy(ignore_class=255),
        metrics=[
            metrics.MeanIoU(3, ignore_class=255),
            metrics.MeanDice(3, ignore_class=255),
            metrics.PixelAccuracy(3, ignore_class=255),
        ],
    )
    history = model.fit(data, epochs=1, verbose=0, shuffle=False)
    for name in ["mean_iou", "mean_dice", "pixel_accuracy"]:
        assert 0.0 <= history.history[name][0] <= 1.0
    scores = model.evaluate(data, verbose=0, return_dict=True)
    eager = metrics.ConfusionMatrixMetric(3, ignore_class=255)
    eager.update_state(masks, model.predict(images, verbose=0))
    summary = eager.summary()
    for name in ["mean_iou", "mean_dice", "pixel_accuracy"]:
        assert scores[name] == pytest.approx(summary[name], abs=1e-6)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True
    reloaded = loaded.evaluate(data, verbose=0, return_dict=True)
    assert reloaded["mean_iou"] == pytest.approx(scores["mean_iou"], abs=1e-6)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="num_classes.*Received: num_classes=0"):
        metrics.MeanIoU(0)
    with pytest.raises(ValueError, match="ignore_class"):
        metrics.MeanIoU(3, ignore_class=2.5)
    with pytest.raises(ValueError, match="same shape"):
        confusion_ops.confusion_matrix(TRUTH, PRED[..., :2], 3)
    with pytest.raises(ValueError, match="square"):
        confusion_ops.iou_from_confusion(np.zeros((2, 3)))


def test_docstring_examples_run():
    for name in ["kseg.ops.confusion", "kseg.metrics.confusion"]:
        assert doctest.testmod(importlib.import_module(name)).failed == 0
