"""Which operators of a `.tflite` LiteRT's GPU accelerator takes, measured op by op.

The TFLite analyzer's GPU check is a static list: for Mask R-CNN it calls the graph
"compatible" while LiteRT's GPU accelerator does not run it fully. Here every operator of the
main subgraph is compiled alone (`runtime.single_op_model`) for the GPU accelerator; one that
compiles fully accelerated is an operator the delegate takes. Operators with the same type and
tensor shapes/dtypes are compiled once. In an fp16 file the DEQUANTIZE ops of float16 weights
are folded: the accelerator takes them with the op that reads them, so that op is compiled with
the float32 values as constants (alone, it would read them as inputs, which it refuses for the
weights of a convolution). Like export.runtime, no TensorFlow is imported.
"""

from export import runtime

# An fp16 file's DEQUANTIZE of float16 weights: the accelerator folds it into the op reading them.
FOLDED = "float16 weights, folded into the ops that read them"


def _signature(model, content, op, folded):
    """What decides a verdict: op type, and each tensor's shape, dtype and whether it is constant."""
    sg = model.subgraphs[0]

    def tensors(indices):
        return tuple((tuple(sg.tensors[t].shape if sg.tensors[t].shape is not None else ()), int(sg.tensors[t].type),
                      t in folded or runtime.is_constant(model, content, t)) for t in indices if t >= 0)

    return runtime.op_name(model, op), tensors(op.inputs), tensors(op.outputs)


def gpu_op_support(model):
    """Per operator: does LiteRT's GPU accelerator take it? Meant for `runtime.in_subprocess`
    (a GPU runtime crash must not take the caller down).

    Args:
        model: path or bytes of a `.tflite`.

    Returns:
        list of {"index", "op", "gpu": True / False / None (could not be tried), "reason"}, in
        operator order; a folded DEQUANTIZE of float16 weights has gpu True and reason FOLDED.
    """
    runtime.enable_gpu_emulation()
    content = runtime.read_model(model) if not isinstance(model, (bytes, bytearray)) else bytes(model)
    parsed = runtime.parse_model(content)
    folded = runtime.dequantized_constants(parsed, content)
    verdicts, results = {}, []
    for index, op in enumerate(parsed.subgraphs[0].operators or []):
        if op.outputs is not None and len(op.outputs) and int(op.outputs[0]) in folded:
            results.append({"index": index, "op": runtime.op_name(parsed, op), "gpu": True, "reason": FOLDED})
            continue
        key = _signature(parsed, content, op, folded)
        if key not in verdicts:
            try:
                single, _ = runtime.single_op_model(parsed, content, index, constants=folded)
                with runtime.Runner(single, accelerator="gpu") as runner:
                    verdicts[key] = (bool(runner.fully_accelerated), None)
            except Exception as e:  # an op the GPU path refuses outright, or one that cannot stand alone
                verdicts[key] = (None if isinstance(e, ValueError) else False, f"{type(e).__name__}: {e}"[:200])
        gpu, reason = verdicts[key]
        results.append({"index": index, "op": key[0], "gpu": gpu, "reason": reason})
    return results


def gpu_summary(support):
    """Ops taken and CPU<->GPU crossings of one inference, from `gpu_op_support`'s verdicts.

    A crossing is a change of device between two operators next to each other in execution
    order (an op the GPU does not take, or that could not be tried, runs on the CPU); the
    input's upload and the outputs' download are not counted.

    Args:
        support: `gpu_op_support`'s list, in operator order.

    Returns:
        {"ops", "gpu_ops", "crossings", "cpu_op_types": {op name: count}}.
    """
    on_gpu = [r["gpu"] is True for r in support]
    cpu_types = {}
    for r in support:
        if r["gpu"] is not True:
            cpu_types[r["op"]] = cpu_types.get(r["op"], 0) + 1
    return {"ops": len(on_gpu), "gpu_ops": sum(on_gpu),
            "crossings": sum(a != b for a, b in zip(on_gpu, on_gpu[1:])),
            "cpu_op_types": dict(sorted(cpu_types.items(), key=lambda kv: -kv[1]))}
