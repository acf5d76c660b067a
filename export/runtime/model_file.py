"""Reading and verifying `.tflite` files; operator names and tensor details of a parsed model.

A parsed model is ai_edge_litert's flatbuffer object tree (`ModelT`, from `parse_model`).
Tensor details are dicts (see export.runtime): name, index, shape, dtype, quantization.
"""

import functools
from pathlib import Path

_MIN_SIZE = 16  # root offset, file identifier and a vtable: no .tflite file is smaller


class ModelFileError(ValueError):
    """A `.tflite` file that is missing, malformed, or needs ops that LiteRT cannot run."""


def schema():
    """ai_edge_litert's generated TFLite schema module (ModelT, BuiltinOperator, TensorType, ...)."""
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def read_model(path):
    """Reads and verifies a `.tflite` file; returns its content.

    Args:
        path: the `.tflite` file.

    Returns:
        The file's bytes.

    Raises:
        ModelFileError: the file is missing, a directory, too small, not a TFLite
            flatbuffer, truncated or corrupt, or needs Flex (select-TF) or other custom ops.
    """
    content = read_file(path)
    check_model(content, name=str(path))
    return content


def read_file(path):
    """The bytes of the file `path`, unchecked; ModelFileError when it is missing or a directory."""
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

    Args:
        content: the `.tflite` file content (bytes).
        name: what error messages call the model (its file name).

    Returns:
        The parsed model (ModelT).

    Raises:
        ModelFileError: naming `name`, what was found and what was expected.
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
    s = schema()
    return s.ModelT.InitFromObj(s.Model.GetRootAs(bytes(content), 0))


@functools.lru_cache(maxsize=None)
def _builtin_names():
    return {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}


def _code(opcode):
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)


def _is_custom(model, op):
    return _code(model.operatorCodes[op.opcodeIndex]) == schema().BuiltinOperator.CUSTOM


def op_name(model, op):
    """"CONV_2D", ... for a builtin operator, the custom code (e.g. "FlexCropAndResize") otherwise."""
    opcode = model.operatorCodes[op.opcodeIndex]
    code = _code(opcode)
    if code == schema().BuiltinOperator.CUSTOM:
        custom = opcode.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return _builtin_names().get(code, f"BUILTIN_{code}")


@functools.lru_cache(maxsize=None)
def dtype_name(tensor_type):
    """The numpy-style name ("float32", "int8", ...) of a TFLite TensorType value."""
    names = {v: k for k, v in vars(schema().TensorType).items() if not k.startswith("_")}
    return names.get(tensor_type, f"TYPE_{tensor_type}").lower()


def tensor_detail(sg, index):
    """The detail dict (name, index, shape, dtype, quantization) of tensor `index` of subgraph `sg`."""
    t = sg.tensors[index]
    q = t.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
    zero = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    return {"name": name, "index": int(index), "shape": shape, "dtype": dtype_name(t.type), "quantization": (scale, zero)}
