"""The edge runtime: check, describe and run `.tflite` models with ai-edge-litert alone.

Nothing here imports TensorFlow or Keras, directly or through kseg: this package runs where
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

Modules:
    model_file     read_model, check_model, parse_model: reading and verifying a file;
                   op_name, dtype_name, tensor_detail of a parsed model
    model_info     describe: tensors, op counts, FLOPs and metadata, without running;
                   signature_outputs of a parsed model
    op_surgery     sub_model, single_op_model, empty_model: new models cut from a parsed one;
                   is_constant, folded_dequantize_ops, dequantized_constants: its weights
    gpu_emulation  enable_gpu_emulation: SwiftShader for the GPU accelerator
    quantization   quantize, dequantize
    runner         Runner (Interpreter or CompiledModel, CPU or GPU), gpu_outputs
    isolation      in_subprocess: a function in a spawned child process
    partition      device_plan, split_model, write_partitioned, read_partitioned,
                   PartitionedRunner: a model cut into GPU and CPU parts, run as one;
                   open_model, describe_path, is_package: a `.tflite` or such a package
"""

from export.runtime.gpu_emulation import SWIFTSHADER_ICD, enable_gpu_emulation
from export.runtime.isolation import in_subprocess
from export.runtime.model_file import (
    ModelFileError, check_model, dtype_name, op_name, parse_model, read_model, tensor_detail,
)
from export.runtime.model_info import describe, read_metadata, signature_outputs
from export.runtime.op_surgery import (
    dequantized_constants, empty_model, folded_dequantize_ops, is_constant, single_op_model, sub_model,
)
from export.runtime.partition import (
    PartitionedRunner, describe_path, device_plan, is_package, open_model, read_partitioned, split_model,
    write_partitioned,
)
from export.runtime.quantization import dequantize, quantize
from export.runtime.runner import Runner, gpu_outputs, import_backend

__all__ = [
    "ModelFileError", "PartitionedRunner", "Runner", "SWIFTSHADER_ICD", "check_model", "dequantize",
    "dequantized_constants", "describe", "describe_path", "device_plan", "dtype_name", "empty_model", "enable_gpu_emulation",
    "folded_dequantize_ops", "gpu_outputs", "import_backend", "in_subprocess", "is_constant", "is_package", "op_name", "open_model",
    "parse_model", "quantize", "read_metadata", "read_model", "read_partitioned", "single_op_model",
    "signature_outputs", "split_model", "sub_model", "tensor_detail", "write_partitioned",
]
