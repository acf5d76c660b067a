"""New `.tflite` models cut from or built beside a parsed one: a run of operators, one operator
alone, or no operator.

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
    s = schema()
    sg = model.subgraphs[0]
    op = sg.operators[op_index]
    name = op_name(model, op)
    if name in _SUBGRAPH_OPS or name.startswith("STABLEHLO_"):
        raise ValueError(f"{name} calls other subgraphs; it cannot run alone")
    for t in (int(t) for t in [*op.inputs, *op.outputs, *(op.intermediates or [])] if t >= 0):
        if sg.tensors[t].isVariable or sg.tensors[t].type == s.TensorType.RESOURCE:
            raise ValueError(f"{name} reads a variable tensor; it cannot run alone")
    graph_inputs = list(dict.fromkeys(
        int(t) for t in op.inputs
        if t >= 0 and not is_constant(model, content, int(t)) and not (constants and int(t) in constants)))
    outputs = [int(t) for t in op.outputs]
    return sub_model(model, content, [op_index], graph_inputs, outputs, f"op{op_index}", constants), graph_inputs


def sub_model(model, content, indices, inputs, outputs, name, constants=None):
    """Operators `indices` of the main subgraph as a model with the given graph inputs/outputs.

    Args:
        model, content: the parsed model and its bytes.
        indices: op indices, in execution order.
        inputs, outputs: original tensor indices for the new model's graph inputs and outputs.
        name: the new main subgraph's name.
        constants: optional {tensor index: array} stored as constants for tensors the model
            computes (`single_op_model`).

    Returns:
        The new model's `.tflite` bytes. If an operator calls other subgraphs (IF, WHILE), they
        are all carried along at the same subgraph indices.
    """
    import flatbuffers

    s = schema()
    sg = model.subgraphs[0]
    chosen = [sg.operators[i] for i in indices]
    used = list(dict.fromkeys(int(t) for op in chosen
                              for t in [*op.inputs, *op.outputs, *(op.intermediates or [])] if t >= 0))
    used += [t for t in inputs + outputs if t not in used]
    remap = {t: i for i, t in enumerate(used)}
    buffers = [s.BufferT()]

    def copy_tensor(tensor, keep_data, index=None):
        tensor = copy.copy(tensor)
        data = _buffer_data(model, content, tensor.buffer) if keep_data else None
        if constants and index in constants:
            data = np.frombuffer(np.ascontiguousarray(constants[index]).tobytes(), dtype=np.uint8)
        buffer = s.BufferT()
        if data is not None:
            buffer.data = data
        buffers.append(buffer)
        tensor.buffer = len(buffers) - 1
        return tensor

    tensors = [copy_tensor(sg.tensors[t], keep_data=t not in inputs, index=t) for t in used]
    codes, code_index = [], {}

    def code(op):
        if op.opcodeIndex not in code_index:
            code_index[op.opcodeIndex] = len(codes)
            codes.append(copy.copy(model.operatorCodes[op.opcodeIndex]))
        return code_index[op.opcodeIndex]

    operators, calls = [], False
    for op in chosen:
        calls = calls or op_name(model, op) in _SUBGRAPH_OPS
        op = copy.copy(op)
        op.opcodeIndex = code(op)
        op.inputs = [remap[int(t)] if t >= 0 else -1 for t in op.inputs]
        op.outputs = [remap[int(t)] for t in op.outputs]
        op.intermediates = [remap[int(t)] for t in op.intermediates or []]
        op.mutatingVariableInputs = None
        op.debugMetadataIndex = -1
        operators.append(op)
    subgraph = s.SubGraphT()
    subgraph.tensors, subgraph.operators, subgraph.name = tensors, operators, name
    subgraph.inputs = [remap[t] for t in inputs]
    subgraph.outputs = [remap[t] for t in outputs]
    subgraphs = [subgraph]
    if calls:  # the called subgraphs keep their indices; their ops' codes are remapped
        for other in model.subgraphs[1:]:
            other = copy.copy(other)
            other.tensors = [copy_tensor(t, keep_data=True) for t in other.tensors or []]
            other_ops = []
            for op in other.operators or []:
                op = copy.copy(op)
                op.opcodeIndex = code(op)
                op.debugMetadataIndex = -1
                other_ops.append(op)
            other.operators = other_ops
            subgraphs.append(other)
    out = s.ModelT()
    out.version, out.operatorCodes, out.subgraphs, out.buffers = model.version, codes, subgraphs, buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(out.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def is_constant(model, content, tensor):
    """Whether tensor `tensor` of the main subgraph holds data in the file (weights, tables)."""
    return _buffer_data(model, content, model.subgraphs[0].tensors[tensor].buffer) is not None


def folded_dequantize_ops(model, content):
    """Indices of the main subgraph's DEQUANTIZE ops that read float16 constants (fp16 weights).

    An fp16 `.tflite` stores weights as float16 behind DEQUANTIZE ops; LiteRT's GPU accelerator
    folds each into the ops that read its output.
    """
    s = schema()
    sg = model.subgraphs[0]
    return {i for i, op in enumerate(sg.operators or [])
            if op_name(model, op) == "DEQUANTIZE" and sg.tensors[op.inputs[0]].type == s.TensorType.FLOAT16
            and is_constant(model, content, op.inputs[0])}


def dequantized_constants(model, content):
    """The float32 values of the `folded_dequantize_ops`: an op cut out alone should see them as
    the constants they are, not as graph inputs.

    Args:
        model: `parse_model(content)`.
        content: the model's bytes.

    Returns:
        {output tensor index: float32 array of the tensor's shape}.
    """
    sg = model.subgraphs[0]
    values = {}
    for i in folded_dequantize_ops(model, content):
        op = sg.operators[i]
        source = sg.tensors[op.inputs[0]]
        shape = [int(d) for d in (source.shape if source.shape is not None else [])]
        data = _buffer_data(model, content, source.buffer)
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
