"""Reading what export.metadata.writer wrote, with flatbuffers, numpy and zipfile only.

No TensorFlow and no LiteRT: the edge benchmark and demo-video read labels and normalization
on devices where only LiteRT is installed. Flatbuffer tables are read by vtable slot, without
generated code.
"""

import io
import struct
import zipfile

import numpy as np
from flatbuffers import encode, number_types, packer
from flatbuffers.table import Table

from export.metadata.schema import (
    ACTIVATIONS, COLOR_SPACES, IMAGE_PROPERTIES, METADATA_ID, METADATA_NAME, NORMALIZATION_OPTIONS,
    SEGMENTER_METADATA_NAME, TENSOR_AXIS_LABELS, TENSOR_VALUE_LABELS, TFLITE_ID, check_tflite,
)


def read_metadata(model):
    """Reads what `add_metadata` wrote; imports no TensorFlow or LiteRT.

    Args:
        model: `.tflite` file content (bytes).

    Returns:
        None when the model has no "TFLITE_METADATA", else a dict with keys name, version,
        description, author, license (str or None), min_parser_version, labels (list of str,
        from the first output with a TENSOR_AXIS_LABELS file, or a class map's
        TENSOR_VALUE_LABELS file; [] when none), labelled_output (its index, or None), mean and std (tuples of floats), input_range ((min, max) or None),
        color_space ("RGB", "GRAYSCALE" or None) and activation ("none", "sigmoid", "softmax").

    Raises:
        ValueError: `model` is not a TFLite flatbuffer, or its metadata is malformed (wrong
            file identifier, a named label file missing from the zip archive).
    """
    data = check_tflite(model, "model")
    try:
        buffer = _find_metadata_buffer(data)
    except _CORRUPT as e:
        raise ValueError(f"model has file identifier {TFLITE_ID!r} but does not parse as a TFLite model: {e!r}.") from e
    if buffer is None:
        return None
    if len(buffer) < 8 or buffer[4:8] != METADATA_ID:
        raise ValueError(
            f"{METADATA_NAME} buffer has file identifier {bytes(buffer[4:8])!r}; expected {METADATA_ID!r}."
        )
    try:
        return _read_model_metadata(data, buffer)
    except _CORRUPT as e:
        raise ValueError(f"{METADATA_NAME} buffer ({len(buffer)} bytes, identifier {METADATA_ID!r}) does not parse as "
                         f"a ModelMetadata flatbuffer: {e!r}.") from e


# What reading past the end of a corrupt flatbuffer raises (flatbuffers' struct reads, our bounds checks).
_CORRUPT = (IndexError, TypeError, UnicodeDecodeError, struct.error, OverflowError)


def _read_model_metadata(data, buffer):
    """read_metadata's dict from the ModelMetadata flatbuffer `buffer` of the model `data`."""
    root = _root(buffer)
    result = {
        "name": _string(root, 0),
        "description": _string(root, 1),
        "version": _string(root, 2),
        "author": _string(root, 4),
        "license": _string(root, 5),
        "min_parser_version": _string(root, 7),
        "labels": [],
        "labelled_output": None,
        "mean": (),
        "std": (),
        "input_range": None,
        "color_space": None,
        "activation": "none",
    }
    subgraphs = _tables(root, 3)
    if not subgraphs:
        return result
    subgraph = subgraphs[0]
    inputs = _tables(subgraph, 2)
    if inputs:
        result.update(_read_input(inputs[0]))
    for j, output in enumerate(_tables(subgraph, 3)):
        names = [_string(f, 0) for f in _tables(output, 6)
                 if _scalar(f, 2, number_types.Int8Flags) in (TENSOR_AXIS_LABELS, TENSOR_VALUE_LABELS)]
        if names:
            result["labels"] = _read_labels(data, names[0])
            result["labelled_output"] = j
            break
    for custom in _tables(subgraph, 9):
        if _string(custom, 0) == SEGMENTER_METADATA_NAME:
            options = _root(_bytes(custom, 1))
            code = _scalar(options, 0, number_types.Int8Flags)
            if not 0 <= code < len(ACTIVATIONS):
                raise ValueError(f"{SEGMENTER_METADATA_NAME} has activation {code}; expected 0, 1 or 2.")
            result["activation"] = ACTIVATIONS[code]
    return result


# === Reading (flatbuffers tables by vtable slot; no generated code) ===


def _root(buf):
    return Table(buf, encode.Get(packer.uoffset, buf, 0))


def _field(tab, slot):
    return tab.Offset(4 + 2 * slot)


def _string(tab, slot):
    o = _field(tab, slot)
    return tab.String(o + tab.Pos).decode("utf-8") if o else None


def _scalar(tab, slot, flags, default=0):
    o = _field(tab, slot)
    return tab.Get(flags, o + tab.Pos) if o else default


def _table_at(tab, slot):
    o = _field(tab, slot)
    return Table(tab.Bytes, tab.Indirect(o + tab.Pos)) if o else None


def _vector(tab, o, item_size):
    """(start, length) of the vector at field offset `o`; IndexError when it runs past the buffer."""
    start, length = tab.Vector(o), tab.VectorLen(o)
    if start + item_size * length > len(tab.Bytes):
        raise IndexError(f"a vector of {length} x {item_size} bytes at byte {start} runs past the "
                         f"{len(tab.Bytes)}-byte buffer")
    return start, length


def _tables(tab, slot):
    o = _field(tab, slot)
    if not o:
        return []
    start, length = _vector(tab, o, 4)
    return [Table(tab.Bytes, tab.Indirect(start + 4 * i)) for i in range(length)]


def _floats_at(tab, slot):
    o = _field(tab, slot)
    if not o:
        return ()
    start, length = _vector(tab, o, 4)
    return tuple(float(v) for v in np.frombuffer(bytes(tab.Bytes[start:start + 4 * length]), "<f4"))


def _bytes(tab, slot):
    o = _field(tab, slot)
    if not o:
        return b""
    start, length = _vector(tab, o, 1)
    return bytes(tab.Bytes[start:start + length])


def _find_metadata_buffer(data):
    """The data of the buffer that Model.metadata "TFLITE_METADATA" names (schema.fbs slots:
    Model.buffers 4, Model.metadata 6; Metadata.name 0, .buffer 1; Buffer.data 0, .offset 1, .size 2)."""
    model = _root(data)
    buffers = None
    for entry in _tables(model, 6):
        if _string(entry, 0) != METADATA_NAME:
            continue
        buffers = buffers if buffers is not None else _tables(model, 4)
        index = _scalar(entry, 1, number_types.Uint32Flags)
        if index >= len(buffers):
            raise ValueError(f"{METADATA_NAME} names buffer {index}; expected one of the model's {len(buffers)}.")
        content = _bytes(buffers[index], 0)
        offset = _scalar(buffers[index], 1, number_types.Uint64Flags)
        if not content and offset > 1:
            content = bytes(data[offset:offset + _scalar(buffers[index], 2, number_types.Uint64Flags)])
        return content
    return None


def _read_input(tensor):
    """mean, std, input_range and color_space of an input TensorMetadata (slots: content 3,
    process_units 4, stats 5)."""
    result = {}
    content = _table_at(tensor, 3)
    if content is not None and _scalar(content, 0, number_types.Uint8Flags) == IMAGE_PROPERTIES:
        props = _table_at(content, 1)
        if props is not None:
            result["color_space"] = COLOR_SPACES.get(_scalar(props, 0, number_types.Int8Flags))
    for unit in _tables(tensor, 4):
        if _scalar(unit, 0, number_types.Uint8Flags) == NORMALIZATION_OPTIONS:
            options = _table_at(unit, 1)
            result["mean"], result["std"] = _floats_at(options, 0), _floats_at(options, 1)
            break
    stats = _table_at(tensor, 5)
    if stats is not None:
        high, low = _floats_at(stats, 0), _floats_at(stats, 1)
        if high and low:
            result["input_range"] = (low[0], high[0])
    return result


def _read_labels(data, name):
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            text = archive.read(name).decode("utf-8")
    except Exception as e:  # BadZipFile, KeyError, an unsupported compression, a corrupt deflate stream, ...
        raise ValueError(
            f"the metadata names label file {name!r}, but no zip archive after the flatbuffer holds it readably "
            f"({type(e).__name__}: {e}); expected the UTF-8 file appended as add_metadata writes it."
        ) from None
    return [line for line in text.splitlines() if line.strip()]
