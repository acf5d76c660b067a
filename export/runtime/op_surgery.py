"""New `.tflite` models cut from or built beside a parsed one: one operator alone, or no operator.

The per-op profile (export.measure) and the GPU op check (export.delegation) time or compile
each operator of a model on its own; the empty model measures LiteRT's invoke overhead.
"""

import copy

import numpy as np

from export.runtime.model_file import op_name, schema

_SUBGRAPH_OPS = {"WHILE", "IF", "CALL_ONCE"}  # their operands name other subgraphs


def _buffer_data(model, content, index):
    b = model.buffers[index]
    if b.offset and b.offset > 1:  # large models keep weights after the flatbuffer
        return np.frombuffer(bytes(content[b.offset : b.offset + b.size]), dtype=np.uint8)
    return None if b.data is None or len(b.data) == 0 else np.asarray(b.data, dtype=np.uint8)


def single_op_model(model, content, op_index, constants=None):
    """The operator `op_index` of the main subgraph alone, as a runnable `.tflite` model.

    The new model keeps that operator, its tensors and the constant buffers it reads;
    its other inputs become graph inputs and its outputs graph outputs.

    Args:
        model: `parse_model(content)`.
        content: the model's bytes (for weights stored after the flatbuffer).
        op_index: index into the main subgraph's operators.
        constants: optional {tensor index: array}, values stored as constants for tensors the
            model computes (e.g. `dequantized_constants`), in the tensor's own dtype and shape.

    Returns:
        (bytes, input tensor indices in the original model, in graph-input order).

    Raises:
        ValueError: the operator calls other subgraphs or reads variables.
    """
    import flatbuffers

    s = schema()
    sg = model.subgraphs[0]
    op = sg.operators[op_index]
    name = op_name(model, op)
    if name in _SUBGRAPH_OPS or name.startswith("STABLEHLO_"):
        raise ValueError(f"{name} calls other subgraphs; it cannot run alone")
    used = list(dict.fromkeys(int(t) for t in list(op.inputs) + list(op.outputs) + list(op.intermediates or []) if t >= 0))
    remap = {t: i for i, t in enumerate(used)}
    buffers, tensors, graph_inputs = [s.BufferT()], [], []
    for t in used:
        tensor = copy.copy(sg.tensors[t])
        if tensor.isVariable or tensor.type == s.TensorType.RESOURCE:
            raise ValueError(f"{name} reads a variable tensor; it cannot run alone")
        data = _buffer_data(model, content, tensor.buffer)
        if constants and t in constants:
            data = np.frombuffer(np.ascontiguousarray(constants[t]).tobytes(), dtype=np.uint8)
        buffer = s.BufferT()
        if data is not None:
            buffer.data = data
        buffers.append(buffer)
        tensor.buffer = len(buffers) - 1
        tensors.append(tensor)
        if data is None and t in list(op.inputs):
            graph_inputs.append(t)
    single = copy.copy(op)
    single.opcodeIndex = 0
    single.inputs = [remap[t] if t >= 0 else -1 for t in op.inputs]
    single.outputs = [remap[t] for t in op.outputs]
    single.intermediates = [remap[t] for t in op.intermediates or []]
    single.mutatingVariableInputs = None
    single.debugMetadataIndex = -1
    subgraph = s.SubGraphT()
    subgraph.tensors = tensors
    subgraph.inputs = [remap[t] for t in graph_inputs]
    subgraph.outputs = [remap[t] for t in op.outputs]
    subgraph.operators = [single]
    subgraph.name = f"op{op_index}"
    out = s.ModelT()
    out.version = model.version
    out.operatorCodes = [copy.copy(model.operatorCodes[op.opcodeIndex])]
    out.subgraphs = [subgraph]
    out.buffers = buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(out.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), graph_inputs


def dequantized_constants(model, content):
    """The float32 values of the main subgraph's DEQUANTIZE ops that read float16 constants.

    An fp16 `.tflite` stores weights as float16 behind DEQUANTIZE ops; LiteRT's GPU
    accelerator folds them into the ops that read them, so an op cut out alone should see them
    as the float32 constants they are, not as graph inputs.

    Args:
        model: `parse_model(content)`.
        content: the model's bytes.

    Returns:
        {output tensor index: float32 array of the tensor's shape}.
    """
    s = schema()
    sg = model.subgraphs[0]
    values = {}
    for op in sg.operators or []:
        if op_name(model, op) != "DEQUANTIZE":
            continue
        source = sg.tensors[op.inputs[0]]
        data = _buffer_data(model, content, source.buffer)
        if data is None or source.type != s.TensorType.FLOAT16:
            continue
        shape = [int(d) for d in (source.shape if source.shape is not None else [])]
        values[int(op.outputs[0])] = data.view(np.float16).astype(np.float32).reshape(shape)
    return values


def empty_model(detail):
    """A model with no operators whose output is its input: measures invoke overhead.

    Args:
        detail: the input's tensor detail; only "shape" and "dtype" are read.

    Returns:
        The `.tflite` model's bytes.
    """
    import flatbuffers

    s = schema()
    tensor = s.TensorT()
    tensor.shape = list(detail["shape"])
    tensor.type = getattr(s.TensorType, detail["dtype"].upper())
    tensor.buffer = 0
    tensor.name = "x"
    subgraph = s.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs, subgraph.operators = [tensor], [0], [0], []
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [], [subgraph], [s.BufferT()]
    builder = flatbuffers.Builder(256)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
