"""Shared checks that every public kseg model goes through (STYLE.md, principle 7)."""

import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.exists(),
    reason=f"{SHARED_DATA} is absent: real-data tests need the project's shared data sets (../shared/data)",
)


def random_images(shape, seed=0):
    """Float32 images with raw pixel values in [0, 255]."""
    return np.random.default_rng(seed).uniform(0, 255, size=shape).astype("float32")


def random_masks(shape, num_classes, seed=0):
    return np.random.default_rng(seed).integers(0, num_classes, size=shape).astype("int32")


def check_config_round_trip(model):
    """from_config(get_config()) builds the same architecture."""
    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == model.count_params()
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]


def check_save_reload(model, images, tmp_path):
    """`.keras` save + safe-mode load gives a model with identical outputs."""
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    assert type(restored) is type(model)
    got, want = restored.predict(images, verbose=0), model.predict(images, verbose=0)
    assert keras.tree.assert_same_structure(got, want) is None
    for g, w in zip(keras.tree.flatten(got), keras.tree.flatten(want)):
        np.testing.assert_array_equal(g, w)
    return restored


def check_fit_one_step(model, images, masks, loss=None):
    """One `fit` step on a tf.data batch changes every weight; `evaluate` reports the same metric
    as computing it by hand from `predict`."""
    from kseg.losses import SparseCrossEntropy
    from kseg.metrics import MeanIoU
    from kseg.ops.confusion import confusion_matrix, mean_iou_from_confusion

    num_classes = model.compute_output_shape(images.shape)[-1]
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss or SparseCrossEntropy(),
                  metrics=[MeanIoU(num_classes)])
    before = [w.numpy().copy() for w in model.trainable_weights]
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(len(images))
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(changed), f"{changed.count(False)} trainable weights did not change after one step"
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    predicted = model.predict(images, verbose=0).argmax(-1)
    expected = float(mean_iou_from_confusion(confusion_matrix(masks, predicted, num_classes)))
    assert np.isfinite(results["loss"])
    assert abs(results["mean_iou"] - expected) < 1e-6


def check_tflite_parity(model, image, image_size=None, rtol=1e-4):
    """Builtin-ops TFLite conversion; LiteRT output equals Keras' within float32 round-off.

    The bound is relative to the logits' own scale (1e-4 of the largest logit), so it stays
    meaningful for freshly initialized models whose logits are tiny.
    """
    from export import tflite

    content = tflite.convert(model, image_size=image_size)
    expected = model(image, training=False).numpy()
    actual = tflite.run(content, image)
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)
    assert (actual.argmax(-1) == expected.argmax(-1)).mean() >= 0.999
    return content


UNET_VARIANTS = {  # every U-Net family configuration, small enough for tests
    "unet-transpose": ("unet", {}),
    "unet-bilinear-bn-dropout": ("unet", {"upsampling": "bilinear", "batch_norm": True, "dropout": 0.5}),
    "attention_unet": ("attention_unet", {}),
    "residual_unet": ("residual_unet", {}),
    "dense_unet": ("dense_unet", {}),
    "mobile_unet-mnv3small": ("mobile_unet", {"encoder": "mobilenetv3_small"}),
    "mobile_unet-separable": ("mobile_unet", {"encoder": "separable"}),
}


def small_unet(variant, channels=1, num_classes=3, size=64):
    """A small model of `variant` (a key of UNET_VARIANTS) at 64x64, with dynamic H, W where it allows."""
    from kseg.models import build_model

    name, kwargs = UNET_VARIANTS[variant]
    if name == "mobile_unet":
        return build_model(name, num_classes=num_classes, input_shape=(size, size, channels), **kwargs)
    return build_model(name, num_classes=num_classes, input_shape=(None, None, channels), filters=8, depth=3, **kwargs)


def sample_examples(size=64, channels=1, limit=None):
    """The vendored ISBI sample as export.report.load_examples gives it (uint8 images, class masks)."""
    from export import report
    from kseg.data.samples import ISBI_REMAP, isbi_sample_dirs

    images, masks = isbi_sample_dirs()
    pairs = report.image_pairs(images, masks)
    return report.load_examples(pairs, image_size=(size, size), channels=channels, remap=ISBI_REMAP, limit=limit)


def tiles(array, size):
    """[N, 256, 256, ...] -> [N * (256 / size)^2, size, size, ...] native-resolution tiles."""
    n, h, w = array.shape[:3]
    parts = array.reshape(n, h // size, size, w // size, size, *array.shape[3:]).swapaxes(2, 3)
    return parts.reshape(-1, size, size, *array.shape[3:])


def trained_isbi_unet():
    """A small U-Net fitted for a few seconds on 64x64 tiles of the ISBI sample (membranes intact).

    Returns the model and the 32 tiles of the two held-out slices, with their masks.
    """
    import keras

    full = sample_examples(size=256)
    images, masks = tiles(full["images"], 64), tiles(full["masks"], 64)
    keras.utils.set_random_seed(0)
    model = small_unet("unet-transpose", num_classes=2)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images[:128].astype("float32"), masks[:128], batch_size=16, epochs=15, verbose=0)
    return model, {"images": images[128:], "masks": masks[128:], "names": [f"tile{i}" for i in range(32)]}


def segment_with_mediapipe(content, image, tmp_path):
    """MediaPipe ImageSegmenter on `image` (uint8 RGB): (labels, confidence [H, W, K], category [H, W])."""
    mp = pytest.importorskip("mediapipe", reason="mediapipe is not installed: the MediaPipe client checks need it")
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    options = vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=str(path)),
        output_confidence_masks=True,
        output_category_mask=True,
        running_mode=vision.RunningMode.IMAGE,
    )
    with vision.ImageSegmenter.create_from_options(options) as segmenter:
        labels = list(segmenter.labels)
        result = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
        confidence = np.stack([m.numpy_view().reshape(image.shape[:2]) for m in result.confidence_masks], -1)
        category = result.category_mask.numpy_view().reshape(image.shape[:2]).copy()  # a view dies with the segmenter
    return labels, confidence.astype("float32"), category


def check_loss_dict_fit_one_step(model, dataset, optimizer=None, still=()):
    """One `fit` step of a detector that computes its own losses (Mask R-CNN, Panoptic FPN,
    MaskFormer: `kseg.models.base.LossDictTraining`) on a one-batch tf.data dataset: every loss of
    `loss_names()` and their sum are logged, finite and positive, every trainable weight moves
    (but those whose path starts with one of `still`, which get no gradient by design) and no
    frozen one does. Returns the logs ({name: value})."""
    trainable = {w.path for w in model.trainable_weights}
    model.compile(optimizer=optimizer or keras.optimizers.SGD(1e-3))
    before = {w.path: np.array(w) for w in model.weights}
    logs = {k: v[0] for k, v in model.fit(dataset, epochs=1, verbose=0).history.items()}
    assert sorted(logs) == sorted(("loss",) + tuple(model.loss_names()))
    assert all(np.isfinite(v) and v > 0 for v in logs.values()), logs
    unchanged = [w.path for w in model.trainable_weights
                 if np.array_equal(before[w.path], w) and not w.path.startswith(tuple(still))]
    assert unchanged == [], f"{len(unchanged)} trainable weights did not change after one step: {unchanged[:5]}"
    moved = [w.path for w in model.weights if w.path not in trainable and not np.array_equal(before[w.path], w)]
    assert moved == [], f"frozen weights changed: {moved[:5]}"
    return logs
