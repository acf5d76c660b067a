"""Panoptic FPN: the semantic branch on Mask R-CNN's FPN, its joint loss under fit, save/reload, export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg.data.instance_pipeline import instance_dataset
from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples
from kseg.models import build_model
from kseg.models.panoptic_fpn import IGNORE, semantic_cross_entropy
from tests import testing

SIZE = (64, 64)
STUFF = 2  # "top" and "bottom" halves of the background


def small_model(**overrides):
    return build_model("panoptic_fpn", "small", num_classes=len(SHAPE_CATEGORIES), num_stuff_classes=STUFF,
                       input_shape=(*SIZE, 3), **{"semantic_channels": 32, **overrides})


def panoptic_batch(batch_size=4):
    """Shapes as things; the background split into two stuff classes; a void border."""
    examples = shapes_dataset_examples(batch_size, seed=5, image_size=SIZE, max_instances=3, min_size=12)
    batch = next(iter(instance_dataset(examples, image_size=SIZE, max_instances=6, batch_size=batch_size,
                                       shuffle=False, flip=False)))
    things = tf.reduce_any(batch["masks"] > 0, axis=1)
    rows = tf.range(SIZE[0])[None, :, None]
    stuff = tf.where(rows < SIZE[0] // 2, 1, 2) * tf.ones((batch_size, 1, SIZE[1]), tf.int32)
    semantic = tf.where(things, 0, stuff)
    border = np.zeros(SIZE, bool)
    border[:2] = True
    semantic = tf.where(border[None], IGNORE, semantic)
    return {**batch, "semantic": semantic}


def test_semantic_cross_entropy_ignores_void_pixels():
    logits = np.log(np.array([[[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]], "float32"))
    labels = np.array([[[0, IGNORE]]])
    assert float(semantic_cross_entropy(labels, logits)) == pytest.approx(-np.log(0.7), rel=1e-5)
    assert float(semantic_cross_entropy(np.full((1, 1, 2), IGNORE), logits)) == 0.0


def test_outputs_add_semantic_logits_at_image_size():
    out = small_model().predict(testing.random_images((2, *SIZE, 3)), verbose=0)
    assert out["semantic_logits"].shape == (2, *SIZE, STUFF + 1)
    assert out["masks"].shape[0] == 2 and "num_detections" in out


def test_config_round_trip_and_reload(tmp_path):
    model = small_model()
    testing.check_config_round_trip(model)
    testing.check_save_reload(model, testing.random_images((1, *SIZE, 3)), tmp_path)


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    model = small_model(semantic_loss_weight=1.0, min_stuff_area=16)
    batch = panoptic_batch()
    model.compile(optimizer=keras.optimizers.Adam(2e-3, clipnorm=10.0))
    before = model.compute_losses(batch)
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=30, epochs=1, verbose=0)
    return model, batch, before, history.history


def test_joint_loss_trains_the_semantic_branch_with_the_detector(trained):
    model, batch, before, history = trained
    after = model.compute_losses(batch)
    assert set(history) == {"loss", "rpn_objectness", "rpn_box", "box_class", "box_regression", "mask", "semantic"}
    assert float(after["semantic"]) < 0.5 * float(before["semantic"])
    assert float(after["box_class"]) < float(before["box_class"])
    predicted = model.predict(batch["image"], verbose=0)["semantic_logits"].argmax(-1)
    truth = np.asarray(batch["semantic"])
    assert (predicted == truth)[truth != IGNORE].mean() > 0.8


def test_panoptic_output_is_the_fusion_of_the_models_own_outputs(trained):
    from kseg.ops.panoptic_fusion_reference import panoptic_fusion_numpy

    model, batch, _, _ = trained
    out = model.predict(batch["image"], verbose=0)
    assert out["panoptic"].shape == (4, *SIZE)
    for i in range(4):
        ref = panoptic_fusion_numpy(out["masks"][i], out["scores"][i], out["classes"][i], out["num_detections"][i],
                                    out["semantic_logits"][i], stuff_categories=model.fusion.stuff_categories,
                                    thing_class=0, min_stuff_area=16)
        np.testing.assert_array_equal(out["panoptic"][i], ref["panoptic"])
        np.testing.assert_array_equal(out["segment_category"][i], ref["category"])
    assert (out["panoptic"] > 0).mean() > 0.5  # the stuff is found: most pixels get a segment


def test_exports_to_builtin_tflite_with_semantic_branch_and_fusion(trained):
    from ai_edge_litert.interpreter import Interpreter

    model, batch, _, _ = trained
    from export.tflite import detector_tflite, panoptic_agreement

    runner = Interpreter(model_content=detector_tflite(model), num_threads=2).get_signature_runner()
    for i in range(2):
        x = np.asarray(batch["image"][i : i + 1])
        lite, ref = runner(image=x), model(x)
        np.testing.assert_allclose(lite["semantic_logits"], np.asarray(ref["semantic_logits"]), atol=1e-4)
        assert panoptic_agreement(np.asarray(ref["panoptic"])[0], lite["panoptic"][0]) >= 0.999
