"""kseg's rank-4 GroupNormalization: Keras' values and weights, TFLite ops the fast kernels take."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from export import runtime
from kseg.layers.group_normalization import GroupNormalization


def _pair(groups, channels, seed=0):
    """Keras' layer and kseg's, built for `channels`, with the same random gamma and beta."""
    rng = np.random.default_rng(seed)
    reference, layer = keras.layers.GroupNormalization(groups), GroupNormalization(groups)
    for norm in (reference, layer):
        norm.build((None, 6, 5, channels))
    weights = [rng.normal(size=channels).astype(np.float32) for _ in range(2)]
    reference.set_weights(weights)
    layer.set_weights(weights)
    return reference, layer


@pytest.mark.parametrize("groups, channels", [(1, 4), (2, 8), (4, 4), (3, 12)])
def test_same_values_as_keras_group_normalization(groups, channels):
    reference, layer = _pair(groups, channels)
    # Shifted, scaled data: the statistics must be per group, not per channel or per image.
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(2, 6, 5, channels)) * rng.uniform(0.5, 4, channels) + rng.normal(size=channels) * 3)
    x = x.astype(np.float32)
    np.testing.assert_allclose(layer(x), reference(x), atol=2e-5, rtol=1e-5)


def test_mixed_precision_statistics_in_float32():
    _, layer = _pair(2, 8)
    x = np.random.default_rng(2).normal(size=(1, 6, 5, 8)).astype(np.float32) * 50 + 100
    expected = layer(x)
    half = GroupNormalization(2, dtype="mixed_float16")
    half.build((None, 6, 5, 8))
    half.set_weights(layer.get_weights())
    got = half(x)
    assert got.dtype == "float16"
    np.testing.assert_allclose(np.asarray(got, np.float32), expected, atol=2e-2)


def test_a_model_saved_with_keras_layer_loads_with_the_same_outputs(tmp_path):
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 5, 8))
    model = keras.Model(x, keras.layers.GroupNormalization(4, name="gn")(x))
    model.get_layer("gn").set_weights([np.linspace(0.5, 2, 8, dtype=np.float32), np.arange(8, dtype=np.float32)])
    y = keras.Input((6, 5, 8))
    ours = keras.Model(y, GroupNormalization(4, name="gn")(y))
    path = tmp_path / "gn.weights.h5"
    model.save_weights(path)
    ours.load_weights(path)
    data = np.random.default_rng(3).normal(size=(2, 6, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(ours(data), model(data), atol=2e-5, rtol=1e-5)


def test_tflite_graph_is_rank_4_with_means_over_height_and_width(tmp_path):
    # XNNPACK runs MEAN over H and W; a MEAN over other axes falls to TFLite's reference kernel
    # (about 4x slower on a 128 x 128 x 128 map), and a rank-5 broadcast writes a SUB the GPU
    # accelerator refuses.
    x = keras.Input((16, 16, 32), batch_size=1)
    content = tf.lite.TFLiteConverter.from_keras_model(keras.Model(x, GroupNormalization(8)(x))).convert()
    model = runtime.parse_model(content)
    graph = model.subgraphs[0]
    assert max(len(t.shape) for t in graph.tensors if t.shape is not None) <= 4
    big_means = []
    for op in graph.operators:
        if runtime.op_name(model, op) == "MEAN" and tuple(graph.tensors[op.inputs[0]].shape[1:3]) == (16, 16):
            big_means.append(sorted(int(a) for a in model.buffers[graph.tensors[op.inputs[1]].buffer].data.view(np.int32)))
    assert big_means == [[1, 2], [1, 2]]


@pytest.mark.parametrize("shape", [(2, 4, 8), (1, 2, 3, 4, 8)])
def test_rejects_inputs_that_are_not_rank_4(shape):
    with pytest.raises(ValueError, match=r"expected \[B, H, W, C\]"):
        GroupNormalization(2)(np.zeros(shape, np.float32))
