"""Tests for kseg.losses: hand-computed values, the ignore label, gradients, serialization."""

import doctest
import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg import losses
from tests import testing

# A 1x2x2 example with K=2. Softmax of [log 3, 0] is [3/4, 1/4], of [0, 0] is [1/2, 1/2].
LOG3 = np.log(3.0)
LOGITS = np.array([[[[LOG3, 0.0], [LOG3, 0.0]], [[0.0, 0.0], [0.0, LOG3]]]], np.float32)
LABELS = np.array([[[0, 1], [1, 0]]], np.int32)
# p(true class) per pixel: 3/4, 1/4, 1/2, 1/4  ->  CE = log(4/3), log 4, log 2, log 4.
CE = np.array([np.log(4 / 3), np.log(4), np.log(2), np.log(4)])
P_TRUE = np.array([0.75, 0.25, 0.5, 0.25])

FUNCTIONS = {
    "sparse_cross_entropy": losses.sparse_cross_entropy,
    "weighted_cross_entropy": lambda y, p, **kw: losses.weighted_cross_entropy(
        y, p, class_weights=[1.0, 2.0, 0.5, 3.0], **kw
    ),
    "dice": losses.dice,
    "ce_dice": losses.ce_dice,
    "focal": lambda y, p, **kw: losses.focal(y, p, alpha=[0.1, 0.2, 0.3, 0.4], **kw),
}


def _value(loss):
    return np.asarray(loss, np.float64)


# --- NumPy references, computed on the kept pixels only -----------------------------


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _np_reference(name, labels, logits):
    """Per-pixel arrays [N] and [N, K] of one sample's kept pixels -> the loss."""
    if labels.size == 0:
        return 0.0
    log_p = _np_log_softmax(logits.astype(np.float64))
    log_p_true = log_p[np.arange(labels.size), labels]
    ce = -log_p_true
    if name == "sparse_cross_entropy":
        return ce.mean()
    if name == "weighted_cross_entropy":
        w = np.array([1.0, 2.0, 0.5, 3.0])[labels]
        return (w * ce).sum() / w.sum()
    probs = np.exp(log_p)
    one_hot = np.eye(logits.shape[-1])[labels]
    per_class = (2 * (probs * one_hot).sum(0) + 1) / (probs.sum(0) + one_hot.sum(0) + 1)
    dice = 1 - per_class.mean()
    if name == "dice":
        return dice
    if name == "ce_dice":
        return ce.mean() + dice
    alpha = np.array([0.1, 0.2, 0.3, 0.4])[labels]
    return (alpha * (1 - np.exp(log_p_true)) ** 2 * ce).mean()


def _random_batch(seed, ignore_class, shape=(3, 5, 6), num_classes=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, shape + (num_classes,)).astype(np.float32)
    labels = rng.integers(0, num_classes, shape).astype(np.int32)
    labels[rng.random(shape) < 0.3] = ignore_class
    labels[2] = ignore_class  # a sample with no counted pixel
    return labels, logits


# --- hand-computed values ------------------------------------------------------------


def test_sparse_cross_entropy_by_hand():
    loss = losses.sparse_cross_entropy(LABELS, LOGITS)
    np.testing.assert_allclose(_value(loss), [CE.mean()], 1e-6)
    probs = tf.nn.softmax(LOGITS)
    loss = losses.sparse_cross_entropy(LABELS, probs, from_logits=False)
    np.testing.assert_allclose(_value(loss), [CE.mean()], 1e-6)


def test_sparse_cross_entropy_ignore_by_hand():
    labels = np.array([[[0, 1], [1, 255]]])
    loss = losses.sparse_cross_entropy(labels, LOGITS, ignore_class=255)
    np.testing.assert_allclose(_value(loss), [CE[:3].mean()], 1e-6)


def test_weighted_cross_entropy_by_hand():
    # weights [1, 3] on labels 0, 1, 1, 0 -> pixel weights 1, 3, 3, 1.
    expected = (CE[0] + 3 * CE[1] + 3 * CE[2] + CE[3]) / 8
    loss = losses.weighted_cross_entropy(LABELS, LOGITS, class_weights=[1.0, 3.0])
    np.testing.assert_allclose(_value(loss), [expected], 1e-6)
    same = losses.weighted_cross_entropy(LABELS, LOGITS, class_weights=[1.0, 1.0])
    np.testing.assert_allclose(_value(same), [CE.mean()], 1e-6)


def test_dice_by_hand():
    # class 0: p = .75 .75 .5 .25, t = 1 0 0 1 -> sum(p t) = 1, sum p = 2.25, sum t = 2
    # class 1: p = .25 .25 .5 .75, t = 0 1 1 0 -> sum(p t) = .75, sum p = 1.75, sum t = 2
    smooth1 = 1 - ((2 * 1 + 1) / (2.25 + 2 + 1) + (2 * 0.75 + 1) / (1.75 + 2 + 1)) / 2
    smooth0 = 1 - ((2 * 1) / (2.25 + 2) + (2 * 0.75) / (1.75 + 2)) / 2
    np.testing.assert_allclose(_value(losses.dice(LABELS, LOGITS)), [smooth1], 1e-6)
    np.testing.assert_allclose(_value(losses.dice(LABELS, LOGITS, smooth=0.0)), [smooth0], 1e-6)


def test_focal_by_hand():
    expected = ((1 - P_TRUE) ** 2 * CE).mean()
    np.testing.assert_allclose(_value(losses.focal(LABELS, LOGITS)), [expected], 1e-6)
    alpha = np.array([0.25, 0.75])[[0, 1, 1, 0]]
    expected = (alpha * (1 - P_TRUE) ** 2 * CE).mean()
    loss = losses.focal(LABELS, LOGITS, alpha=[0.25, 0.75])
    np.testing.assert_allclose(_value(loss), [expected], 1e-6)
    loss = losses.focal(LABELS, LOGITS, gamma=1.0, alpha=0.5)
    np.testing.assert_allclose(_value(loss), [(0.5 * (1 - P_TRUE) * CE).mean()], 1e-6)


def test_focal_with_gamma_0_equals_cross_entropy():
    labels, logits = _random_batch(0, ignore_class=255)
    logits[0, 0, 0] = [40.0, -40.0, 0.0, 0.0]  # confident: p_t rounds to 1 or to 0
    ce = losses.sparse_cross_entropy(labels, logits, ignore_class=255)
    fl = losses.focal(labels, logits, gamma=0.0, ignore_class=255)
    np.testing.assert_allclose(_value(fl), _value(ce), rtol=1e-6)


def test_ce_dice_is_the_weighted_sum_of_its_parts():
    labels, logits = _random_batch(1, ignore_class=255)
    kw = {"ignore_class": 255}
    expected = 0.5 * _value(losses.sparse_cross_entropy(labels, logits, **kw)) + 2.0 * _value(
        losses.dice(labels, logits, **kw)
    )
    loss = losses.ce_dice(labels, logits, ce_weight=0.5, dice_weight=2.0, **kw)
    np.testing.assert_allclose(_value(loss), expected, rtol=1e-6)


# --- the ignore label ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("ignore_class", [255, 3, None])
def test_ignore_class_equals_removing_the_pixels(name, ignore_class):
    labels, logits = _random_batch(2, ignore_class=7 if ignore_class is None else ignore_class)
    # With ignore_class=None, label 7 (outside [0, 4)) is dropped as documented.
    loss = _value(FUNCTIONS[name](labels, logits, ignore_class=ignore_class))
    assert loss.shape == (3,)
    assert loss[2] == 0.0
    for b in range(3):
        kept = (labels[b] >= 0) & (labels[b] < 4) & (labels[b] != ignore_class)
        expected = _np_reference(name, labels[b][kept], logits[b][kept])
        np.testing.assert_allclose(loss[b], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_logits_at_ignored_pixels_change_nothing(name):
    labels, logits = _random_batch(3, ignore_class=255)
    other = logits.copy()
    other[labels == 255] = np.random.default_rng(4).normal(0, 50, other[labels == 255].shape)
    a = FUNCTIONS[name](labels, logits, ignore_class=255)
    b = FUNCTIONS[name](labels, other, ignore_class=255)
    np.testing.assert_array_equal(_value(a), _value(b))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_gradients_are_finite(name, gamma):
    labels, logits = _random_batch(5, ignore_class=255)
    logits[0, :2] *= 1e3  # saturated softmax
    fn = FUNCTIONS[name]
    if name == "focal":
        fn = lambda y, p, **kw: losses.focal(y, p, gamma=gamma, **kw)  # noqa: E731
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_mean(fn(labels, x, ignore_class=255))
    grad = tape.gradient(loss, x).numpy()
    assert np.isfinite(loss.numpy()) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[labels == 255], 0.0)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_loss_and_gradient_compile_with_xla(name):
    # On GPU, Keras compiles the train step with XLA by default (jit_compile="auto").
    labels, logits = _random_batch(9, ignore_class=255)

    @tf.function(jit_compile=True)
    def loss_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = FUNCTIONS[name](labels, x, ignore_class=255)
        return loss, tape.gradient(loss, x)

    loss, grad = loss_and_grad(tf.constant(logits))
    eager = FUNCTIONS[name](labels, logits, ignore_class=255)
    np.testing.assert_allclose(loss.numpy(), _value(eager), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_labels_with_channel_axis_are_squeezed(name):
    labels, logits = _random_batch(6, ignore_class=255)
    a = FUNCTIONS[name](labels, logits, ignore_class=255)
    b = FUNCTIONS[name](labels[..., None].astype(np.float32), logits, ignore_class=255)
    np.testing.assert_allclose(_value(a), _value(b), rtol=1e-6)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="class_weights.*expected 2.*received 3"):
        losses.weighted_cross_entropy(LABELS, LOGITS, class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="alpha"):
        losses.focal(LABELS, LOGITS, alpha=[0.5])
    with pytest.raises(ValueError, match=r"y_pred.shape=\(1, 2, 2\)"):
        losses.dice(LABELS, LOGITS[..., 0])
    with pytest.raises(ValueError, match="y_true"):
        losses.dice(LABELS[0], LOGITS)
    with pytest.raises(ValueError, match="smooth"):
        losses.Dice(smooth=-1.0)
    with pytest.raises(ValueError, match="ignore_class"):
        losses.SparseCrossEntropy(ignore_class="void")


def test_docstring_examples_run():
    for name in ["cross_entropy", "dice", "focal", "class_weights"]:
        module = importlib.import_module(f"kseg.losses.{name}")
        assert doctest.testmod(module).failed == 0


# --- Keras classes -----------------------------------------------------------------------

CLASSES = [
    losses.SparseCrossEntropy(ignore_class=255),
    losses.WeightedCrossEntropy(class_weights=[1.0, 2.0, 0.5], ignore_class=255),
    losses.Dice(smooth=0.5, ignore_class=255),
    losses.CEDice(ce_weight=0.3, dice_weight=0.7, ignore_class=255),
    losses.Focal(gamma=1.5, alpha=[0.2, 0.3, 0.5], ignore_class=255),
]


@pytest.mark.parametrize("loss", CLASSES, ids=lambda loss: loss.name)
def test_class_matches_function_and_config_round_trips(loss):
    labels, logits = _random_batch(7, ignore_class=255, num_classes=3)
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    value = float(loss(labels, logits))
    assert value == pytest.approx(float(clone(labels, logits)), rel=1e-6)
    assert value == pytest.approx(float(restored(labels, logits)), rel=1e-6)
    per_sample = _value(type(loss).from_config({**config, "reduction": None})(labels, logits))
    assert per_sample.shape == (3,)
    assert value == pytest.approx(per_sample.mean(), rel=1e-6)


@pytest.mark.parametrize("loss", CLASSES, ids=lambda loss: loss.name)
def test_fit_save_and_load(loss, tmp_path):
    rng = np.random.default_rng(8)
    images = rng.random((4, 8, 8, 3)).astype(np.float32)
    masks = rng.integers(0, 3, (4, 8, 8)).astype(np.int32)
    masks[:, 0] = 255
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 1)])
    testing.check_fit_one_step(model, images, masks, loss=loss)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()
    logits = model.predict_on_batch(images)
    assert float(loaded.loss(masks, logits)) == pytest.approx(float(loss(masks, logits)), rel=1e-6)


# --- class weights -------------------------------------------------------------------------

# Image A: 0 0 / 0 1, image B: 1 1 / 2 255, class 3 absent (K=4, ignore 255).
# counts = [3, 3, 1, 0]; pixels of the images holding each class: [4, 4 + 3, 3, 0]
# freq = [3/4, 3/7, 1/3]; median = 3/7; weights = [4/7, 1, 9/7, 0].
MASK_A = np.array([[0, 0], [0, 1]])
MASK_B = np.array([[1, 1], [2, 255]])
EXPECTED_WEIGHTS = [4 / 7, 1.0, 9 / 7, 0.0]


def test_class_pixel_counts_by_hand():
    counts, image_pixels = losses.class_pixel_counts([MASK_A, MASK_B], 4, ignore_class=255)
    np.testing.assert_array_equal(counts, [3, 3, 1, 0])
    np.testing.assert_array_equal(image_pixels, [4, 7, 3, 0])


def test_median_frequency_weights_from_a_list():
    weights = losses.median_frequency_weights([MASK_A, MASK_B], 4, ignore_class=255)
    np.testing.assert_allclose(weights, EXPECTED_WEIGHTS, rtol=1e-12)


def test_median_frequency_weights_from_a_batched_dataset_of_pairs():
    masks = np.stack([MASK_A, MASK_B])[..., None]  # [N, H, W, 1]
    images = np.zeros((2, 2, 2, 3), np.float32)
    for batch in [1, 2]:
        data = tf.data.Dataset.from_tensor_slices((images, masks)).batch(batch)
        weights = losses.median_frequency_weights(data, 4, ignore_class=255)
        np.testing.assert_allclose(weights, EXPECTED_WEIGHTS, rtol=1e-12)
    data = tf.data.Dataset.from_tensor_slices(np.stack([MASK_A, MASK_B]))  # masks alone
    weights = losses.median_frequency_weights(data, 4, ignore_class=255)
    np.testing.assert_allclose(weights, EXPECTED_WEIGHTS, rtol=1e-12)


def test_median_frequency_weights_from_counts():
    weights = losses.median_frequency_weights_from_counts([3, 3, 1, 0], [4, 7, 3, 0])
    np.testing.assert_allclose(weights, EXPECTED_WEIGHTS, rtol=1e-12)
    with pytest.raises(ValueError, match="shapes"):
        losses.median_frequency_weights_from_counts([1, 2], [1, 2, 3])


def test_class_weights_reject_bad_labels():
    with pytest.raises(ValueError, match="label 255, outside"):
        losses.class_pixel_counts([MASK_B], 4)
    with pytest.raises(ValueError, match="no pixel"):
        losses.median_frequency_weights([np.full((2, 2), 255)], 4, ignore_class=255)
    with pytest.raises(ValueError, match="shape"):
        losses.class_pixel_counts([np.zeros((1, 2, 2, 3))], 4)
