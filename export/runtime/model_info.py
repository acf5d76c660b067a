"""What a `.tflite` model holds and costs without running it: tensors, ops, FLOPs, metadata."""

from collections import Counter

import numpy as np

from export.runtime.model_file import ModelFileError, op_name, parse_model, tensor_detail

_FLOP_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL")


def _op_macs(name, op, sg):
    """Multiply-accumulates of one conv/matmul op from its tensor shapes, or None."""
    shape = lambda i: [int(d) for d in sg.tensors[i].shape]
    if name == "CONV_2D":  # filter [Co, Kh, Kw, Ci], output [N, Ho, Wo, Co]
        _, kh, kw, ci = shape(op.inputs[1])
        return int(np.prod(shape(op.outputs[0]))) * kh * kw * ci
    if name == "DEPTHWISE_CONV_2D":  # filter [1, Kh, Kw, Co]
        _, kh, kw, _ = shape(op.inputs[1])
        return int(np.prod(shape(op.outputs[0]))) * kh * kw
    if name == "TRANSPOSE_CONV":  # inputs (output_shape, filter [Co, Kh, Kw, Ci], input [N, H, W, Ci])
        co, kh, kw, _ = shape(op.inputs[1])
        return int(np.prod(shape(op.inputs[2]))) * kh * kw * co
    if name == "FULLY_CONNECTED":  # weights [O, I], output [..., O]
        return int(np.prod(shape(op.outputs[0]))) * shape(op.inputs[1])[-1]
    if name == "BATCH_MATMUL":  # A [..., M, K] (or [..., K, M] with adj_x), output [..., M, N]
        a = shape(op.inputs[0])
        adj_x = bool(getattr(op.builtinOptions, "adjX", False))
        return int(np.prod(shape(op.outputs[0]))) * (a[-2] if adj_x else a[-1])
    return None


def describe(content, name=None):
    """What a `.tflite` model holds and costs, without running it.

    Args:
        content: the `.tflite` file content (bytes), e.g. from `read_model`.
        name: the file's name for error messages, or None.

    Returns:
        dict with `size_bytes`; `inputs`, `outputs` (tensor details, see export.runtime);
        `ops` {op name: count} over all subgraphs; `num_ops`; `subgraphs`; `signatures` (their
        count) and `signature_outputs` {output name: tensor index} of the first one ({} if none);
        `flops` {"total", "by_op", "counted", "not_counted", "note"}: 2 x MACs of CONV_2D,
        DEPTHWISE_CONV_2D, TRANSPOSE_CONV, FULLY_CONNECTED and BATCH_MATMUL from tensor
        shapes; and `metadata` (export.metadata.read_metadata's dict, or None).

    Raises:
        ModelFileError: the model does not parse.
    """
    try:
        model = parse_model(content)
        sg = model.subgraphs[0]
        ops = Counter(op_name(model, op) for g in model.subgraphs for op in g.operators or [])
        by_op = Counter()
        for g in model.subgraphs:
            for op in g.operators or []:
                macs = _op_macs(op_name(model, op), op, g)
                if macs is not None:
                    by_op[op_name(model, op)] += 2 * macs
        inputs = [tensor_detail(sg, i) for i in sg.inputs]
        outputs = [tensor_detail(sg, i) for i in sg.outputs]
        signatures = model.signatureDefs or []
        named = signature_outputs(model)
    except Exception as e:
        where = f"{name}: " if name else ""
        raise ModelFileError(f"{where}cannot describe the model ({len(content)} bytes): {e!r}") from e
    return {
        "size_bytes": len(content),
        "inputs": inputs,
        "outputs": outputs,
        "ops": dict(ops.most_common()),
        "num_ops": sum(ops.values()),
        "subgraphs": len(model.subgraphs),
        "signatures": len(signatures),
        "signature_outputs": named,
        "flops": {
            "total": int(sum(by_op.values())),
            "by_op": dict(by_op.most_common()),
            "counted": list(_FLOP_OPS),
            "not_counted": sorted(set(ops) - set(_FLOP_OPS)),
            "note": "2 x multiply-accumulates of conv and matmul ops from tensor shapes; bias adds, fused "
            "activations, elementwise ops, pooling, resizing, softmax and data movement are not counted",
        },
        "metadata": read_metadata(content),
    }


def signature_outputs(model):
    """{output name: tensor index} of a parsed model's first signature, {} when it has none."""
    signatures = model.signatureDefs or []
    if not signatures:
        return {}
    return {t.name.decode() if isinstance(t.name, bytes) else t.name: int(t.tensorIndex)
            for t in signatures[0].outputs or []}


def read_metadata(content):
    """Labels and input normalization from export.metadata, or None when absent or unreadable.

    Args:
        content: the `.tflite` file content (bytes).

    Returns:
        export.metadata.read_metadata's dict, or None.
    """
    try:
        from export.metadata import read_metadata as read
    except ImportError:
        return None
    try:
        return read(bytes(content))
    except Exception:  # a foreign model's metadata must not stop a benchmark
        return None
