"""Reads PyTorch `.pth` / `.bin` checkpoints (`torch.save`'s zip format) without torch.

    file.pth   zip archive  <prefix>/data.pkl       the pickled object tree
                            <prefix>/data/<key>     one raw buffer per storage
                            <prefix>/byteorder      "little" or "big" (absent: little)

The pickle is read by a restricted unpickler: it imports nothing from the file. Tensors are
rebuilt as NumPy arrays from their storage, offset, size and stride; the few containers a
state dict uses (OrderedDict, NumPy arrays and scalars) are the real ones; any other class the
pickle names (an mmcv config, a training hook's record) becomes an inert `Opaque` placeholder
holding its arguments and state, so metadata never runs code and never stops a read. The
legacy (pre-zip, torch < 1.6) format is refused with the way to convert it.
"""

import codecs
import collections
import pickle
import zipfile

import numpy as np

# torch's storage classes (the names pickles reference) -> NumPy dtypes. BFloat16 has no
# NumPy dtype: its bits are the top half of a float32, which `_storage_array` widens to.
STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
# torch dtypes by name (`_rebuild_tensor_v3` passes one).
TORCH_DTYPES = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32", "int16": "int16", "short": "int16", "int8": "int8",
    "uint8": "uint8", "bool": "bool",
}
# NumPy callables a pickled array or scalar needs (both the numpy 1.x and 2.x module names).
_MULTIARRAY = (getattr(np, "_core", None) or np.core).multiarray
NUMPY_GLOBALS = {
    (module, name): getattr(_MULTIARRAY, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
}
NUMPY_GLOBALS.update({("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype})
# Protocol 2 pickles bytes as _codecs.encode(text, "latin1") (NumPy scalars' payloads, say).
NUMPY_GLOBALS[("_codecs", "encode")] = codecs.encode


class Opaque(dict):
    """Stands for an object of a class the reader does not import; keeps what the pickle gave it."""

    pickled_class = "?"

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args = args
        self.items_appended = []

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items_appended.append(item)

    def extend(self, items):
        self.items_appended.extend(items)

    def __reduce__(self):  # never re-pickled as something it is not
        raise TypeError(f"an Opaque stand-in for {self.pickled_class} cannot be pickled")


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


class _Storage:
    """A storage's bytes, not yet typed (v3 tensors type them themselves)."""

    def __init__(self, data, dtype):
        self.data = data
        self.dtype = dtype


def _storage_array(raw, dtype, byteorder):
    if dtype == "bfloat16":
        halves = np.frombuffer(raw, dtype=np.dtype("uint16").newbyteorder(byteorder))
        return (halves.astype("uint32") << 16).view("float32")
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder(byteorder))
    return array.astype(array.dtype.newbyteorder("="))


def _tensor(storage, offset, size, stride, dtype=None):
    flat = storage.data if dtype is None else _storage_array(storage.raw, dtype, storage.byteorder)
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not size:
        return np.array(flat[offset])
    needed = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if min(size) > 0 and needed > flat.size:
        raise ValueError(f"a tensor of size {size}, stride {stride} at offset {offset} overruns its storage "
                         f"of {flat.size} elements")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[s * item for s in stride])
    return np.array(view)  # a copy: contiguous and independent of the archive's buffer


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *unused):
    return _tensor(storage, offset, size, stride, dtype=dtype)


def _rebuild_parameter(data, *unused):
    return data


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)


TORCH_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix, byteorder, path):
        super().__init__(file)
        self.archive, self.prefix, self.byteorder, self.path = archive, prefix, byteorder, path
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) in TORCH_GLOBALS:
            return TORCH_GLOBALS[module, name]
        if (module, name) in NUMPY_GLOBALS:
            return NUMPY_GLOBALS[module, name]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name in TORCH_DTYPES:
            return TORCH_DTYPES[name]
        if module == "torch" and name == "UntypedStorage":
            return _StorageType("uint8")
        return type(name, (Opaque,), {"pickled_class": f"{module}.{name}"})

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self.path}: unknown persistent id {pid!r}; expected a torch storage")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self.path}: storage {key} has an unsupported type {storage_type!r}")
        if key not in self.storages:
            member = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(member)
            except KeyError:
                raise ValueError(f"{self.path}: the archive has no {member!r}, which its pickle references") from None
            storage = _Storage(_storage_array(raw, storage_type.dtype, self.byteorder), storage_type.dtype)
            storage.raw, storage.byteorder = raw, self.byteorder
            self.storages[key] = storage
        return self.storages[key]


def read_torch_pickle(path):
    """Loads a `torch.save` zip archive into Python containers of NumPy arrays, without torch.

    Args:
        path: a `.pth`, `.pt` or `.bin` file written by `torch.save` (torch >= 1.6 zip format).

    Returns:
        The saved object with every tensor as a NumPy array of its dtype (bfloat16 widened to
        float32); objects of classes the reader does not import are `Opaque` placeholders.
    """
    path = str(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a torch zip archive (torch >= 1.6). A legacy torch checkpoint must be re-saved "
            "once where torch is installed: torch.save(torch.load(path), new_path), or saved as safetensors."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one <prefix>/data.pkl in the archive; found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "<"
        if f"{prefix}byteorder" in archive.namelist():
            order = archive.read(f"{prefix}byteorder").decode().strip()
            if order not in ("little", "big"):
                raise ValueError(f"{path}: byteorder must be 'little' or 'big'; got {order!r}")
            byteorder = "<" if order == "little" else ">"
        with archive.open(pickles[0]) as file:
            try:
                return _Unpickler(file, archive, prefix, byteorder, path).load()
            except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as error:
                raise ValueError(f"{path}: cannot read the checkpoint's pickle: {error}") from error
