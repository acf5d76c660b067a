"""MobileUNet's ReLU6 encoder ("inverted_residual", plain or fused, output stride 2 or 4).

The point of the option is an int8 export that XNNPACK runs entirely with integer kernels:
no HARD_SWISH (MobileNetV3's activation, which has no int8 kernel there) and no op left outside
the delegate. Saved models of the default configuration must load and behave as before.
"""

import numpy as np
import pytest

from kseg.models import MobileUNet, build_model
from tests.testing import (check_config_round_trip, check_fit_one_step, check_save_reload, check_tflite_parity,
                     random_images, random_masks)

FUSED = {"encoder": "inverted_residual", "fused_stages": 5, "expansion": 2, "output_stride": 4,
         "encoder_depths": (0, 2, 3, 3, 2), "encoder_filters": (16, 16, 24, 32, 64, 96),
         "decoder_filters": (64, 48, 24)}
PLAIN = {"encoder": "inverted_residual"}


def _model(kwargs, channels=3, size=64):
    return MobileUNet(num_classes=2, input_shape=(size, size, channels), **kwargs)


@pytest.mark.parametrize("kwargs", [PLAIN, FUSED], ids=["plain", "fused"])
def test_builds_round_trips_and_trains(kwargs, tmp_path):
    model = _model(kwargs)
    images = random_images((2, 64, 64, 3))
    assert tuple(model.output.shape) == (None, 64, 64, 2)
    check_config_round_trip(model)
    check_save_reload(model, images, tmp_path)
    check_fit_one_step(model, images, random_masks((2, 64, 64), 2))


def test_build_model_takes_the_encoder_options():
    model = build_model("mobile_unet", num_classes=2, input_shape=(64, 64, 1), **FUSED)
    config = model.get_config()
    assert (config["encoder"], config["fused_stages"], config["output_stride"]) == ("inverted_residual", 5, 4)
    # No depthwise conv in a fully fused encoder; the decoder keeps its separable blocks.
    names = [layer.name for layer in model.layers]
    assert any(n.endswith("_fused") for n in names)
    assert not any(n.startswith("enc") and n.endswith("_dw") for n in names)
    assert model.get_layer("logits_s4") is not None


def test_output_stride_4_has_no_layer_at_stride_2_but_the_stem():
    model = _model(FUSED, size=64)
    at_stride_2 = [layer.name for layer in model.layers if len(layer.output.shape) == 4 and layer.output.shape[1] == 32]
    assert at_stride_2 == ["stem_conv", "stem_bn", "stem_relu"]


def test_default_configuration_is_unchanged():
    """A config saved before the option existed (no new keys) builds today's default model."""
    model = MobileUNet(num_classes=2, input_shape=(64, 64, 3))
    config = model.get_config()
    assert (config["encoder"], config["output_stride"], config["fused_stages"]) == ("mobilenetv3_small", 2, 0)
    old = {k: v for k, v in config.items() if k not in ("encoder_depths", "expansion", "fused_stages", "output_stride")}
    clone = MobileUNet.from_config(old)
    assert clone.get_config() == config
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert clone.get_layer("logits_s2") is not None


@pytest.mark.parametrize("kwargs, message", [
    ({"output_stride": 3}, "output_stride"),
    ({"output_stride": 4}, "decoder_filters` needs 3 values"),
    ({"encoder_depths": (1, 0, 3, 3, 2)}, "encoder_depths"),
    ({"encoder_depths": (1, 2, 3)}, "encoder_depths"),
    ({"expansion": 0}, "expansion"),
    ({"fused_stages": 6}, "fused_stages"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model({"encoder": "inverted_residual", **kwargs})


@pytest.mark.parametrize("kwargs", [PLAIN, FUSED], ids=["plain", "fused"])
def test_fp32_tflite_parity(kwargs):
    model = _model(kwargs)
    check_tflite_parity(model, random_images((1, 64, 64, 3), seed=1))


def _int8(model, seed=0):
    from export import tflite

    fixed = tflite.device_model(model, input_type="uint8")
    samples = [random_images((1, 64, 64, 3), seed=seed + i).astype(np.uint8) for i in range(8)]
    return tflite.convert_variant(fixed, "int8", representative=samples), samples


def test_int8_has_no_hard_swish_and_runs_in_one_delegate():
    from ai_edge_litert.interpreter import Interpreter

    from export import tflite

    content, _ = _int8(_model(FUSED))
    ops = tflite.op_counts(content)
    assert "HARD_SWISH" not in ops and "MEAN" not in ops
    interpreter = Interpreter(model_content=content, num_threads=2)
    interpreter.allocate_tensors()
    runtime_ops = [op["op_name"] for op in interpreter._get_ops_details()]
    # XNNPACK takes every op but the uint8<->int8 (de)quantization at the graph edges.
    assert runtime_ops.count("DELEGATE") == 1
    # The MobileNetV3 encoder, by contrast, keeps its hard-swish ops (what the option avoids).
    old, _ = _int8(_model({"encoder": "mobilenetv3_small"}))
    assert tflite.op_counts(old).get("HARD_SWISH", 0) > 0


def test_int8_keeps_parity_with_keras():
    """int8 logits stay within a few output quanta of Keras' on its calibration images."""
    from ai_edge_litert.interpreter import Interpreter

    model = _model(FUSED)
    content, samples = _int8(model)
    interpreter = Interpreter(model_content=content, num_threads=2)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = out["quantization"]
    for x in samples[:4]:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        got = (interpreter.get_tensor(out["index"]).astype(np.float32) - zero) * scale
        want = model(x.astype(np.float32), training=False).numpy()
        error = np.abs(got - want)
        # Measured: mean about 1 quantum, max about 6 (rounding through 20 int8 layers).
        assert error.mean() <= 1.5 * scale, (error.mean(), scale)
        assert error.max() <= 9 * scale, (error.max(), scale)
