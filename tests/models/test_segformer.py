import os

import keras
import numpy as np
import pytest

from kseg.layers import DropPath, EfficientSelfAttention, MixTransformerBlock
from kseg.models import SegFormer, build_model
from kseg.models.segformer import MIT_CONFIGS, mix_transformer
from tests import testing

SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json"
SIZE = 64


@pytest.fixture(scope="module")
def b0():
    keras.utils.set_random_seed(0)
    return SegFormer(num_classes=3, variant="b0", input_shape=(SIZE, SIZE, 3))


@pytest.fixture(scope="module")
def b0_tflite(b0):
    """(content, image, Keras output) of B0 converted with builtin ops only, batch 1."""
    image = testing.random_images((1, SIZE, SIZE, 3), seed=3)
    content = testing.check_tflite_parity(b0, image)
    return content, image, b0(image, training=False).numpy()


def test_stage_and_output_shapes(b0):
    assert [tuple(o.shape) for o in b0.encoder.outputs] == [
        (None, 16, 16, 32), (None, 8, 8, 64), (None, 4, 4, 160), (None, 2, 2, 256)]
    out = b0(testing.random_images((2, SIZE, SIZE, 3)))
    assert tuple(out.shape) == (2, SIZE, SIZE, 3) and out.dtype == "float32"
    assert build_model("segformer_b0", num_classes=3, input_shape=(SIZE, SIZE, 3)).count_params() == b0.count_params()


def _mit_parameters(widths, depths, in_channels=3, mlp_ratio=4):
    """MiT parameters written out from the paper's description (weights + biases + LN scales)."""
    total = 0
    for stage, (c, depth) in enumerate(zip(widths, depths)):
        k, r = (7, 8) if stage == 0 else (3, (8, 4, 2, 1)[stage])
        total += k * k * in_channels * c + c + 2 * c  # patch embedding conv + LayerNorm
        block = 2 * c + 4 * (c * c + c)  # norm1; q, k, v, proj
        if r > 1:
            block += r * r * c * c + c + 2 * c  # sequence reduction conv + LayerNorm
        hidden = mlp_ratio * c
        block += 2 * c + (c * hidden + hidden) + (9 * hidden + hidden) + (hidden * c + c)  # norm2, Mix-FFN
        total += depth * block + 2 * c  # blocks + the stage's closing LayerNorm
        in_channels = c
    return total


def _decoder_parameters(widths, channels, num_classes):
    """All-MLP decoder: 4 linears, fuse conv (no bias) + BN scale/shift, classifier."""
    linears = sum(w * channels + channels for w in widths)
    return linears + 4 * channels * channels + 2 * channels + channels * num_classes + num_classes


# Xie et al. 2021, Table 1 (ADE20K, 150 classes): (encoder, decoder, total) in millions.
PAPER = {"b0": (3.4, 0.4, 3.8), "b1": (13.1, 0.6, 13.7), "b2": (24.2, 3.3, 27.5)}


@pytest.mark.parametrize("variant", sorted(PAPER))
def test_parameter_counts_match_the_paper(variant):
    """Counted like PyTorch (trainable weights; BatchNorm's moving mean/variance are buffers).

    Decoder and total round to the paper's figures. The encoder alone does not for two of
    three: B0's is 3,319,392 (3.3M, paper 3.4M) and B1's 13,151,424 (13.2M, paper 13.1M),
    while the formula above, written from the paper's own hyperparameters, gives exactly these
    counts. The paper's encoder column equals its total minus its rounded decoder
    (3.753 - 0.4 = 3.35 -> 3.4; 13.716 - 0.6 = 13.12 -> 13.1; 27.46 - 3.3 = 24.16 -> 24.2),
    which is what is asserted for the encoder, next to the exact counts.
    """
    model = SegFormer(num_classes=150, variant=variant, input_shape=(64, 64, 3))
    count = lambda weights: sum(int(np.prod(w.shape)) for w in weights)
    encoder = count(model.encoder.trainable_weights)
    total = count(model.trainable_weights)
    decoder = total - encoder
    config = MIT_CONFIGS[variant]
    assert encoder == _mit_parameters(config["widths"], config["depths"])
    assert decoder == _decoder_parameters(config["widths"], config["decoder_channels"], 150)
    paper_encoder, paper_decoder, paper_total = PAPER[variant]
    assert round(decoder / 1e6, 1) == paper_decoder
    assert round(total / 1e6, 1) == paper_total
    assert round(total / 1e6 - paper_decoder, 1) == paper_encoder
    assert abs(encoder / 1e6 - paper_encoder) < 0.1  # rounding, never a missing or extra layer


def test_config_round_trip_fit_and_save_reload(tmp_path):
    keras.utils.set_random_seed(1)
    model = build_model("segformer_b0", num_classes=3, input_shape=(SIZE, SIZE, 3))
    images = testing.random_images((2, SIZE, SIZE, 3), seed=1)
    masks = testing.random_masks((2, SIZE, SIZE), 3, seed=2)
    testing.check_config_round_trip(model)
    testing.check_fit_one_step(model, images, masks)
    restored = testing.check_save_reload(model, images, tmp_path)
    assert isinstance(restored.get_layer("mit_b0").get_layer("stage1_block1"), MixTransformerBlock)


@pytest.mark.slow
def test_a_few_steps_lower_the_training_loss():
    # The loss fit reports is the training-mode loss before each step; evaluate() would use
    # BatchNorm's moving statistics, which a few steps have not settled yet.
    keras.utils.set_random_seed(2)
    model = SegFormer(num_classes=3, input_shape=(SIZE, SIZE, 3), drop_path_rate=0.0, dropout=0.0)
    # 8x8 blocks of random colour, labelled by their strongest channel: learnable at stride 4.
    blocks = testing.random_images((2, SIZE // 8, SIZE // 8, 3), seed=4)
    images = blocks.repeat(8, axis=1).repeat(8, axis=2)
    masks = images.argmax(-1).astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(3e-4), jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = model.fit(images, masks, epochs=4, verbose=0).history["loss"]
    assert losses[-1] < losses[0], losses


def test_drop_path_is_identity_at_inference_and_stochastic_in_training():
    x = np.ones((256, 2, 2, 3), "float32")
    layer = DropPath(0.5, seed=0)
    np.testing.assert_array_equal(layer(x, training=False), x)
    y = layer(x, training=True).numpy()
    per_example = y.reshape(256, -1)
    assert set(np.unique(per_example)) == {0.0, 2.0}  # whole examples dropped, the rest scaled by 1/keep
    assert (per_example == per_example[:, :1]).all()
    assert 0.35 < (per_example[:, 0] == 0).mean() < 0.65
    assert not np.array_equal(y, layer(x, training=True).numpy())

    block = MixTransformerBlock(channels=8, num_heads=2, reduction_ratio=2, drop_path_rate=0.5)
    z = testing.random_images((8, 4, 4, 8)) / 255.0
    np.testing.assert_array_equal(block(z, training=False), block(z, training=False))
    assert not np.array_equal(block(z, training=True), block(z, training=True))


def test_drop_path_rate_grows_linearly_over_the_blocks():
    encoder = mix_transformer((SIZE, SIZE, 3), "b0", drop_path_rate=0.1)
    rates = [l.drop_path_rate for l in encoder.layers if isinstance(l, MixTransformerBlock)]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.1, 8))
    reductions = [l.attention.reduction_ratio for l in encoder.layers if isinstance(l, MixTransformerBlock)]
    assert reductions == [8, 8, 4, 4, 2, 2, 1, 1]


def _layer_norm(x, gamma, beta, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _reference_attention(x, weights, num_heads, r):
    """Efficient self-attention in NumPy (float64) from the paper's equations."""
    _, h, w, c = x.shape
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = weights["query"], weights["key"], weights["value"], weights["proj"]
    kernel, bias, gamma, beta = weights["reduce"] + weights["reduce_norm"]
    # kernel = stride = r: each output token sees one r x r patch, flattened as (dy, dx, c).
    patches = x.reshape(1, h // r, r, w // r, r, c).transpose(0, 1, 3, 2, 4, 5).reshape(1, h // r, w // r, r * r * c)
    context = _layer_norm(patches @ kernel.reshape(r * r * c, c) + bias, gamma, beta).reshape(1, -1, c)
    tokens = x.reshape(1, h * w, c)
    q, k, v = tokens @ wq + bq, context @ wk + bk, context @ wv + bv
    d = c // num_heads
    heads = []
    for i in range(num_heads):
        s = q[..., i * d:(i + 1) * d] @ k[..., i * d:(i + 1) * d].transpose(0, 2, 1) / np.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        heads.append((p / p.sum(-1, keepdims=True)) @ v[..., i * d:(i + 1) * d])
    return (np.concatenate(heads, -1) @ wo + bo).reshape(1, h, w, c)


def test_sequence_reduction_attention_matches_numpy():
    rng = np.random.default_rng(0)
    layer = EfficientSelfAttention(channels=6, num_heads=2, reduction_ratio=2)
    x = rng.normal(size=(1, 4, 6, 6)).astype("float32")
    layer.build(x.shape)
    for v in layer.weights:  # LayerNorm's ones/zeros and zero biases would hide mistakes
        v.assign(rng.normal(size=v.shape).astype("float32"))
    weights = {n: [w.numpy().astype("float64") for w in getattr(layer, n).weights]
               for n in ("query", "key", "value", "proj", "reduce", "reduce_norm")}
    expected = _reference_attention(x.astype("float64"), weights, num_heads=2, r=2)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_tflite_has_builtin_delegate_friendly_ops_and_matches_keras(b0_tflite):
    """The fixture converted B0 and checked LiteRT's CPU output against Keras (1e-4 of the logit scale)."""
    from export import tflite

    ops = tflite.op_counts(b0_tflite[0])
    assert not any(op.startswith("Flex") for op in ops), ops
    assert ops.get("BATCH_MATMUL", 0) == 2 * 8 and ops.get("SOFTMAX", 0) == 8  # 8 B0 blocks
    assert "RESIZE_BILINEAR" in ops and "RESIZE_NEAREST_NEIGHBOR" not in ops
    assert "GELU" in ops


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(SWIFTSHADER_ICD),
    reason=f"{SWIFTSHADER_ICD} is absent: LiteRT's GPU accelerator needs Chromium's SwiftShader Vulkan "
    "driver (apt-get install chromium libvulkan1) on a machine without a GPU",
)
def test_gpu_accelerator_runs_segformer_fully_and_matches_keras(b0_tflite):
    from export import runtime

    content, image, expected = b0_tflite
    result = runtime.in_subprocess(runtime.gpu_outputs, content, [image], timeout=300)
    assert result["fully_accelerated"] is True
    (actual,) = result["outputs"]
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-3)


def _epsilons(model):
    """{layer group: set of epsilons} of a SegFormer."""
    found = {"block": set(), "stage": set(), "conv": set()}
    for layer in model.encoder.layers:
        if isinstance(layer, MixTransformerBlock):
            found["block"] |= {layer.norm1.epsilon, layer.norm2.epsilon}
            if layer.reduction_ratio > 1:
                found["conv"].add(layer.attention.reduce_norm.epsilon)
        elif layer.name.endswith("_patch_embed"):
            found["conv"].add(layer.norm.epsilon)
        elif layer.name.endswith("_norm"):
            found["stage"].add(layer.epsilon)
    return found


NEW_KEYS = ("normalization", "layer_norm_epsilon", "stage_norm_epsilon", "conv_norm_epsilon", "batch_norm_epsilon",
            "approximate_gelu", "widths", "depths")


def test_defaults_are_nvlabs_and_configs_saved_before_rebuild_as_they_were(b0):
    """New models: ImageNet normalization, LayerNorm 1e-6 (blocks, stage norms) / 1e-5 (after strided
    convs), BatchNorm 1e-5. A config without the keys these arguments added: what kseg built then."""
    assert isinstance(b0.get_layer("normalize"), keras.layers.Normalization)
    assert _epsilons(b0) == {"block": {1e-6}, "stage": {1e-6}, "conv": {1e-5}}
    assert b0.get_layer("decode_fuse_bn").epsilon == 1e-5
    old_config = {k: v for k, v in b0.get_config().items() if k not in NEW_KEYS}
    old = SegFormer.from_config(old_config)
    assert isinstance(old.get_layer("normalize"), keras.layers.Rescaling)
    assert _epsilons(old) == {"block": {1e-6}, "stage": {1e-6}, "conv": {1e-6}}
    assert old.get_layer("decode_fuse_bn").epsilon == 1e-3
    assert (old.normalization, old.batch_norm_epsilon, old.approximate_gelu) == ("symmetric", 1e-3, False)


def test_imagenet_normalization_is_the_checkpoints(b0):
    image = testing.random_images((1, SIZE, SIZE, 3), seed=6)
    normalized = keras.Model(b0.input, b0.get_layer("normalize").output)(image).numpy()
    expected = (image / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(normalized, expected, rtol=0, atol=1e-5)


def _strip_new_keys(path):
    """Rewrites a .keras file's config as kseg wrote it before the new SegFormer arguments existed."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    for key in NEW_KEYS:
        config["config"].pop(key)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def test_a_keras_file_saved_before_reloads_computing_as_before(tmp_path):
    """Checked by hand too: a B0 saved by the code before this change (git archive of its commit)
    reloads with identical outputs."""
    keras.utils.set_random_seed(3)
    model = SegFormer(num_classes=3, input_shape=(SIZE, SIZE, 3), normalization="symmetric", layer_norm_epsilon=1e-6,
                      conv_norm_epsilon=1e-6, batch_norm_epsilon=1e-3)
    bn = model.get_layer("decode_fuse_bn")
    bn.moving_variance.assign(np.linspace(1e-4, 1e-2, bn.moving_variance.shape[0]).astype("float32"))
    path = tmp_path / "old.keras"
    model.save(path)
    _strip_new_keys(path)
    restored = keras.models.load_model(path, safe_mode=True)
    assert {k: restored.get_config()[k] for k in NEW_KEYS[:5]} == {
        "normalization": "symmetric", "layer_norm_epsilon": 1e-6, "stage_norm_epsilon": None,
        "conv_norm_epsilon": 1e-6, "batch_norm_epsilon": 1e-3}
    images = testing.random_images((2, SIZE, SIZE, 3), seed=7)
    expected = model.predict(images, verbose=0)
    np.testing.assert_array_equal(restored.predict(images, verbose=0), expected)
    today = SegFormer(num_classes=3, input_shape=(SIZE, SIZE, 3))  # today's defaults compute otherwise
    today.set_weights(model.get_weights())
    assert np.abs(today.predict(images, verbose=0) - expected).max() > 1e-2 * np.abs(expected).max()


def test_custom_widths_and_depths_round_trip():
    model = SegFormer(num_classes=2, variant=None, widths=(8, 16, 20, 32), depths=(1, 2, 1, 1), decoder_channels=16,
                      input_shape=(SIZE, SIZE, 3), approximate_gelu=True)
    testing.check_config_round_trip(model)
    assert [tuple(o.shape) for o in model.encoder.outputs] == [
        (None, 16, 16, 8), (None, 8, 8, 16), (None, 4, 4, 20), (None, 2, 2, 32)]
    assert model.encoder.get_layer("stage2_block2").ffn.approximate_gelu is True


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`normalization` must be one of.*'bgr'"):
        SegFormer(num_classes=2, input_shape=(64, 64, 3), normalization="bgr")
    with pytest.raises(ValueError, match="`conv_norm_epsilon` must be a number in \\(0, 1\\); got 0"):
        SegFormer(num_classes=2, input_shape=(64, 64, 3), conv_norm_epsilon=0)
    with pytest.raises(ValueError, match="`variant=None` needs both `widths` and `depths`"):
        SegFormer(num_classes=2, variant=None, input_shape=(64, 64, 3), decoder_channels=8)
    with pytest.raises(ValueError, match="`widths` must be four positive ints divisible by the heads"):
        SegFormer(num_classes=2, variant=None, widths=(8, 16, 24, 32), depths=(1, 1, 1, 1), decoder_channels=8,
                  input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="needs `decoder_channels`"):
        SegFormer(num_classes=2, variant=None, widths=(8, 16, 20, 32), depths=(1, 1, 1, 1), input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="divisible by 32"):
        SegFormer(num_classes=2, input_shape=(100, 100, 3))
    with pytest.raises(ValueError, match="divisible by 32"):
        SegFormer(num_classes=2, input_shape=(None, None, 3))
    with pytest.raises(ValueError, match="variant"):
        SegFormer(num_classes=2, variant="b6", input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="num_heads"):
        EfficientSelfAttention(channels=10, num_heads=3)
    with pytest.raises(ValueError, match="rejected its arguments"):
        build_model("segformer_b0", num_classes=2, nonsense=1)


def test_docstring_examples_run():
    import doctest

    import kseg.layers.mix_transformer as layers_module
    import kseg.backbones.mix_transformer as mit_module
    import kseg.models.segformer.segformer as segformer_module

    for module in (layers_module, mit_module, segformer_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0
