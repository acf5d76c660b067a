"""Reads a checkpoint's tensors into `{name: np.ndarray}`, with no torch or safetensors installed.

    .safetensors   8-byte little-endian header length, a JSON header {name: {dtype, shape,
                   data_offsets}}, then the raw little-endian buffers
    .pth .pt .bin  `torch.save` zip archives (`kseg.weights.torch_pickle`)
    .npz           NumPy archives

Training checkpoints wrap the weights: mmseg/mmdet save {"state_dict": ..., "meta": ...},
others {"model": ...}; `read_state_dict` returns the mapping of arrays inside, whichever it is.
"""

import json
import os
import struct

import numpy as np

from kseg.weights.torch_pickle import read_torch_pickle

SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
# Where training checkpoints keep their weights, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")
MAX_HEADER_BYTES = 100 * 2**20


def read_state_dict(path):
    """Reads every tensor of a checkpoint file.

    Args:
        path: a `.safetensors`, `.pth` / `.pt` / `.bin` (torch zip archive) or `.npz` file.

    Returns:
        dict {tensor name: np.ndarray} in the file's order, arrays in their stored dtype
        (bfloat16 widened to float32).

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
        >>> np.savez(path, **{"conv.weight": np.ones((2, 3), "float32")})
        >>> {k: v.shape for k, v in read_state_dict(path).items()}
        {'conv.weight': (2, 3)}
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist or is not a file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    if suffix in TORCH_SUFFIXES:
        return _tensors_of(read_torch_pickle(path), path)
    raise ValueError(f"checkpoint {path!r}: unknown file type {suffix!r}; expected .safetensors, "
                     f"{', '.join(TORCH_SUFFIXES)} or .npz")


def read_safetensors(path):
    """Reads a `.safetensors` file into {name: np.ndarray} (the format's own checks included).

    Args:
        path: the file.

    Returns:
        dict {tensor name: np.ndarray}, in the header's order.
    """
    with open(path, "rb") as file:
        content = file.read()
    if len(content) < 8:
        raise ValueError(f"{path}: {len(content)} bytes, too short for a safetensors header")
    (header_size,) = struct.unpack("<Q", content[:8])
    if header_size > min(MAX_HEADER_BYTES, len(content) - 8):
        raise ValueError(f"{path}: header length {header_size} exceeds the file ({len(content)} bytes)")
    try:
        header = json.loads(content[8:8 + header_size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: the safetensors header is not JSON: {error}") from error
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    buffer = memoryview(content)[8 + header_size:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = SAFETENSORS_DTYPES[entry["dtype"]], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor {name!r} has a malformed entry {entry!r}; expected dtype (one of "
                             f"{tuple(SAFETENSORS_DTYPES)}), shape and data_offsets") from None
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        expected = int(np.prod(shape, dtype=np.int64)) * itemsize
        if not 0 <= begin <= end <= len(buffer) or end - begin != expected:
            raise ValueError(f"{path}: tensor {name!r} of shape {shape} and dtype {entry['dtype']} spans bytes "
                             f"[{begin}, {end}) of a {len(buffer)}-byte buffer; expected {expected} bytes inside it")
        raw = buffer[begin:end]
        if dtype == "bfloat16":
            array = (np.frombuffer(raw, "<u2").astype("uint32") << 16).view("float32")
        else:
            array = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).astype(dtype)
        tensors[name] = array.reshape(shape)
    return tensors


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: np.ndarray} as a `.safetensors` file (little-endian, float64 .. bool).

    Args:
        path: the output file.
        tensors: dict {name: array}; bfloat16 is not written (NumPy has no such dtype).
        metadata: optional dict {str: str} stored in the header's "__metadata__".
    """
    names = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items() if v != "bfloat16"}
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, value in tensors.items():
        array = np.ascontiguousarray(value)
        if array.dtype not in names:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}; safetensors takes {sorted(map(str, names))}")
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": names[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


def _is_tensor_mapping(obj):
    return isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values())


def _tensors_of(obj, path):
    """The mapping of arrays in a loaded checkpoint: the object itself or a wrapper's entry."""
    if _is_tensor_mapping(obj):
        return {str(k): v for k, v in obj.items()}
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if _is_tensor_mapping(obj.get(key)):
                return {str(k): v for k, v in obj[key].items()}
        seen = sorted(str(k) for k in obj)[:20]
        raise ValueError(f"{path}: found no mapping of tensor names to tensors; top-level keys {seen}, "
                         f"expected the tensors themselves or one of {WRAPPER_KEYS}")
    raise ValueError(f"{path}: holds a {type(obj).__name__}; expected a dict of tensors (a state dict)")
