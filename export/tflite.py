"""Keras model -> TFLite flatbuffer with static shapes and builtin ops only.

The exported graph takes one image [1, H, W, C] float32 (raw pixels in [0, 255]) and
returns the model's output at batch 1. Static shapes are required by the GPU delegate;
builtin ops are required by ai-edge-litert's interpreter and by phones without the large
select-TF-ops library, so a graph that would need Flex ops fails here, naming them.
"""

import contextlib
import io
import re

import keras
import numpy as np
import tensorflow as tf


class FlexOpsError(RuntimeError):
    """The model needs TensorFlow (Flex / select-TF) ops that TFLite builtins lack."""

    def __init__(self, ops, detail):
        self.ops = sorted(set(ops))
        super().__init__(
            f"conversion needs non-builtin TensorFlow ops {self.ops or '(unnamed)'}; "
            "expected builtin TFLite ops only. Rewrite those ops with builtins, or allow Flex "
            f"explicitly (allow_flex=True). Converter said: {detail}"
        )


def static_input_shape(model, image_size=None):
    """[1, H, W, C] for `model`, with `image_size` (H, W) filling or replacing H and W."""
    shape = list(model.input.shape)
    if len(shape) != 4:
        raise ValueError(f"expected a model with one image input [B, H, W, C]; got input shape {shape}.")
    if image_size is not None:
        shape[1], shape[2] = int(image_size[0]), int(image_size[1])
    if shape[1] is None or shape[2] is None or shape[3] is None:
        raise ValueError(f"the model's input {shape} has dynamic dimensions; pass image_size=(H, W).")
    return [1] + shape[1:]


def convert(model, image_size=None, allow_flex=False, optimizations=None, supported_types=None):
    """Converts `model` to a TFLite flatbuffer at batch 1 and a fixed size.

    Args:
        model: a Keras model with one image input.
        image_size: (H, W) for models built with dynamic H, W.
        allow_flex: also allow select-TF (Flex) ops.
        optimizations: passed to the converter (e.g. [tf.lite.Optimize.DEFAULT]).
        supported_types: passed to target_spec.supported_types (e.g. [tf.float16]).

    Returns:
        The `.tflite` file content (bytes).

    Raises:
        FlexOpsError: the graph needs ops outside the TFLite builtins and allow_flex is False.
    """
    shape = static_input_shape(model, image_size)
    # A batch-1 Input in front of the model fixes every shape in the traced graph, which
    # also removes the SHAPE/PACK ops that a dynamic batch adds around transposed convs.
    image = keras.Input(shape=shape[1:], batch_size=1, dtype=model.input.dtype, name="image")
    fixed = keras.Model(image, model(image, training=False), name=model.name)
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if allow_flex:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    if optimizations:
        converter.optimizations = list(optimizations)
    if supported_types:
        converter.target_spec.supported_types = list(supported_types)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its SavedModel's captures
            return converter.convert()
    except Exception as e:  # the converter raises ConverterError, whose module moves between releases
        message = str(e)
        flex = re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)
        if flex or "flex" in message.lower():
            raise FlexOpsError(flex, message.splitlines()[0] if message else "") from e
        raise


def op_counts(tflite_model):
    """{op name: count} of a `.tflite` flatbuffer (bytes), e.g. {"CONV_2D": 23, ...}."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_model)
    counts = {}
    for op in interpreter._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts


def run(tflite_model, image, num_threads=2):
    """Runs a single-input `.tflite` model on `image` [1, H, W, C]; returns its first output."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_model, num_threads=num_threads)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    interpreter.set_tensor(inp["index"], np.asarray(image, dtype=inp["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
