"""Tests for export.runtime: model checks, describe(), the Runner backends and crash isolation."""

import atexit
import contextlib
import functools
import io
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from export import runtime
from export.runtime import ModelFileError, Runner

requires_swiftshader = pytest.mark.skipif(
    not os.path.exists(runtime.SWIFTSHADER_ICD),
    reason=f"{runtime.SWIFTSHADER_ICD} is absent: the GPU accelerator needs Chromium's SwiftShader Vulkan driver "
    "(apt-get install chromium libvulkan1) on a machine without a GPU",
)


@functools.lru_cache(maxsize=None)
def tiny_models():
    """Small .tflite files, built once per test process (test_bench.py shares them).

    float:  U-Net 64x64x3 -> float32 logits [1, 64, 64, 3] (export.tflite.convert)
    int8:   the same network fully int8-quantized, uint8 input and output
    argmax: the same network ending in an in-graph class map, int32 [1, 64, 64]
    flex:   a graph that needs the select-TF op FlexCropAndResize
    """
    import keras
    import tensorflow as tf

    from export.tflite import convert
    from kseg.models import build_model

    folder = Path(tempfile.mkdtemp(prefix="kseg-runtime-models-"))
    atexit.register(shutil.rmtree, folder, True)
    keras.utils.set_random_seed(0)
    model = build_model("unet", num_classes=3, input_shape=(64, 64, 3), filters=8, depth=2)
    paths = {name: folder / f"unet_{name}.tflite" for name in ("float", "int8", "argmax")}
    paths["float"].write_bytes(convert(model))

    image = keras.Input(shape=(64, 64, 3), batch_size=1, name="image")
    argmax = keras.layers.Lambda(lambda t: tf.argmax(t, axis=-1, output_type=tf.int32), name="class_map")
    paths["argmax"].write_bytes(convert(keras.Model(image, argmax(model(image)))))

    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(image, model(image)))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: ([rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")] for _ in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # "statistics for quantized inputs were expected": uint8 I/O is meant
        paths["int8"].write_bytes(converter.convert())

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def crop(x):
        return tf.image.crop_and_resize(x, [[0.0, 0.0, 1.0, 1.0]], [0], [4, 4])

    converter = tf.lite.TFLiteConverter.from_concrete_functions([crop.get_concrete_function()], crop)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    paths["flex"] = folder / "needs_flex.tflite"
    with contextlib.redirect_stdout(io.StringIO()):
        paths["flex"].write_bytes(converter.convert())

    content = paths["float"].read_bytes()
    paths["text"] = folder / "notes.tflite"
    paths["text"].write_text("these are not the weights you are looking for\n")
    paths["truncated"] = folder / "truncated.tflite"
    paths["truncated"].write_bytes(content[: len(content) // 3])
    return {name: str(path) for name, path in paths.items()}, model


@pytest.fixture(scope="module")
def models():
    return tiny_models()[0]


def _image(shape, dtype="float32", seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(dtype)


def _reference(path, arrays):
    """Outputs of a plain ai_edge_litert Interpreter (what Runner must reproduce)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=2)
    interpreter.allocate_tensors()
    for d, a in zip(interpreter.get_input_details(), arrays):
        interpreter.set_tensor(d["index"], a)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


# ----------------------------------------------------------------------------- reading


def test_runtime_imports_no_tensorflow():
    import subprocess

    code = "import sys, export.runtime, export.bench; bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "name, problem",
    [
        ("missing", "no such file"),
        ("folder", "is a directory"),
        ("tiny", "too small"),
        ("text", "not a TFLite flatbuffer"),
        ("truncated", "truncated or corrupt"),
        ("flex", "FlexCropAndResize"),
    ],
)
def test_read_model_names_the_file_and_the_problem(models, tmp_path, name, problem):
    paths = {**models, "missing": str(tmp_path / "gone.tflite"), "folder": str(tmp_path)}
    if name == "tiny":
        paths["tiny"] = str(tmp_path / "tiny.tflite")
        Path(paths["tiny"]).write_bytes(b"\x1c\x00\x00\x00TFL3")
    with pytest.raises(ModelFileError) as info:
        runtime.read_model(paths[name])
    message = str(info.value)
    assert paths[name] in message and problem in message
    if name == "flex":
        assert "Flex" in message and "builtin" in message and "re-export" in message.lower()
    if name == "text":
        assert "b'TFL3'" in message


def test_runner_rejects_corrupt_bytes_without_crashing(models):
    content = bytearray(Path(models["float"]).read_bytes())
    content[8:40] = b"\xff" * 32  # the root table's vtable offsets now point nowhere
    with pytest.raises(ModelFileError, match="corrupt"):
        Runner(bytes(content))


# ----------------------------------------------------------------------------- describe


def test_describe_counts_ops_like_the_interpreter_and_flops_by_hand(models):
    import keras

    from export.tflite import op_counts

    content = runtime.read_model(models["float"])
    info = runtime.describe(content)
    assert info["ops"] == op_counts(content)
    assert info["size_bytes"] == len(content)
    assert info["inputs"][0]["shape"] == (1, 64, 64, 3) and info["inputs"][0]["dtype"] == "float32"
    assert info["outputs"][0]["shape"] == (1, 64, 64, 3)

    model = tiny_models()[1]
    expected = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            h, w, cin = layer.input.shape[1:]
            kh, kw = layer.kernel_size
            expected += 2 * h * w * cin * kh * kw * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            h, w, cout = layer.output.shape[1:]
            kh, kw = layer.kernel_size
            expected += 2 * h * w * cout * kh * kw * layer.input.shape[-1]
    assert info["flops"]["total"] == expected
    assert set(info["flops"]["by_op"]) == {"CONV_2D", "TRANSPOSE_CONV"}
    assert "MAX_POOL_2D" in info["flops"]["not_counted"]


def test_describe_reports_quantization(models):
    info = runtime.describe(runtime.read_model(models["int8"]))
    (inp,), (out,) = info["inputs"], info["outputs"]
    assert inp["dtype"] == "uint8" and inp["quantization"][0] > 0
    assert out["dtype"] == "uint8" and out["quantization"][0] > 0


# ----------------------------------------------------------------------------- running


@pytest.mark.parametrize("runtime_name", ["interpreter", "compiled"])
def test_runner_equals_the_interpreter_float(models, runtime_name):
    x = _image((1, 64, 64, 3))
    (expected,) = _reference(models["float"], [x])
    with Runner(models["float"], num_threads=2, runtime=runtime_name) as runner:
        assert runner.fully_accelerated if runtime_name == "interpreter" else True
        (actual,) = runner.run(x)
    assert actual.dtype == np.float32 and actual.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("runtime_name", ["interpreter", "compiled"])
def test_runner_equals_the_interpreter_quantized(models, runtime_name):
    with Runner(models["int8"], runtime=runtime_name) as runner:
        (inp,), (out,) = runner.inputs, runner.outputs
        x = runtime.quantize(_image((1, 64, 64, 3)), inp)
        assert x.dtype == np.uint8
        (actual,) = runner.run(x)
    (expected,) = _reference(models["int8"], [x])
    assert actual.dtype == np.uint8  # raw, not dequantized
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 1
    real = runtime.dequantize(actual, out)
    scale, zero = out["quantization"]
    np.testing.assert_allclose(real, (actual.astype(np.float32) - zero) * scale)


def test_quantize_rounds_and_clips():
    detail = {"dtype": "int8", "quantization": (0.5, -10)}
    q = runtime.quantize(np.array([0.0, 1.26, 1000.0, -1000.0]), detail)
    assert q.dtype == np.int8 and q.tolist() == [-10, -7, 127, -128]
    np.testing.assert_allclose(runtime.dequantize(q[:2], detail), [0.0, 1.5])
    assert runtime.quantize(np.array([1.5]), {"dtype": "float32", "quantization": (0.0, 0)}).dtype == np.float32


def test_runner_checks_inputs_before_running(models):
    with Runner(models["float"]) as runner:
        with pytest.raises(ValueError, match=r"input 0 .*got shape \[1, 32, 32, 3\] dtype float32; expected shape \[1, 64, 64, 3\] dtype float32"):
            runner.run(np.zeros((1, 32, 32, 3), np.float32))
        with pytest.raises(ValueError, match=r"input 0 .*dtype float64; expected .*dtype float32"):
            runner.run(np.zeros((1, 64, 64, 3)))
        with pytest.raises(ValueError, match="takes 1 input"):
            runner.run()


def test_in_graph_class_map_runs_on_both_cpu_runtimes(models):
    x = _image((1, 64, 64, 3))
    (expected,) = _reference(models["argmax"], [x])
    for name in ("interpreter", "compiled"):
        with Runner(models["argmax"], runtime=name) as runner:
            (mask,) = runner.run(x)
        assert mask.dtype == np.int32 and mask.shape == (1, 64, 64)
        np.testing.assert_array_equal(mask, expected)


def test_single_op_models_reproduce_every_intermediate(models):
    """The per-op profile's op isolation is faithful: each one-op model recomputes its outputs."""
    from ai_edge_litert.interpreter import Interpreter

    content = runtime.read_model(models["float"])
    parsed = runtime.parse_model(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    reference.allocate_tensors()
    reference.set_tensor(reference.get_input_details()[0]["index"], _image((1, 64, 64, 3)))
    reference.invoke()
    ops = parsed.subgraphs[0].operators
    assert len(ops) == runtime.describe(content)["num_ops"]
    for index, op in enumerate(ops):
        single, inputs = runtime.single_op_model(parsed, content, index)
        interpreter = Interpreter(model_content=single, num_threads=1)
        interpreter.allocate_tensors()
        for d, t in zip(interpreter.get_input_details(), inputs):
            interpreter.set_tensor(d["index"], reference.get_tensor(t))
        interpreter.invoke()
        for d, t in zip(interpreter.get_output_details(), op.outputs):
            expected = reference.get_tensor(t)
            np.testing.assert_allclose(interpreter.get_tensor(d["index"]), expected, rtol=0,
                                       atol=1e-5 * max(1.0, float(np.abs(expected).max())),
                                       err_msg=f"op {index} {runtime.op_name(parsed, op)}")


# ----------------------------------------------------------------------------- isolation and GPU


def _abort():
    os.abort()


def _fail(value):
    raise KeyError(value)


def _sleep():
    time.sleep(30)


def _square(x, offset=0):
    return x * x + offset


def test_in_subprocess_returns_results_and_reraises_exceptions():
    assert runtime.in_subprocess(_square, 3, offset=1) == 10
    with pytest.raises(KeyError, match="k"):
        runtime.in_subprocess(_fail, "k")


def test_in_subprocess_survives_a_crash_and_a_hang():
    with pytest.raises(RuntimeError) as info:
        runtime.in_subprocess(_abort)
    assert "_abort" in str(info.value) and signal.Signals.SIGABRT.name in str(info.value)
    with pytest.raises(RuntimeError, match="_sleep timed out after 0.5 s"):
        runtime.in_subprocess(_sleep, timeout=0.5)


def test_enable_gpu_emulation_sets_the_icd_only_when_unset(monkeypatch):
    monkeypatch.setenv("VK_ICD_FILENAMES", "/somewhere/else.json")
    assert runtime.enable_gpu_emulation()
    assert os.environ["VK_ICD_FILENAMES"] == "/somewhere/else.json"
    if os.path.exists(runtime.SWIFTSHADER_ICD):
        monkeypatch.delenv("VK_ICD_FILENAMES")
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        assert runtime.enable_gpu_emulation()
        assert os.environ["VK_ICD_FILENAMES"] == runtime.SWIFTSHADER_ICD and os.environ["XDG_RUNTIME_DIR"] == "/tmp"


@requires_swiftshader
def test_gpu_accelerator_runs_the_unet_fully_and_matches_cpu(models):
    x = _image((1, 64, 64, 3))
    result = runtime.in_subprocess(runtime.gpu_outputs, models["float"], [x], timeout=300)
    assert result["fully_accelerated"] is True
    (expected,) = _reference(models["float"], [x])
    (actual,) = result["outputs"]
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))
