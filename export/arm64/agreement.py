"""Does an ARM run of a `.tflite` model give the x86 run's outputs? Per-variant rules.

The same LiteRT kernels compiled for two instruction sets may round differently (fused
multiply-adds, NEON vs AVX reduction order, the dot-product int8 path), never by more than:

    fp32, fp16   |arm - x86| <= 1e-5 * max(1, |x86|) for float outputs (1e-5 absolute on
                 logits and probabilities, 1e-5 relative on large values such as box
                 coordinates in pixels); integer outputs (class maps, labels, counts) equal
    int8         quantized outputs bit-exact or one quantum apart; float outputs read
                 through a DEQUANTIZE within that tensor's scale; integer outputs equal
    dynamic      the export report's tolerance: argmax agreement >= DYNAMIC_MIN_AGREEMENT
                 over the last axis (its weights are int8, its activations quantized on the
                 fly per run: dot-product cores round those differently, 3e-3 seen)
"""

import numpy as np

from export import runtime

FLOAT_TOLERANCE = 1e-5
DYNAMIC_MIN_AGREEMENT = 0.98  # export.report.TOLERANCES["dynamic"] (tests keep them equal)
VARIANTS = ("fp32", "fp16", "dynamic", "int8")


def detect_variant(content):
    """"fp32", "fp16", "dynamic" or "int8" from what a `.tflite` model's tensors hold.

    Quantized inputs/outputs (or int8 activations feeding the first op) make "int8";
    float16 tensors (fp16 weights dequantized at load) "fp16"; int8 weights with float
    inputs and outputs "dynamic"; none of these "fp32".
    """
    model = runtime.parse_model(content)
    sg = model.subgraphs[0]
    io = [sg.tensors[i] for i in list(sg.inputs) + list(sg.outputs)]
    types = {runtime.dtype_name(t.type) for g in model.subgraphs for t in g.tensors}
    quantized_io = any(runtime.dtype_name(t.type) in ("int8", "uint8") and t.quantization is not None
                       and t.quantization.scale is not None and len(t.quantization.scale) for t in io)
    ops = {runtime.op_name(model, op) for op in sg.operators or []}
    if quantized_io or ("QUANTIZE" in ops and "int8" in types and "DEQUANTIZE" in ops and "float16" not in types):
        return "int8"
    if "float16" in types:
        return "fp16"
    if "int8" in types:
        return "dynamic"
    return "fp32"


def output_quanta(content):
    """Per output of the main subgraph: the quantum (scale) of one step, or None for plain floats.

    A quantized output's own scale; a float output produced by DEQUANTIZE, its input's scale.
    """
    model = runtime.parse_model(content)
    sg = model.subgraphs[0]
    producer = {}
    for op in sg.operators or []:
        for out in op.outputs if op.outputs is not None else []:
            producer[int(out)] = op

    def scale(tensor):
        q = tensor.quantization
        if q is None or q.scale is None or not len(q.scale):
            return None
        return float(np.max(q.scale))

    quanta = []
    for index in sg.outputs:
        tensor = sg.tensors[index]
        step = scale(tensor)
        op = producer.get(int(index))
        if step is None and op is not None and runtime.op_name(model, op) == "DEQUANTIZE":
            step = scale(sg.tensors[op.inputs[0]])
        quanta.append(step)
    return quanta


def compare_outputs(reference, candidate, variant, quanta=None):
    """Checks one model's ARM outputs against its x86 outputs on the same inputs.

    Args:
        reference: list of x86 output arrays (raw: quantized outputs in their integer dtype).
        candidate: list of ARM output arrays, same order, shapes and dtypes.
        variant: one of VARIANTS (see the module docstring for each rule).
        quanta: `output_quanta` of the model (needed for int8 float outputs), or None.

    Returns:
        dict: `agree` (bool), `rule` (what was required), `max_abs_diff` (float, over all
        outputs, in output units), `max_quanta` (int8: largest difference in quanta, else
        None), `argmax_agreement` (the lowest over float outputs with a class axis, or
        None), `outputs` (the same per output) and `problems` (why it does not agree).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if len(reference) != len(candidate):
        raise ValueError(f"the x86 run gave {len(reference)} outputs, the ARM run {len(candidate)}")
    quanta = list(quanta) if quanta is not None else [None] * len(reference)
    rows, problems = [], []
    for i, (ref, arm, step) in enumerate(zip(reference, candidate, quanta)):
        ref, arm = np.asarray(ref), np.asarray(arm)
        if ref.shape != arm.shape or ref.dtype != arm.dtype:
            problems.append(f"output {i}: x86 {list(ref.shape)} {ref.dtype} vs ARM {list(arm.shape)} {arm.dtype}")
            rows.append({"index": i, "agree": False})
            continue
        row = _compare_one(ref, arm, variant, step)
        row["index"] = i
        if not row["agree"]:
            problems.append(f"output {i} ({ref.dtype}): {row['why']}")
        rows.append(row)
    diffs = [r["max_abs_diff"] for r in rows if r.get("max_abs_diff") is not None]
    quanta_seen = [r["max_quanta"] for r in rows if r.get("max_quanta") is not None]
    agreements = [r["argmax_agreement"] for r in rows if r.get("argmax_agreement") is not None]
    return {"agree": not problems, "rule": RULES[variant], "max_abs_diff": max(diffs) if diffs else None,
            "max_quanta": max(quanta_seen) if quanta_seen else None,
            "argmax_agreement": min(agreements) if agreements else None, "outputs": rows, "problems": problems}


RULES = {
    "fp32": f"float |diff| <= {FLOAT_TOLERANCE:g} x max(1, |x86|); integers equal",
    "fp16": f"float |diff| <= {FLOAT_TOLERANCE:g} x max(1, |x86|); integers equal",
    "int8": "quantized outputs within 1 quantum; dequantized within its scale; integers equal",
    "dynamic": f"argmax agreement >= {DYNAMIC_MIN_AGREEMENT:g}; integers equal",
}


def _compare_one(ref, arm, variant, step):
    """Per-output comparison (see compare_outputs)."""
    row = {"max_abs_diff": None, "max_quanta": None, "argmax_agreement": None}
    if ref.size == 0:
        return {**row, "agree": True, "why": ""}
    if ref.dtype.kind in "iub":
        diff = np.abs(ref.astype(np.int64) - arm.astype(np.int64))
        row["max_abs_diff"] = float(diff.max())
        if variant == "int8" and step is not None:
            row["max_quanta"] = int(diff.max())
            ok = row["max_quanta"] <= 1
            return {**row, "agree": ok, "why": "" if ok else f"{row['max_quanta']} quanta apart (at most 1)"}
        mismatched = int(np.count_nonzero(diff))
        ok = mismatched == 0
        return {**row, "agree": ok, "why": "" if ok else f"{mismatched} of {ref.size} integer values differ"}
    same_nonfinite = np.array_equal(ref[~np.isfinite(ref)], arm[~np.isfinite(arm)], equal_nan=True)
    if not (np.all(np.isfinite(ref) == np.isfinite(arm)) and same_nonfinite):
        return {**row, "agree": False, "why": "non-finite values differ"}
    finite = np.isfinite(ref)
    diff = np.abs(ref.astype(np.float64) - arm.astype(np.float64))[finite]
    row["max_abs_diff"] = float(diff.max()) if diff.size else 0.0
    if ref.ndim >= 2 and ref.shape[-1] > 1:
        row["argmax_agreement"] = float(np.mean(np.argmax(ref, -1) == np.argmax(arm, -1)))
    if variant == "dynamic":
        agreement = row["argmax_agreement"]
        if agreement is None:  # no class axis: the float rule is all there is to check
            ok = bool(np.all(diff <= FLOAT_TOLERANCE * np.maximum(1.0, np.abs(ref[finite]))))
            return {**row, "agree": ok, "why": "" if ok else f"max |diff| {row['max_abs_diff']:.3g}"}
        ok = agreement >= DYNAMIC_MIN_AGREEMENT
        return {**row, "agree": ok, "why": "" if ok else f"argmax agreement {agreement:.4f} < {DYNAMIC_MIN_AGREEMENT}"}
    if variant == "int8" and step is not None:
        row["max_quanta"] = int(np.ceil(row["max_abs_diff"] / step - 1e-6)) if step > 0 else None
        ok = row["max_abs_diff"] <= step * (1 + 1e-6)
        why = "" if ok else f"max |diff| {row['max_abs_diff']:.3g} > one quantum {step:.3g}"
        return {**row, "agree": ok, "why": why}
    limit = FLOAT_TOLERANCE * np.maximum(1.0, np.abs(ref[finite].astype(np.float64)))
    worst = float(np.max(diff / limit)) if diff.size else 0.0
    ok = worst <= 1.0
    why = "" if ok else f"max |diff| {row['max_abs_diff']:.3g} exceeds 1e-5 x max(1, |x86|) by {worst:.1f}x"
    return {**row, "agree": ok, "why": why}
