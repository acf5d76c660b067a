"""Every model family under mixed_float16 and under XLA (jit_compile=True), checked on the CPU.

Per family: a float32 model and a mixed_float16 model with the same weights give the same
outputs to float16 precision, and a few mixed-precision `fit` steps (through the
LossScaleOptimizer that `compile` adds) give finite losses; compiled with XLA, the first
training step's loss equals the one without XLA from the same weights and batch, more steps
stay finite, and the inference outputs of `tf.function(jit_compile=True)` equal the
uncompiled ones.

Tolerances:

* mixed_float16 vs float32: float16 keeps 11 significant bits (unit round-off
  u = 2**-11 = 4.9e-4). Activations are rounded to float16 after every layer (weights too,
  when cast for the op), so the relative error of a logit tensor grows with depth, like u
  times the square root of the number of rounded layers for independent errors. These
  models have 10-30 such layers; their measured relative errors (L2 norm of the difference
  over the L2 norm of the float32 output) are 0.08-0.22 % (`FP16_RTOL` = 1 % = 20 u, about
  5x the worst measured, and far below what a wrong cast, an overflow or a dropped layer
  gives: errors of order 100 %).
* XLA vs no XLA, both float32: the same math in another order of summation (XLA fuses and
  re-associates), so differences are float32 round-off accumulated over the network: the
  measured relative differences are at most 1.6e-6; `XLA_RTOL` = 1e-4.

Randomness that would differ between the two runs is switched off: dropout 0, and the
detectors' anchor and ROI sampling sizes cover every candidate, so the sample is the whole
set whatever the random draw.
"""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg.data.instance_pipeline import instance_dataset
from kseg.data.panoptic_shapes import PANOPTIC_SHAPE_CATEGORIES, panoptic_shapes_examples
from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples
from kseg.losses import SparseCrossEntropy
from kseg.models import build_model
from kseg.models.mask_rcnn import SMALL_CONFIG
from kseg.ops import boxes as box_ops
from kseg.ops import xla
from kseg.training.detection_models import build_maskformer, build_panoptic_fpn
from tests import testing

FP16_RTOL = 1e-2
XLA_RTOL = 1e-4
SIZE = (64, 64)
BATCH = 2
FIT_STEPS = 3

SEMANTIC = {
    "unet": {"filters": 4, "depth": 2},
    "attention_unet": {"filters": 4, "depth": 2},
    "residual_unet": {"filters": 4, "depth": 2},
    "dense_unet": {"filters": 4, "depth": 2},
    "mobile_unet": {},
    "segformer_b0": {"dropout": 0.0, "drop_path_rate": 0.0},
}
NUM_CLASSES = 3


def relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))


def assert_close(got, want, rtol, what):
    error = relative_error(got, want)
    assert error <= rtol, f"{what}: relative error {error:.2e} > {rtol:.0e}"


def assert_global_policy_is_float32():
    assert keras.mixed_precision.global_policy().name == "float32"


def check_mixed_precision_compile(model):
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer), type(model.optimizer)


class StepLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({k: float(v) for k, v in logs.items()})


def fit_steps(model, dataset, steps=FIT_STEPS):
    """`fit` for `steps` steps: the logs after each step (running means from the first step on,
    so the first entry is the first step's loss), every one finite."""
    logs = StepLogs()
    model.fit(dataset, steps_per_epoch=steps, verbose=0, callbacks=[logs])
    assert len(logs.steps) == steps
    assert all(np.isfinite(v) for step in logs.steps for v in step.values()), logs.steps
    return logs.steps


# ----------------------------------------------------------------------------- semantic models


def semantic_model(name, **kwargs):
    keras.utils.set_random_seed(0)
    return build_model(name, num_classes=NUM_CLASSES, input_shape=SIZE + (3,), **SEMANTIC[name], **kwargs)


def semantic_data():
    images = testing.random_images((BATCH, *SIZE, 3))
    masks = testing.random_masks((BATCH, *SIZE), NUM_CLASSES)
    return images, masks


@pytest.mark.parametrize("name", list(SEMANTIC))
def test_semantic_model_in_mixed_float16(name):
    images, masks = semantic_data()
    reference = semantic_model(name)
    model = semantic_model(name, dtype="mixed_float16")
    assert_global_policy_is_float32()
    assert any(layer.compute_dtype == "float16" for layer in model.layers)
    model.set_weights(reference.get_weights())
    logits = model(images, training=False)
    assert logits.dtype == tf.float32  # logits stay float32
    assert_close(logits, reference(images, training=False), FP16_RTOL, f"{name} float16 logits")

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SparseCrossEntropy())
    check_mixed_precision_compile(model)
    fit_steps(model, tf.data.Dataset.from_tensors((images, masks)).repeat())


# The two largest graphs take XLA 30-45 s each to compile on 2 CPU cores: run with -m slow.
XLA_SLOW = ("mobile_unet", "segformer_b0")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in XLA_SLOW else n for n in SEMANTIC])
def test_semantic_model_under_xla(name):
    images, masks = semantic_data()
    model = semantic_model(name)
    start = model.get_weights()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SparseCrossEntropy(), jit_compile=False)
    loss = model.train_on_batch(images, masks)
    model.set_weights(start)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SparseCrossEntropy(), jit_compile=True)
    assert model.jit_compile is True
    steps = fit_steps(model, tf.data.Dataset.from_tensors((images, masks)).repeat())
    assert steps[0]["loss"] == pytest.approx(loss, rel=XLA_RTOL)

    compiled = tf.function(lambda x: model(x, training=False), jit_compile=True)
    assert_close(compiled(images), model(images, training=False), XLA_RTOL, f"{name} logits under XLA")


# ----------------------------------------------------------------------------- detectors


def mask_rcnn_batch():
    examples = shapes_dataset_examples(BATCH, seed=3, image_size=SIZE, max_instances=3, min_size=12)
    return next(iter(instance_dataset(examples, image_size=SIZE, max_instances=4, batch_size=BATCH,
                                      shuffle=False, flip=False)))


def panoptic_batch():
    examples = panoptic_shapes_examples(BATCH, seed=1, image_size=SIZE)
    return next(iter(instance_dataset(examples, image_size=SIZE, max_instances=4, batch_size=BATCH,
                                      shuffle=False, flip=False, semantic=True)))


def exhaustive_sampling():
    """Mask R-CNN sampling sizes that take every anchor and every ROI candidate (64 proposals
    + 4 ground-truth boxes), so a training step has no random part."""
    anchors = len(box_ops.anchor_boxes(SIZE, sizes=SMALL_CONFIG["anchor_sizes"]))
    return {"rpn_batch_size": anchors, "rpn_positive_fraction": 0.5, "rpn_post_nms_topk": (64, 64),
            "roi_batch_size": 2 * 68, "roi_positive_fraction": 0.5}


def build_detector(family, **kwargs):
    keras.utils.set_random_seed(0)
    if family == "mask_rcnn":
        return build_model("mask_rcnn", "small", num_classes=len(SHAPE_CATEGORIES), input_shape=(*SIZE, 3),
                           **{**exhaustive_sampling(), **kwargs})
    if family == "panoptic_fpn":
        return build_panoptic_fpn("small", PANOPTIC_SHAPE_CATEGORIES, SIZE, semantic_channels=32,
                                  **exhaustive_sampling(), **kwargs)
    return build_maskformer("small", PANOPTIC_SHAPE_CATEGORIES, SIZE, **kwargs)


def detector_batch(family):
    return mask_rcnn_batch() if family == "mask_rcnn" else panoptic_batch()


def dense_outputs(model, images, boxes):
    """The outputs before any selection (top-k, NMS, thresholds), float32: for Mask R-CNN and
    Panoptic FPN the RPN logits and deltas and the box head's class logits and deltas on the
    given boxes (through ROI Align), plus the semantic logits; for MaskFormer every decoder
    layer's class and mask logits."""
    if hasattr(model, "layer_predictions"):
        return {f"{name}{i}": tensor for i, pair in enumerate(model.layer_predictions(images, training=False))
                for name, tensor in zip(("class_logits", "mask_logits"), pair)}
    detector = getattr(model, "detector", model)  # Panoptic FPN's Mask R-CNN
    features = detector.pyramid_features(images, training=False)
    outputs = dict(zip(("rpn_logits", "rpn_deltas"), detector.rpn_head(features)))
    outputs.update(zip(("class_logits", "box_deltas"), detector.box_head(detector.box_align(features, boxes))))
    if hasattr(model, "semantic_head"):
        outputs["semantic_logits"] = model.semantic_head({k: v for k, v in features.items() if k != "P6"})
    return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}


DETECTORS = ("mask_rcnn", "panoptic_fpn", "maskformer")


@pytest.fixture(scope="module", params=DETECTORS)
def detector(request):
    return request.param, build_detector(request.param), detector_batch(request.param)


def test_detector_in_mixed_float16(detector):
    family, reference, batch = detector
    model = build_detector(family, dtype="mixed_float16")
    assert_global_policy_is_float32()
    model.set_weights(reference.get_weights())
    got = dense_outputs(model, batch["image"], batch["boxes"])
    want = dense_outputs(reference, batch["image"], batch["boxes"])
    for key in want:
        assert_close(got[key], want[key], FP16_RTOL, f"{family} float16 {key}")
    for key, value in model.output.items():
        assert value.dtype != "float16", f"{family} output {key} is float16"

    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    check_mixed_precision_compile(model)
    # One step: a float16 training step of a detector takes tens of seconds on a CPU (no float16
    # kernels there), and one finite step through the LossScaleOptimizer is what is checked.
    fit_steps(model, tf.data.Dataset.from_tensors(batch).repeat(), steps=1)


def test_detector_under_xla(detector):
    family, model, batch = detector
    start = model.get_weights()
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=False)
    losses = model.train_on_batch(batch, return_dict=True)
    eager = model(batch["image"], training=False)  # after one step; XLA below starts from the same weights
    after_one_step = model.get_weights()
    model.set_weights(start)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=True)
    assert model.jit_compile is True
    first = fit_steps(model, tf.data.Dataset.from_tensors(batch).repeat())[0]
    for key, value in losses.items():
        assert first[key] == pytest.approx(value, rel=XLA_RTOL), (key, first, losses)

    model.set_weights(after_one_step)
    full = tf.function(lambda images: model(images, training=False), jit_compile=True)(batch["image"])
    for key in ("class_probs", "mask_logits", "semantic", "semantic_logits"):
        if key in eager:
            assert_close(full[key], eager[key], XLA_RTOL, f"{family} output {key} under XLA")
    if "scores" in eager:  # detections: the same boxes, classes and scores
        np.testing.assert_array_equal(full["num_detections"], eager["num_detections"])
        np.testing.assert_array_equal(full["classes"], eager["classes"])
        np.testing.assert_allclose(full["scores"], eager["scores"], rtol=XLA_RTOL, atol=1e-6)
        np.testing.assert_allclose(full["boxes"], eager["boxes"], rtol=XLA_RTOL, atol=1e-3)
        assert_close(full["masks"], eager["masks"], XLA_RTOL, f"{family} masks under XLA")


def test_policy_scope_restores_the_global_policy_on_failure():
    with pytest.raises(ValueError):
        build_maskformer("small", PANOPTIC_SHAPE_CATEGORIES, SIZE, backbone="no_such_backbone", dtype="mixed_float16")
    assert_global_policy_is_float32()


def test_xla_check_docstring_runs():
    failures, _ = doctest.testmod(xla, extraglobs={"tf": tf})
    assert failures == 0
