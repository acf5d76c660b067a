"""NearestUpsampling2D: the values of Keras' nearest UpSampling2D, as one resize op that LiteRT's
GPU accelerator takes (UpSampling2D converts to RESHAPE + TILE, and the GPU path has no TILE)."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from export import runtime
from export.tflite import convert_variant, op_counts
from kseg.layers import FPN, NearestUpsampling2D


@pytest.mark.parametrize("factor, shape", [(1, (1, 3, 4, 2)), (2, (2, 5, 7, 3)), (3, (1, 4, 4, 1))])
def test_equals_keras_nearest_upsampling(factor, shape):
    x = np.random.default_rng(factor).normal(size=shape).astype("float32")
    expected = keras.layers.UpSampling2D(factor, interpolation="nearest")(x)
    np.testing.assert_array_equal(NearestUpsampling2D(factor)(x), expected)


def test_gradient_equals_upsampling2d_and_compiles_under_xla():
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 3, 5, 4)).astype("float32"))
    weights = tf.constant(np.random.default_rng(2).normal(size=(2, 6, 10, 4)).astype("float32"))

    def gradient(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * weights)
        return tape.gradient(loss, x)

    expected = gradient(keras.layers.UpSampling2D(2, interpolation="nearest"))
    # the same 4-term sums in another order: float32 rounding only
    np.testing.assert_allclose(gradient(NearestUpsampling2D(2)), expected, rtol=1e-6, atol=1e-6)
    compiled = tf.function(lambda: gradient(NearestUpsampling2D(2)), jit_compile=True)
    np.testing.assert_allclose(compiled(), expected, rtol=1e-6, atol=1e-6)


def test_unknown_spatial_size_and_config_round_trip():
    layer = NearestUpsampling2D(2, name="up")
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    x = np.random.default_rng(0).normal(size=(1, 3, 5, 3)).astype("float32")
    np.testing.assert_array_equal(fn(x), np.repeat(np.repeat(x, 2, axis=1), 2, axis=2))
    again = NearestUpsampling2D.from_config(layer.get_config())
    assert again.factor == 2 and again.compute_output_shape((1, 3, None, 3)) == (1, 6, None, 3)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="factor"):
            NearestUpsampling2D(bad)


def test_an_fpn_converts_without_tile_and_runs_on_the_gpu_path():
    image = keras.Input((64, 64, 4), batch_size=1, name="image")
    levels = {f"P{n}": keras.layers.AveragePooling2D(2**n)(image) for n in range(2, 6)}
    content = convert_variant(keras.Model(image, FPN(channels=8)(levels)), "fp32")
    ops = op_counts(content)
    assert ops.get("RESIZE_NEAREST_NEIGHBOR") == 3 and "TILE" not in ops, ops
    if not Path(runtime.SWIFTSHADER_ICD).exists():
        pytest.skip("LiteRT's GPU accelerator needs SwiftShader here: apt-get install chromium libvulkan1")
    array = np.random.default_rng(0).normal(size=(1, 64, 64, 4)).astype("float32")
    assert runtime.in_subprocess(runtime.gpu_outputs, content, [array], timeout=600)["fully_accelerated"]
