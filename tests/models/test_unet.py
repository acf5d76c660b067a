import keras
import numpy as np
import pytest

from kseg.models import MobileUNet, UNet, build_model, valid_output_size
from tests import testing

VARIANTS = testing.UNET_VARIANTS
small_model = testing.small_unet


def test_classic_unet_parameter_count_matches_the_paper():
    # Ronneberger et al. 2015: 64 base filters, depth 4, 1 input channel, 2 classes.
    assert UNet(num_classes=2, input_shape=(None, None, 1)).count_params() == 31_030_658
    assert UNet(num_classes=2, input_shape=(None, None, 3)).count_params() == 31_031_810


def test_valid_padding_reproduces_the_paper_sizes():
    model = UNet(num_classes=2, input_shape=(572, 572, 1), padding="valid")
    assert tuple(model.output.shape) == (None, 388, 388, 2)
    assert model.count_params() == 31_030_658
    assert valid_output_size(572) == 388
    with pytest.raises(ValueError, match="573"):
        valid_output_size(573)


def test_classic_unet_layer_structure():
    model = UNet(num_classes=2, input_shape=(None, None, 1))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("MaxPooling2D") == 4
    assert kinds.count("Conv2DTranspose") == 4
    assert kinds.count("Concatenate") == 4
    assert kinds.count("Conv2D") == 2 * 9 + 1
    assert all(l.kernel_size == (2, 2) and l.strides == (2, 2) for l in model.layers if isinstance(l, keras.layers.Conv2DTranspose))
    assert model.get_layer("logits").kernel_size == (1, 1)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_output_shape_and_channels(variant):
    for channels in (1, 3):
        model = small_model(variant, channels=channels)
        out = model(testing.random_images((2, 64, 64, channels)))
        assert tuple(out.shape) == (2, 64, 64, 3)
        assert out.dtype == "float32"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_config_save_reload_fit(variant, tmp_path):
    model = small_model(variant)
    images = testing.random_images((2, 64, 64, 1), seed=1)
    masks = testing.random_masks((2, 64, 64), 3, seed=2)
    testing.check_config_round_trip(model)
    testing.check_fit_one_step(model, images, masks)
    testing.check_save_reload(model, images, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_converts_to_builtin_tflite_with_parity(variant):
    model = small_model(variant)
    image = testing.random_images((1, 64, 64, 1), seed=3)
    content = testing.check_tflite_parity(model, image, image_size=(64, 64))
    from export import tflite

    ops = tflite.op_counts(content)
    assert "FlexDelegate" not in ops and not any(op.startswith("Flex") for op in ops)
    if variant == "attention_unet":
        assert ops.get("LOGISTIC", 0) == 3  # one gate per skip connection (depth 3)


def test_attention_gates_change_the_skip_features():
    model = small_model("attention_unet")
    gates = [layer for layer in model.layers if layer.name.startswith("att") and layer.name.endswith("_gate")]
    assert len(gates) == 3
    probe = keras.Model(model.input, [model.get_layer("att0_alpha").output])
    alpha = probe(testing.random_images((1, 64, 64, 1))).numpy()
    assert alpha.shape == (1, 64, 64, 1)
    assert np.all((alpha > 0) & (alpha < 1))


def test_mobile_unet_uses_the_mobilenetv3_encoder():
    model = small_model("mobile_unet-mnv3small", channels=1)
    encoder = model.get_layer("mobilenetv3_small_encoder")
    assert [tuple(o.shape[1:3]) for o in encoder.outputs] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert model.count_params() < 1_500_000  # a phone-sized model


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="upsampling"):
        UNet(num_classes=2, upsampling="nearest")
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 16"):
        UNet(num_classes=2, input_shape=(100, 100, 1))
    with pytest.raises(ValueError, match="num_classes"):
        UNet(num_classes=0)
    with pytest.raises(ValueError, match="divisible by 32"):
        MobileUNet(num_classes=2, input_shape=(100, 100, 3))
    with pytest.raises(ValueError, match="unknown model 'vnet'"):
        build_model("vnet", num_classes=2)
    with pytest.raises(ValueError, match="rejected its arguments"):
        build_model("unet", num_classes=2, nonsense=1)


def test_docstring_examples_run():
    import doctest

    import kseg.models.unet.mobile_unet as mobile_module
    import kseg.models.unet.unet as unet_module

    for module in (unet_module, mobile_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


def test_mixed_precision_survives_save_and_reload(tmp_path):
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = small_model("unet-transpose")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for round_trip in range(2):  # the reloaded model must save its policy again
        path = tmp_path / f"m{round_trip}.keras"
        model.save(path)
        model = keras.models.load_model(path)
        assert model.get_config()["dtype"] == "mixed_float16"
        assert model.get_layer("enc0_1_conv").compute_dtype == "float16"
        assert model.get_layer("logits").compute_dtype == "float32"
