"""MaskFormer: outputs, targets, the Hungarian matcher inside the loss, fit with deep supervision,
config / save-reload, panoptic inference on hand-set predictions, PQ, builtin TFLite export."""

import doctest
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg.data.instance_pipeline import instance_dataset
from kseg.data.panoptic_shapes import PANOPTIC_SHAPE_CATEGORIES, panoptic_shapes_examples
from kseg.models import build_model
from kseg.models.maskformer import (
    SMALL_CONFIG,
    MaskFormer,
    heads,
    mask_classification_panoptic,
    panoptic_targets,
    sine_positional_encoding,
)
from kseg.models.maskformer import maskformer as maskformer_module
from kseg.training.detection_eval import evaluate_panoptic_model, predicted_segments
from tests import testing

SIZE = (64, 64)
THINGS, STUFF = 3, 3  # kseg.data.panoptic_shapes: things 1..3, stuff 4..6
MAX_INSTANCES = 4


def small_model(**overrides):
    return build_model("maskformer", num_classes=THINGS, num_stuff_classes=STUFF, input_shape=(*SIZE, 3),
                       **{**SMALL_CONFIG, "object_threshold": 0.5, **overrides})


def panoptic_batch(batch_size=4, seed=1):
    examples = panoptic_shapes_examples(batch_size, seed=seed, image_size=SIZE)
    return next(iter(instance_dataset(examples, image_size=SIZE, max_instances=MAX_INSTANCES, batch_size=batch_size,
                                      shuffle=False, flip=False, semantic=True)))


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    model = small_model()
    batch = panoptic_batch()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=15, epochs=3, verbose=0)
    return model, batch, history.history


def test_output_shapes(trained):
    model, batch, _ = trained
    out = model.predict(batch["image"], verbose=0)
    n, k = SMALL_CONFIG["num_queries"], THINGS + STUFF
    assert out["class_probs"].shape == (4, n, k + 1)
    np.testing.assert_allclose(out["class_probs"].sum(-1), 1.0, rtol=1e-5)
    assert out["mask_logits"].shape == (4, n, SIZE[0] // 4, SIZE[1] // 4)
    assert out["semantic"].shape == (4, *SIZE, k)
    assert out["panoptic"].shape == (4, *SIZE) and out["panoptic"].dtype == np.int32
    for key in ("segment_category", "segment_is_thing", "segment_area", "segment_score"):
        assert out[key].shape == (4, n)
    assert out["num_segments"].shape == (4,)


def test_targets_from_things_stuff_and_void():
    masks = np.zeros((1, 2, 8, 8), np.uint8)
    masks[0, 0, :4, :4] = 1  # thing of category 2 in the top-left 4x4 block
    semantic = np.full((1, 8, 8), 2, np.int32)  # stuff 2 (category THINGS + 2) ...
    semantic[0, :4, :4] = 0
    semantic[0, 4:, 4:] = 255  # ... with a void bottom-right block
    batch = {"classes": np.array([[2, 0]], np.int32), "masks": masks, "semantic": semantic}
    targets = panoptic_targets(batch, THINGS, STUFF)
    assert targets["valid"].numpy().tolist() == [[True, False, False, True, False]]
    assert targets["classes"].numpy().tolist() == [[1, 6, 6, 4, 6]]  # class index = category - 1; K pads
    assert targets["weights"].numpy().reshape(2, 2).tolist() == [[1, 1], [1, 0]]
    grid = targets["masks"].numpy().reshape(2, 2, 5)
    assert grid[..., 0].tolist() == [[1, 0], [0, 0]]
    assert grid[..., 3].tolist() == [[0, 1], [1, 0]]  # stuff 2 without its void pixel
    with pytest.raises(ValueError, match="semantic"):
        panoptic_targets({k: batch[k] for k in ("classes", "masks")}, THINGS, STUFF)


def test_matcher_gives_each_valid_target_its_own_query(trained):
    model, batch, _ = trained
    targets = panoptic_targets(batch, THINGS, STUFF)
    valid = targets["valid"].numpy()
    per_layer = model.match_and_losses(batch, training=False)
    assert len(per_layer) == SMALL_CONFIG["num_layers"]
    for _, matched in per_layer:
        matched = matched.numpy()
        assert matched.shape == valid.shape
        assert ((matched >= 0) == valid).all()  # valid targets matched, padding -1
        for row, ok in zip(matched, valid):
            assert len(set(row[ok].tolist())) == ok.sum()  # distinct queries
            assert row.max() < SMALL_CONFIG["num_queries"]


def test_fit_decreases_the_deeply_supervised_loss(trained):
    _, _, history = trained
    assert set(history) == {"loss", "class", "mask", "dice", "aux0"}  # 2 decoder layers: one term each
    losses = history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.6 * losses[0]


def test_loss_terms_follow_deep_supervision():
    model = small_model(num_layers=3)
    assert model.loss_names() == ("class", "mask", "dice", "aux0", "aux1")
    losses = model.compute_losses(panoptic_batch(batch_size=2))
    assert set(losses) == set(model.loss_names()) and all(np.isfinite(float(v)) for v in losses.values())
    assert small_model(deep_supervision=False).loss_names() == ("class", "mask", "dice")


def test_config_round_trip_and_reload(tmp_path):
    model = small_model()
    testing.check_config_round_trip(model)
    testing.check_save_reload(model, testing.random_images((1, *SIZE, 3)), tmp_path)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_queries"):
        small_model(num_queries=0)
    with pytest.raises(ValueError, match=r"unexpected keyword arguments \['queries'\]"):
        small_model(queries=5)


def hand_set_predictions():
    """6 queries on a 4 x 4 image, 2 thing + 2 stuff classes (categories 1, 2 | 3, 4)."""
    class_probs = np.array([
        [0.9, 0.025, 0.025, 0.025, 0.025],  # q0: thing 1 on the top-left block A
        [0.0125, 0.0125, 0.95, 0.0125, 0.0125],  # q1: stuff 3 on the bottom row D
        [0.0375, 0.0375, 0.85, 0.0375, 0.0375],  # q2: stuff 3 on the top-right block B: merges with q1
        [0.05, 0.05, 0.05, 0.05, 0.8],  # q3: no object (its full mask must not count)
        [0.025, 0.9, 0.025, 0.025, 0.025],  # q4: thing 2 on A + row 2's left half; loses A -> overlap drop
        [0.025, 0.025, 0.025, 0.9, 0.025],  # q5: stuff 4 on one pixel: dropped by min_area=2
    ], np.float32)[None]
    masks = np.zeros((1, 4, 4, 6), np.float32)
    masks[0, :2, :2, 0] = 0.9
    masks[0, 3, :, 1] = 0.8
    masks[0, :2, 2:, 2] = 0.7
    masks[0, :, :, 3] = 1.0
    masks[0, :3, :2, 4] = 0.6
    masks[0, 2, 3, 5] = 0.9
    return class_probs, masks


def test_panoptic_inference_on_hand_set_predictions():
    class_probs, masks = hand_set_predictions()
    out = {k: v.numpy() for k, v in mask_classification_panoptic(
        class_probs, masks, num_thing_classes=2, object_threshold=0.8, overlap_threshold=0.8, min_area=2).items()}
    assert out["panoptic"][0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0], [2, 2, 2, 2]]
    assert out["num_segments"].tolist() == [2]
    assert out["category"][0].tolist() == [1, 3, 0, 0, 0, 0]
    assert out["is_thing"][0].tolist() == [True, False, False, False, False, False]
    assert out["area"][0].tolist() == [4, 8, 0, 0, 0, 0]
    np.testing.assert_allclose(out["score"][0], [0.9, 0.95, 0, 0, 0, 0], rtol=1e-6)

    # Without the area floor the one-pixel stuff query becomes segment 3 (query order).
    out = {k: v.numpy() for k, v in mask_classification_panoptic(
        class_probs, masks, num_thing_classes=2, object_threshold=0.8, overlap_threshold=0.8, min_area=0).items()}
    assert out["panoptic"][0, 2].tolist() == [0, 0, 0, 3]
    assert out["category"][0, :3].tolist() == [1, 3, 4] and out["area"][0, :3].tolist() == [4, 8, 1]
    segments = predicted_segments({"num_segments": out["num_segments"], "segment_category": out["category"],
                                   "segment_is_thing": out["is_thing"], "segment_score": out["score"],
                                   "segment_area": out["area"]})
    assert {i: (s["category_id"], s["isthing"], s["area"]) for i, s in segments.items()} == {
        1: (1, True, 4), 2: (3, False, 8), 3: (4, False, 1)}
    for segment_id, segment in segments.items():
        assert (out["panoptic"][0] == segment_id).sum() == segment["area"]

    # A higher object threshold drops q2 (0.85): its block becomes void, stuff 3 keeps row 3 only.
    out = mask_classification_panoptic(class_probs, masks, num_thing_classes=2, object_threshold=0.86, min_area=2)
    assert out["panoptic"].numpy()[0, :2].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]
    assert out["area"].numpy()[0, :2].tolist() == [4, 4]


def test_panoptic_quality_scores_the_models_output(trained):
    model, _, _ = trained
    examples = panoptic_shapes_examples(2, seed=1, image_size=SIZE)
    result = evaluate_panoptic_model(model, examples, PANOPTIC_SHAPE_CATEGORIES, batch_size=2)
    assert result["images"] == 2
    assert result["all"]["pq"] > 0.3  # the training images: most segments are found (0.64 at seed 0)


def test_builds_with_the_resnet50_backbone():
    model = small_model(backbone="resnet50")
    assert tuple(model.output["class_probs"].shape) == (None, SMALL_CONFIG["num_queries"], THINGS + STUFF + 1)
    assert model.output["panoptic"].shape[1:] == SIZE


def test_exports_to_builtin_tflite_with_keras_parity(trained):
    from ai_edge_litert.interpreter import Interpreter

    from export.tflite import panoptic_agreement

    model, batch, _ = trained
    image = keras.Input((*SIZE, 3), batch_size=1, name="image")
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(image, model(image)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = Interpreter(model_content=converter.convert(), num_threads=2).get_signature_runner()
    for i in range(2):
        x = np.asarray(batch["image"][i : i + 1])
        lite, ref = runner(image=x), {k: np.asarray(v) for k, v in model(x).items()}
        assert ref["num_segments"][0] > 0  # the panoptic comparison is not trivially void = void
        np.testing.assert_allclose(lite["class_probs"], ref["class_probs"], atol=1e-4, rtol=0)
        scale = np.abs(ref["mask_logits"]).max()
        np.testing.assert_allclose(lite["mask_logits"], ref["mask_logits"], atol=1e-4 * scale, rtol=0)
        np.testing.assert_allclose(lite["semantic"], ref["semantic"], atol=1e-4, rtol=0)
        assert panoptic_agreement(ref["panoptic"][0], lite["panoptic"][0]) >= 0.999
        assert lite["num_segments"].tolist() == ref["num_segments"].tolist()


def test_positional_encoding_is_bounded_and_distinct():
    code = sine_positional_encoding(4, 6, 16)
    assert code.shape == (24, 16) and np.abs(code).max() <= 1.0
    assert len({row.tobytes() for row in code}) == 24  # every position has its own code


def test_docstring_examples_run():
    for module in (heads, maskformer_module):
        failures, _ = doctest.testmod(module, extraglobs={"np": np, "SMALL_CONFIG": SMALL_CONFIG})
        assert failures == 0, module.__name__


def test_a_mix_transformer_backbone_builds_and_trains_a_step():
    from kseg.backbones import build_backbone

    backbone = build_backbone("mit_b0", (64, 64, 3))
    shapes = {k: tuple(v.shape[1:]) for k, v in backbone.output.items()}
    assert shapes == {"P2": (16, 16, 32), "P3": (8, 8, 64), "P4": (4, 4, 160), "P5": (2, 2, 256)}
    with pytest.raises(ValueError, match="has none in kseg"):
        build_backbone("mit_b0", (64, 64, 3), weights="imagenet")
    model = MaskFormer(num_classes=3, num_stuff_classes=3, input_shape=(64, 64, 3), backbone=backbone,
                       **{k: v for k, v in SMALL_CONFIG.items() if k != "backbone"})
    assert model.get_config()["backbone"] == "mit_b0"
    examples = panoptic_shapes_examples(2, seed=1, image_size=(64, 64))
    dataset = instance_dataset(examples, image_size=(64, 64), max_instances=6, batch_size=2, semantic=True,
                               repeat=False, shuffle=False)
    # The first decoder layer's self-attention reads the zero-initialized queries (DETR's tgt = 0):
    # its query, key and value projections, and the scale of the LayerNorm after it (which sees
    # the same vector at every query), get no gradient.
    testing.check_loss_dict_fit_one_step(model, dataset, keras.optimizers.Adam(1e-3), still=(
        "transformer_decoder/layer0/self_attention/", "transformer_decoder/layer0/norm0/gamma"))


@pytest.mark.slow
def test_fit_runs_under_a_mirrored_strategy_with_the_numpy_matcher(tmp_path):
    # Two logical CPU replicas must be configured before TensorFlow starts: a fresh process.
    import subprocess
    import sys

    script = tmp_path / "mirrored_maskformer.py"
    script.write_text(
        "import json, sys\n"
        "import numpy as np, keras\n"
        "from kseg.training.strategy import get_strategy\n"
        "strategy = get_strategy('mirrored', cpu_replicas=2)\n"
        "from kseg.data.instance_pipeline import instance_dataset\n"
        "from kseg.data.panoptic_shapes import panoptic_shapes_examples\n"
        "from kseg.models import build_model\n"
        "from kseg.models.maskformer import SMALL_CONFIG\n"
        "examples = panoptic_shapes_examples(4, seed=3, image_size=(64, 64))\n"
        "ds = instance_dataset(examples, image_size=(64, 64), max_instances=6, batch_size=4, semantic=True)\n"
        "with strategy.scope():\n"
        "    model = build_model('maskformer', num_classes=3, num_stuff_classes=3, input_shape=(64, 64, 3),\n"
        "                        **SMALL_CONFIG)\n"
        "    model.compile(optimizer=keras.optimizers.Adam(1e-3))\n"
        "history = model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0).history\n"
        "json.dump({'replicas': strategy.num_replicas_in_sync, 'loss': history['loss']}, sys.stdout)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, str(script)], check=True, cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "2"})
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert all(np.isfinite(result["loss"]))
