"""The edge runtime: check, describe and run `.tflite` models with ai-edge-litert alone.

Nothing here imports TensorFlow or Keras, directly or through kseg: this module runs where
only LiteRT, numpy and Pillow are installed (a phone-class board, a CI runner), and the
export report (TensorFlow side) uses it too.

    content = read_model("unet.tflite")          # bytes, verified; ModelFileError otherwise
    describe(content)["flops"]["total"]          # 2 x MACs of the conv/matmul ops
    with Runner(content, accelerator="cpu", num_threads=2) as runner:
        (logits,) = runner.run(image)            # image: [1, H, W, C] in the input's dtype
    in_subprocess(gpu_outputs, "unet.tflite", [image])   # a GPU crash cannot take us down

Tensor details (`Runner.inputs`, `Runner.outputs`, `describe()["inputs"]`) are dicts:
    name          str
    index         int, the tensor's index in the model's main subgraph
    shape         tuple of int
    dtype         numpy dtype name ("float32", "uint8", "int8", ...)
    quantization  (scale, zero_point); (0.0, 0) for a tensor that is not quantized
"""

import copy
import functools
import importlib
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json"
_ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")
_MIN_SIZE = 16  # root offset, file identifier and a vtable: no .tflite file is smaller
_SUBGRAPH_OPS = {"WHILE", "IF", "CALL_ONCE"}  # their operands name other subgraphs
_BACKEND_MODULES = {
    "interpreter": ("ai_edge_litert.interpreter",),
    "compiled": ("ai_edge_litert.compiled_model", "ai_edge_litert.environment", "ai_edge_litert.hardware_accelerator",
                 "ai_edge_litert.options", "ai_edge_litert.tensor_buffer"),
}
# What ai_edge_litert.tensor_buffer.TensorBuffer reads and writes (2.3.0).
_BUFFER_DTYPES = ("float32", "float16", "bfloat16", "int32", "int8", "uint8", "bool")
_FLOP_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL")


class ModelFileError(ValueError):
    """A `.tflite` file that is missing, malformed, or needs ops that LiteRT cannot run."""


# ----------------------------------------------------------------------------- reading


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def read_model(path):
    """Reads and verifies a `.tflite` file; returns its content.

    Raises:
        ModelFileError: the file is missing, a directory, too small, not a TFLite
            flatbuffer, truncated or corrupt, or needs Flex (select-TF) or other custom ops.
    """
    content = _read_file(path)
    check_model(content, name=str(path))
    return content


def _read_file(path):
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file; expected a .tflite model file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory; expected a .tflite model file")
    return path.read_bytes()


def check_model(content, name="<model bytes>"):
    """Verifies `content` as a runnable `.tflite` flatbuffer; returns the parsed model (ModelT).

    Checks, in order: size, the b"TFL3" identifier, a full parse (Python, in a try block),
    Flex and other custom ops, and LiteRT's native flatbuffer verifier (which returns an
    error for a corrupt buffer instead of crashing).
    """
    if len(content) < _MIN_SIZE:
        raise ModelFileError(f"{name}: {len(content)} bytes is too small for a TFLite model; expected a .tflite flatbuffer")
    ident = bytes(content[4:8])
    if ident != b"TFL3":
        hint = ""
        if content[:2] == b"PK":
            hint = " (it looks like a zip archive, e.g. a .keras file: convert it with export.tflite first)"
        elif content[:4] == b"\x89HDF":
            hint = " (it looks like an HDF5 / .h5 Keras file)"
        raise ModelFileError(f"{name}: not a TFLite flatbuffer: bytes 4-8 are {ident!r}, expected b'TFL3'{hint}")
    try:
        model = parse_model(content)
        sg = model.subgraphs[0]
        tensors = len(sg.tensors or [])
        for op in sg.operators or []:
            if op.opcodeIndex >= len(model.operatorCodes) or any(t >= tensors for t in list(op.inputs) + list(op.outputs)):
                raise IndexError("an operator refers to an operator code or tensor that does not exist")
    except ModelFileError:
        raise
    except Exception as e:
        raise ModelFileError(f"{name}: truncated or corrupt TFLite flatbuffer ({len(content)} bytes; parsing failed: {e!r})") from e
    custom = sorted({op_name(model, op) for sg in model.subgraphs for op in sg.operators or [] if _is_custom(model, op)})
    flex = [c for c in custom if c.startswith("Flex")]
    if flex:
        raise ModelFileError(
            f"{name}: the model needs select-TF (Flex) ops {', '.join(flex)}, which ai-edge-litert's builtin "
            "interpreter cannot run (nor a phone without the select-TF-ops library); expected builtin TFLite ops "
            "only. Re-export with builtin ops (export.tflite.convert without allow_flex)."
        )
    if custom:
        raise ModelFileError(
            f"{name}: the model needs custom ops {', '.join(custom)}, which are not registered in ai-edge-litert; "
            "expected builtin TFLite ops only."
        )
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        Interpreter(model_content=bytes(content), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except ValueError as e:
        reason = " ".join(str(e).split())  # LiteRT's message spans lines; ours is one
        raise ModelFileError(f"{name}: truncated or corrupt TFLite flatbuffer ({len(content)} bytes; LiteRT: {reason})") from e
    except RuntimeError as e:
        raise ModelFileError(f"{name}: LiteRT cannot build an interpreter for this model: {str(e).splitlines()[0]}") from e
    return model


def parse_model(content):
    """The flatbuffer as ai_edge_litert's schema object tree (ModelT). Raises on malformed input."""
    s = _schema()
    return s.ModelT.InitFromObj(s.Model.GetRootAs(bytes(content), 0))


@functools.lru_cache(maxsize=None)
def _builtin_names():
    return {v: k for k, v in vars(_schema().BuiltinOperator).items() if not k.startswith("_")}


def _code(opcode):
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)


def _is_custom(model, op):
    return _code(model.operatorCodes[op.opcodeIndex]) == _schema().BuiltinOperator.CUSTOM


def op_name(model, op):
    """"CONV_2D", ... for a builtin operator, the custom code (e.g. "FlexCropAndResize") otherwise."""
    opcode = model.operatorCodes[op.opcodeIndex]
    code = _code(opcode)
    if code == _schema().BuiltinOperator.CUSTOM:
        custom = opcode.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return _builtin_names().get(code, f"BUILTIN_{code}")


@functools.lru_cache(maxsize=None)
def _dtype_name(tensor_type):
    names = {v: k for k, v in vars(_schema().TensorType).items() if not k.startswith("_")}
    return names.get(tensor_type, f"TYPE_{tensor_type}").lower()


def _tensor_detail(sg, index):
    t = sg.tensors[index]
    q = t.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
    zero = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    return {"name": name, "index": int(index), "shape": shape, "dtype": _dtype_name(t.type), "quantization": (scale, zero)}


# ----------------------------------------------------------------------------- describing


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
        dict with `size_bytes`; `inputs`, `outputs` (tensor details, see the module
        docstring); `ops` {op name: count} over all subgraphs; `num_ops`; `subgraphs`;
        `flops` {"total", "by_op", "counted", "not_counted", "note"}: 2 x MACs of CONV_2D,
        DEPTHWISE_CONV_2D, TRANSPOSE_CONV, FULLY_CONNECTED and BATCH_MATMUL from tensor
        shapes; and `metadata` (export.metadata.read_metadata's dict, or None).
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
        inputs = [_tensor_detail(sg, i) for i in sg.inputs]
        outputs = [_tensor_detail(sg, i) for i in sg.outputs]
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


def read_metadata(content):
    """Labels and input normalization from export.metadata, or None when absent or unreadable."""
    try:
        from export.metadata import read_metadata as read
    except ImportError:
        return None
    try:
        return read(bytes(content))
    except Exception:  # a foreign model's metadata must not stop a benchmark
        return None


# ----------------------------------------------------------------------------- one-op models


def _buffer_data(model, content, index):
    b = model.buffers[index]
    if b.offset and b.offset > 1:  # large models keep weights after the flatbuffer
        return np.frombuffer(bytes(content[b.offset : b.offset + b.size]), dtype=np.uint8)
    return None if b.data is None or len(b.data) == 0 else np.asarray(b.data, dtype=np.uint8)


def single_op_model(model, content, op_index):
    """The operator `op_index` of the main subgraph alone, as a runnable `.tflite` model.

    The new model keeps that operator, its tensors and the constant buffers it reads;
    its other inputs become graph inputs and its outputs graph outputs.

    Args:
        model: `parse_model(content)`.
        content: the model's bytes (for weights stored after the flatbuffer).
        op_index: index into the main subgraph's operators.

    Returns:
        (bytes, input tensor indices in the original model, in graph-input order).

    Raises:
        ValueError: the operator calls other subgraphs or reads variables.
    """
    import flatbuffers

    s = _schema()
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


def empty_model(detail):
    """A model with no operators whose output is its input (`detail`): measures invoke overhead."""
    import flatbuffers

    s = _schema()
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


# ----------------------------------------------------------------------------- running


def enable_gpu_emulation():
    """Points Vulkan at Chromium's SwiftShader (a software GPU) when no ICD is configured.

    Must run before LiteRT's GPU accelerator loads (set it in the parent of a spawned child,
    or first thing in the child). Returns whether a Vulkan ICD is configured.
    """
    if not os.environ.get("VK_ICD_FILENAMES") and os.path.exists(SWIFTSHADER_ICD):
        os.environ["VK_ICD_FILENAMES"] = SWIFTSHADER_ICD
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    if os.environ.get("VK_ICD_FILENAMES"):
        return True
    return any(Path(d).is_dir() and any(Path(d).glob("*.json")) for d in _ICD_DIRS)


def quantize(array, detail):
    """Real values -> the tensor's stored dtype: round(x / scale + zero_point), clipped."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    x = np.asarray(array)
    if not scale:
        return x.astype(dtype)
    q = np.round(x.astype(np.float64) / scale + zero)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        q = np.clip(q, info.min, info.max)
    return q.astype(dtype)


def dequantize(array, detail):
    """The tensor's stored values -> real values: (q - zero_point) * scale (float32)."""
    scale, zero = detail["quantization"]
    a = np.asarray(array)
    if not scale:
        return a
    return ((a.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)


def import_backend(runtime="interpreter"):
    """Imports LiteRT's modules (and native libraries) for "interpreter" or "compiled"."""
    for module in _BACKEND_MODULES[runtime]:
        importlib.import_module(module)


class Runner:
    """One loaded model on one LiteRT backend, with checked inputs.

    Args:
        model: path to a `.tflite` file, or its bytes (both are verified first).
        accelerator: "cpu" or "gpu" (LiteRT's GPU accelerator, with CPU fallback for ops
            it lacks; `fully_accelerated` says whether any fell back).
        num_threads: CPU threads (CPU path, and the CPU fallback of the GPU path).
        runtime: CPU path only: "interpreter" (`Interpreter`, XNNPACK) or "compiled"
            (`CompiledModel` with `HardwareAccelerator.CPU`, what LiteRT's own benchmark
            uses). The GPU path is always "compiled".

    Attributes:
        inputs, outputs: tensor details (module docstring), in the main subgraph's order.
        fully_accelerated: True when the accelerator runs every op (always True for the
            interpreter, whose XNNPACK delegate falls back to builtin kernels by design).
        init_ms: time LiteRT took to load the verified model and allocate its tensors
            (interpreter) or compile it and create its buffers (compiled).
        environment_ms: time to create LiteRT's environment (compiled runtime; 0 otherwise),
            not part of init_ms.

    Outputs come back raw: a quantized output stays in its integer dtype (see `dequantize`).

    Example:
        >>> with Runner("unet.tflite") as r:                       # doctest: +SKIP
        ...     (logits,) = r.run(np.zeros(r.inputs[0]["shape"], np.float32))
    """

    def __init__(self, model, accelerator="cpu", num_threads=2, runtime="interpreter"):
        if accelerator not in ("cpu", "gpu"):
            raise ValueError(f"accelerator must be 'cpu' or 'gpu', got {accelerator!r}")
        if runtime not in ("interpreter", "compiled"):
            raise ValueError(f"runtime must be 'interpreter' or 'compiled', got {runtime!r}")
        if int(num_threads) < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        if isinstance(model, (bytes, bytearray, memoryview)):
            self._content = bytes(model)
            parsed = check_model(self._content)
        else:
            self._content = _read_file(model)
            parsed = check_model(self._content, name=str(model))
        self.accelerator = accelerator
        self.num_threads = int(num_threads)
        self.runtime = "compiled" if accelerator == "gpu" else runtime
        sg = parsed.subgraphs[0]
        self._details = {int(i): _tensor_detail(sg, i) for i in list(sg.inputs) + list(sg.outputs)}
        self.environment_ms = 0.0
        import_backend(self.runtime)  # loading native libraries is not part of init_ms
        start = time.perf_counter()
        if self.runtime == "interpreter":
            self._open_interpreter()
        else:
            self._open_compiled(sg)
        self.init_ms = (time.perf_counter() - start) * 1000.0 - self.environment_ms

    def _open_interpreter(self):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=self._content, num_threads=self.num_threads)
        self._interpreter.allocate_tensors()
        self.inputs = [self._details[int(d["index"])] for d in self._interpreter.get_input_details()]
        self.outputs = [self._details[int(d["index"])] for d in self._interpreter.get_output_details()]
        self.fully_accelerated = True

    def _open_compiled(self, sg):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.environment import Environment
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        accel = HardwareAccelerator.CPU
        if self.accelerator == "gpu":
            accel = HardwareAccelerator.GPU | HardwareAccelerator.CPU
        options = Options(hardware_accelerators=accel, cpu_options=CpuOptions(num_threads=self.num_threads))
        # The environment (accelerator registry, vendor plugins) is per process, not per model:
        # created outside init_ms, as LiteRT's own benchmark does.
        start = time.perf_counter()
        self._environment = Environment.create()
        self.environment_ms = (time.perf_counter() - start) * 1000.0
        self._compiled = CompiledModel.from_buffer(self._content, environment=self._environment, options=options)
        signature = self._compiled.get_signature_by_index(0)
        key = signature["key"]
        in_details = self._compiled.get_input_tensor_details(key)
        out_details = self._compiled.get_output_tensor_details(key)
        sig_in = [int(in_details[n]["index"]) for n in signature["inputs"]]
        sig_out = [int(out_details[n]["index"]) for n in signature["outputs"]]
        # Present tensors in the main subgraph's order, as the interpreter does.
        order_in = [int(i) for i in sg.inputs] if sorted(sig_in) == sorted(int(i) for i in sg.inputs) else sig_in
        order_out = [int(i) for i in sg.outputs] if sorted(sig_out) == sorted(int(i) for i in sg.outputs) else sig_out
        self.inputs = [self._details.get(i) or _tensor_detail(sg, i) for i in order_in]
        self.outputs = [self._details.get(i) or _tensor_detail(sg, i) for i in order_out]
        self._in_pos = [sig_in.index(i) for i in order_in]
        self._out_pos = [sig_out.index(i) for i in order_out]
        for d in self.inputs + self.outputs:
            if d["dtype"] not in _BUFFER_DTYPES:
                raise ValueError(
                    f"tensor {d['name']!r} has dtype {d['dtype']}, which LiteRT's CompiledModel buffers cannot hold "
                    f"(they hold {', '.join(_BUFFER_DTYPES)}); use runtime='interpreter'"
                )
        self._in_buffers = self._compiled.create_input_buffers(0)
        self._out_buffers = self._compiled.create_output_buffers(0)
        self.fully_accelerated = bool(self._compiled.is_fully_accelerated())

    def check_inputs(self, arrays):
        """Each array as a numpy array with the input's shape and dtype; ValueError otherwise."""
        if len(arrays) != len(self.inputs):
            raise ValueError(f"the model takes {len(self.inputs)} input(s), got {len(arrays)} array(s)")
        checked = []
        for i, (a, d) in enumerate(zip(arrays, self.inputs)):
            a = np.asarray(a)
            if tuple(a.shape) != tuple(d["shape"]) or a.dtype != np.dtype(d["dtype"]):
                raise ValueError(
                    f"input {i} ({d['name']}): got shape {list(a.shape)} dtype {a.dtype}; "
                    f"expected shape {list(d['shape'])} dtype {d['dtype']}"
                )
            checked.append(np.ascontiguousarray(a))
        return checked

    def set_inputs(self, *arrays):
        """Checks and copies the inputs into the runtime (see `check_inputs`)."""
        arrays = self.check_inputs(arrays)
        if self.runtime == "interpreter":
            for a, d in zip(arrays, self.inputs):
                self._interpreter.set_tensor(d["index"], a)
        else:
            for a, pos in zip(arrays, self._in_pos):
                self._in_buffers[pos].write(a)

    def invoke(self):
        """Runs the model on the inputs last set (what invoke-only timings measure).

        On the GPU accelerator this returns once the work is queued: `get_outputs` waits
        for it, so time the two together there.
        """
        if self.runtime == "interpreter":
            self._interpreter.invoke()
        else:
            self._compiled.run_by_index(0, self._in_buffers, self._out_buffers)

    def get_outputs(self):
        """The outputs of the last `invoke`, as new numpy arrays in their stored dtypes."""
        if self.runtime == "interpreter":
            return [self._interpreter.get_tensor(d["index"]) for d in self.outputs]
        return [
            self._out_buffers[pos].read(int(np.prod(d["shape"])), np.dtype(d["dtype"])).reshape(d["shape"])
            for pos, d in zip(self._out_pos, self.outputs)
        ]

    def run(self, *arrays):
        """`set_inputs`, `invoke`, `get_outputs`: a list of output arrays."""
        self.set_inputs(*arrays)
        self.invoke()
        return self.get_outputs()

    def close(self):
        for name in ("_interpreter", "_in_buffers", "_out_buffers", "_compiled", "_environment"):
            if hasattr(self, name):
                delattr(self, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def gpu_outputs(model, arrays):
    """Runs `model` (path or bytes) once on LiteRT's GPU accelerator; meant for `in_subprocess`.

    Returns:
        {"outputs": list of raw output arrays, "fully_accelerated": bool}.
    """
    enable_gpu_emulation()
    with Runner(model, accelerator="gpu") as runner:
        return {"outputs": runner.run(*arrays), "fully_accelerated": runner.fully_accelerated}


# ----------------------------------------------------------------------------- isolation


def _redirect(log_path):
    """Points fds 1 and 2 at `log_path` (LiteRT's native code logs to both)."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _child(conn, log_path, fn, args, kwargs):
    _redirect(log_path)  # the parent shows the log's tail if we die
    try:
        result = ("ok", fn(*args, **kwargs))
    except Exception as e:
        result = ("error", e, traceback.format_exc())
    except BaseException as e:  # SystemExit, KeyboardInterrupt: not for the parent to re-raise
        result = ("error", RuntimeError(f"{getattr(fn, '__qualname__', fn)} stopped: {e!r}"), traceback.format_exc())
    try:
        conn.send(result)
    except Exception as e:  # an unpicklable result or exception
        conn.send(("error", RuntimeError(f"{result[1]!r} (could not be sent back: {e})"), result[-1]))
    conn.close()


def _tail(path, lines=8):
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def in_subprocess(fn, *args, timeout=None, **kwargs):
    """`fn(*args, **kwargs)` in a fresh "spawn" child process; returns its result.

    `fn` must be a picklable top-level function; its arguments and result travel by pickle.
    The child's stdout and stderr (LiteRT's native logging writes to both) go to a log whose
    last lines explain a crash.

    Raises:
        RuntimeError: the child died (signal, exit code, timeout), naming `fn`, the cause and
            the child's last output lines.
        Whatever `fn` raised, when it raised a Python exception (re-raised here, with the
            child's traceback as a note).
    """
    name = getattr(fn, "__qualname__", repr(fn))
    ctx = multiprocessing.get_context("spawn")
    fd, log_path = tempfile.mkstemp(prefix="kseg-child-", suffix=".log")
    os.close(fd)
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, log_path, fn, args, kwargs), daemon=True)
    try:
        saved = [os.dup(1), os.dup(2)]
        try:  # the child inherits the log as stdout and stderr, so even a failed start leaves a trace
            _redirect(log_path)
            process.start()
        finally:
            for fd, copy_ in zip((1, 2), saved):
                os.dup2(copy_, fd)
                os.close(copy_)
        sender.close()
        if not receiver.poll(timeout):
            process.kill()
            process.join()
            raise RuntimeError(f"{name} timed out after {timeout} s and was killed" + _with_tail(log_path))
        try:
            message = receiver.recv()
        except EOFError:
            process.join()
            raise RuntimeError(f"{name} died: {_exit_reason(process.exitcode)}" + _with_tail(log_path)) from None
        process.join()
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()
        stderr_tail = _tail(log_path)
        os.remove(log_path)
    if message[0] == "ok":
        return message[1]
    error = message[1]
    if hasattr(error, "add_note"):
        error.add_note(f"raised in a child process by {name}:\n{message[2]}" + (f"\nchild output:\n{stderr_tail}" if stderr_tail else ""))
    raise error


def _exit_reason(code):
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code} without a result"


def _with_tail(log_path):
    tail = _tail(log_path)
    return f"; last output lines:\n{tail}" if tail else "; it wrote no output"
