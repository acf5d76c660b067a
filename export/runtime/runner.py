"""A loaded `.tflite` model on one LiteRT backend (Interpreter or CompiledModel, CPU or GPU).

    with Runner(content, accelerator="cpu", num_threads=2) as runner:
        (logits,) = runner.run(image)            # image: [1, H, W, C] in the input's dtype
"""

import importlib
import time

import numpy as np

from export.runtime.gpu_emulation import enable_gpu_emulation
from export.runtime.model_file import check_model, read_file, tensor_detail

_BACKEND_MODULES = {
    "interpreter": ("ai_edge_litert.interpreter",),
    "compiled": ("ai_edge_litert.compiled_model", "ai_edge_litert.environment", "ai_edge_litert.hardware_accelerator",
                 "ai_edge_litert.options", "ai_edge_litert.tensor_buffer"),
}
# What ai_edge_litert.tensor_buffer.TensorBuffer reads and writes (2.3.0).
_BUFFER_DTYPES = ("float32", "float16", "bfloat16", "int32", "int8", "uint8", "bool")


def import_backend(runtime="interpreter"):
    """Imports LiteRT's modules (and native libraries) for `runtime`: "interpreter" or "compiled"."""
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
        inputs, outputs: tensor details (see export.runtime), in the main subgraph's order.
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
            self._content = read_file(model)
            parsed = check_model(self._content, name=str(model))
        self.accelerator = accelerator
        self.num_threads = int(num_threads)
        self.runtime = "compiled" if accelerator == "gpu" else runtime
        sg = parsed.subgraphs[0]
        self._details = {int(i): tensor_detail(sg, i) for i in list(sg.inputs) + list(sg.outputs)}
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
        self.inputs = [self._details.get(i) or tensor_detail(sg, i) for i in order_in]
        self.outputs = [self._details.get(i) or tensor_detail(sg, i) for i in order_out]
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
        return check_arrays(arrays, self.inputs)

    def set_inputs(self, *arrays):
        """Checks and copies the inputs into the runtime (see `check_inputs`)."""
        arrays = self.check_inputs(arrays)
        if self.runtime == "interpreter":
            for a, d in zip(arrays, self.inputs):
                self._interpreter.set_tensor(d["index"], a)
        else:
            for a, pos in zip(arrays, self._in_pos):
                self._in_buffers[pos].write(a.reshape(-1))  # buffers take no 0-D array

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
        """Releases LiteRT's interpreter, compiled model, buffers and environment."""
        for name in ("_interpreter", "_in_buffers", "_out_buffers", "_compiled", "_environment"):
            if hasattr(self, name):
                delattr(self, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_arrays(arrays, details):
    """Each array as a C-contiguous numpy array with its detail's shape and dtype.

    Args:
        arrays: one array per model input. details: the inputs' tensor details, in order.

    Raises:
        ValueError: the wrong number of arrays, or one of another shape or dtype (named).
    """
    if len(arrays) != len(details):
        raise ValueError(f"the model takes {len(details)} input(s), got {len(arrays)} array(s)")
    checked = []
    for i, (a, d) in enumerate(zip(arrays, details)):
        a = np.asarray(a)
        if tuple(a.shape) != tuple(d["shape"]) or a.dtype != np.dtype(d["dtype"]):
            raise ValueError(
                f"input {i} ({d['name']}): got shape {list(a.shape)} dtype {a.dtype}; "
                f"expected shape {list(d['shape'])} dtype {d['dtype']}"
            )
        checked.append(np.require(a, requirements='C'))  # ascontiguousarray makes a scalar 1-D
    return checked


def gpu_outputs(model, arrays):
    """Runs `model` once on LiteRT's GPU accelerator; meant for `in_subprocess`.

    Args:
        model: path to a `.tflite` file, or its bytes.
        arrays: one array per model input, in the input's shape and dtype.

    Returns:
        {"outputs": list of raw output arrays, "fully_accelerated": bool}.
    """
    enable_gpu_emulation()
    with Runner(model, accelerator="gpu") as runner:
        return {"outputs": runner.run(*arrays), "fully_accelerated": runner.fully_accelerated}
