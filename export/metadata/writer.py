"""Writing segmentation metadata into a `.tflite` file (the layout is in export.metadata).

The ModelMetadata flatbuffer is built with our own table builder (no generated metadata code);
the model flatbuffer is unpacked and repacked with ai_edge_litert's schema, then a zip archive
with labels.txt is appended.
"""

import io
import zipfile

import flatbuffers
import numpy as np

from export.metadata.schema import (
    ACTIVATIONS, FEATURE_PROPERTIES, IMAGE_PROPERTIES, INPUT_TYPES, INTEGER_TYPES, LABELS_FILE, METADATA_ID,
    METADATA_NAME, NORMALIZATION_OPTIONS, SEGMENTER_ID, SEGMENTER_METADATA_NAME, TENSOR_AXIS_LABELS,
    TENSOR_VALUE_LABELS, TFLITE_ID, check_tflite,
)


def add_metadata(
    tflite_model,
    *,
    labels,
    name,
    version,
    description="",
    author="kseg",
    mean=(0.0,),
    std=(1.0,),
    input_range=(0.0, 255.0),
    activation="none",
    license=None,
):
    """Returns `tflite_model` with segmentation metadata and a label file that MediaPipe reads.

    kseg models take raw pixels in [0, 255] and normalize inside the graph, hence the defaults
    mean 0 and std 1 (MediaPipe then feeds the pixels unchanged). For uint8/int8 inputs the
    normalization is recorded too; readers apply it to float inputs only.

    Args:
        tflite_model: `.tflite` file content (bytes) with one image input [1, H, W, C],
            C in {1, 3, 4}, of type float32, uint8 or int8 (MediaPipe takes float32 and uint8
            with C in {3, 4} only).
        labels: class names, one per channel of the output they describe; they go to the first
            output [1, H, W, K] with K == len(labels) (MediaPipe reads the last output, so
            for MediaPipe that should be the model's only or last output).
        name: model name.
        version: model version string.
        description: free text.
        author: model author.
        mean: per-channel mean, 1 or C values; readers compute (pixel - mean) / std.
        std: per-channel standard deviation, as many values as `mean`.
        input_range: (min, max) of the input values the model expects, stored as Stats.
        activation: what a reader applies to the labelled output: "none" (the graph already ends
            in softmax/sigmoid, or raw scores are wanted), "softmax" or "sigmoid" (the graph
            returns logits).
        license: license text, or None to leave it out.

    Returns:
        The new `.tflite` file content (bytes): the flatbuffer (file identifier "TFL3") with a
        "TFLITE_METADATA" entry, followed by a zip archive holding labels.txt. Replaces existing
        TFLite metadata, keeps every other metadata entry.

    Raises:
        ValueError: `tflite_model` is not a TFLite flatbuffer, its input is not one image tensor,
            no output's last dimension equals len(labels), or an argument is malformed.

    Example:
    >>> content = add_metadata(content, labels=["background", "cell"], name="unet",
    ...                        version="1", activation="softmax")  # doctest: +SKIP
    >>> read_metadata(content)["labels"]  # doctest: +SKIP
    ['background', 'cell']
    """
    from ai_edge_litert import schema_py_generated as schema

    data = check_tflite(tflite_model, "tflite_model")
    labels = _check_labels(labels)
    for arg, value in (("name", name), ("version", version), ("description", description), ("author", author)):
        if not isinstance(value, str):
            raise ValueError(f"{arg} must be a string; got {type(value).__name__} {value!r}.")
    if license is not None and not isinstance(license, str):
        raise ValueError(f"license must be a string or None; got {type(license).__name__} {license!r}.")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}.")
    low, high = _check_range(input_range)

    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as e:  # struct / index errors from a truncated or corrupt flatbuffer
        raise ValueError(f"tflite_model has file identifier {TFLITE_ID!r} but does not parse as a TFLite model: {e!r}.") from e
    if not model.subgraphs:
        raise ValueError("tflite_model has no subgraph; expected one with an image input.")
    if any(b.offset > 1 for b in model.buffers or []):
        raise ValueError(
            "tflite_model keeps tensor data outside the flatbuffer (buffer offsets, used for "
            "models over 2 GB); expected the data inside the flatbuffer."
        )
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1:
        raise ValueError(f"tflite_model has {len(graph.inputs)} inputs; expected one image input [1, H, W, C].")
    image = graph.tensors[graph.inputs[0]]
    shape = [int(d) for d in image.shape]
    if len(shape) != 4 or shape[0] != 1 or shape[3] not in (1, 3, 4):
        raise ValueError(f"tflite_model input has shape {shape}; expected [1, H, W, C] with C in 1, 3 or 4.")
    if image.type not in INPUT_TYPES:
        raise ValueError(
            f"tflite_model input has TFLite type {image.type}; expected one of "
            f"{', '.join(INPUT_TYPES.values())}."
        )
    channels = shape[3]
    mean, std = _check_normalization(mean, std, channels)

    outputs = [[int(d) for d in graph.tensors[i].shape] for i in graph.outputs]
    labelled = next((j for j, s in enumerate(outputs) if len(s) == 4 and s[-1] == len(labels)), None)
    label_type = TENSOR_AXIS_LABELS
    if labelled is None:  # a class map [1, H, W] of class ids: the labels name its values
        label_type = TENSOR_VALUE_LABELS
        labelled = next((j for j, (s, i) in enumerate(zip(outputs, graph.outputs))
                         if len(s) == 3 and graph.tensors[i].type in INTEGER_TYPES), None)
    if labelled is None:
        raise ValueError(
            f"labels has {len(labels)} entries; expected one per class, i.e. K of an output "
            f"[1, H, W, K] or an integer class map [1, H, W]: the model's output shapes are {outputs}."
        )

    metadata = _build_metadata(
        name=name,
        version=version,
        description=description,
        author=author,
        license=license,
        image_size=(shape[2], shape[1]),
        color_space=2 if channels == 1 else 1,
        mean=mean,
        std=std,
        input_range=(low, high),
        output_names=[_name(graph.tensors[i]) for i in graph.outputs],
        labelled=labelled,
        label_type=label_type,
        activation=activation,
    )
    _set_metadata_buffer(model, schema, metadata)
    flat = _pack_model(model, schema, size_hint=len(data) + len(metadata))
    return _append_zip(flat, {LABELS_FILE: "".join(f"{label}\n" for label in labels).encode("utf-8")})



# === Argument checks ===


def _check_labels(labels):
    if isinstance(labels, str) or not hasattr(labels, "__len__"):
        raise ValueError(f"labels must be a list of class names; got {type(labels).__name__} {labels!r}.")
    labels = list(labels)
    if not labels:
        raise ValueError("labels is empty; expected one class name per output channel.")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip() or "\n" in label or "\r" in label:
            raise ValueError(f"labels[{i}] is {label!r}; expected a non-empty, single-line string.")
    return labels


def _check_range(input_range):
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be (min, max); got {input_range!r}.") from None
    if not low < high:
        raise ValueError(f"input_range must have min < max; got {input_range!r}.")
    return low, high


def _check_normalization(mean, std, channels):
    mean = [float(v) for v in np.atleast_1d(mean)]
    std = [float(v) for v in np.atleast_1d(std)]
    if len(mean) not in (1, channels) or len(std) != len(mean):
        raise ValueError(
            f"mean has {len(mean)} values and std {len(std)}; expected the same count, 1 or "
            f"{channels} (the input channels)."
        )
    if any(s == 0 or not np.isfinite(s) for s in std) or not all(np.isfinite(mean)):
        raise ValueError(f"mean {mean} / std {std} must be finite with std != 0.")
    return mean, std


def _name(table):
    """The `name` of an object-API table (bytes when unpacked, str when we set it)."""
    name = table.name
    return name.decode("utf-8") if isinstance(name, bytes) else (name or "")



# === Writing: metadata flatbuffer ===


def _build_metadata(
    *, name, version, description, author, license, image_size, color_space, mean, std, input_range,
    output_names, labelled, activation, label_type=TENSOR_AXIS_LABELS,
):
    """ModelMetadata flatbuffer (file identifier "M001"), built children first."""
    b = flatbuffers.Builder(1024)

    # Input: image properties, normalization, stats.
    size = _table(b, [(0, "uint32", image_size[0]), (1, "uint32", image_size[1])])
    image_props = _table(b, [(0, "int8", color_space), (1, "offset", size)])
    content = _table(b, [(0, "uint8", IMAGE_PROPERTIES), (1, "offset", image_props)])
    norm = _table(b, [(0, "offset", _floats(b, mean)), (1, "offset", _floats(b, std))])
    unit = _table(b, [(0, "uint8", NORMALIZATION_OPTIONS), (1, "offset", norm)])
    stats = _table(b, [(0, "offset", _floats(b, [input_range[1]])), (1, "offset", _floats(b, [input_range[0]]))])
    input_meta = _table(b, [
        (0, "offset", b.CreateString("image")),
        (1, "offset", b.CreateString("Input image [1, H, W, C]; (pixel - mean) / std gives the tensor values.")),
        (3, "offset", content),
        (4, "offset", _offsets(b, [unit])),
        (5, "offset", stats),
    ])

    # Outputs: the labelled one is a stack of per-class grey maps (content range = dims 1..2).
    output_metas = []
    for j, tensor_name in enumerate(output_names):
        if j == labelled and label_type == TENSOR_VALUE_LABELS:
            label_file = _table(b, [
                (0, "offset", b.CreateString(LABELS_FILE)),
                (1, "offset", b.CreateString("Class names: value v of the class map is line v.")),
                (2, "int8", TENSOR_VALUE_LABELS),
            ])
            plain = _table(b, [(0, "uint8", FEATURE_PROPERTIES), (1, "offset", _table(b, []))])
            output_metas.append(_table(b, [
                (0, "offset", b.CreateString("class_map")),
                (1, "offset", b.CreateString("Class id of each pixel [1, H, W].")),
                (3, "offset", plain),
                (6, "offset", _offsets(b, [label_file])),
            ]))
        elif j == labelled:
            label_file = _table(b, [
                (0, "offset", b.CreateString(LABELS_FILE)),
                (1, "offset", b.CreateString("Class names, one per output channel.")),
                (2, "int8", TENSOR_AXIS_LABELS),
            ])
            grey = _table(b, [(0, "int8", 2)])
            dims = _table(b, [(0, "int32", 1), (1, "int32", 2)])
            masks = _table(b, [(0, "uint8", IMAGE_PROPERTIES), (1, "offset", grey), (2, "offset", dims)])
            what = {"none": "class scores", "softmax": "logits (apply softmax)", "sigmoid": "logits (apply sigmoid)"}
            output_metas.append(_table(b, [
                (0, "offset", b.CreateString("segmentation_masks")),
                (1, "offset", b.CreateString(f"Per-class {what[activation]} [1, H, W, K].")),
                (3, "offset", masks),
                (6, "offset", _offsets(b, [label_file])),
            ]))
        else:
            feature = _table(b, [])
            plain = _table(b, [(0, "uint8", FEATURE_PROPERTIES), (1, "offset", feature)])
            output_metas.append(_table(b, [(0, "offset", b.CreateString(tensor_name)), (3, "offset", plain)]))

    custom = None
    if activation != "none":
        entry = _table(b, [
            (0, "offset", b.CreateString(SEGMENTER_METADATA_NAME)),
            (1, "offset", _aligned_bytes(b, _segmenter_options(activation), 16)),
        ])
        custom = _offsets(b, [entry])

    subgraph = _table(b, [
        (0, "offset", b.CreateString(name)),
        (2, "offset", _offsets(b, [input_meta])),
        (3, "offset", _offsets(b, output_metas)),
        (9, "offset", custom),
    ])
    # The largest schema version among the fields used (metadata_version.cc): custom_metadata
    # arrived in 1.5.0, everything else here is 1.0.0.
    min_parser_version = "1.5.0" if custom is not None else "1.0.0"
    root = _table(b, [
        (0, "offset", b.CreateString(name)),
        (1, "offset", b.CreateString(description)),
        (2, "offset", b.CreateString(version)),
        (3, "offset", _offsets(b, [subgraph])),
        (4, "offset", b.CreateString(author)),
        (5, "offset", b.CreateString(license) if license is not None else None),
        (7, "offset", b.CreateString(min_parser_version)),
    ])
    b.Finish(root, file_identifier=METADATA_ID)
    return b.Output()


def _segmenter_options(activation):
    """MediaPipe's ImageSegmenterOptions flatbuffer (image_segmenter_metadata_schema.fbs, "V001")."""
    b = flatbuffers.Builder(64)
    version = b.CreateString("1.0.0")
    b.Finish(_table(b, [(0, "int8", ACTIVATIONS.index(activation)), (1, "offset", version)]), file_identifier=SEGMENTER_ID)
    return b.Output()


_PREPEND_SLOT = {
    "offset": "PrependUOffsetTRelativeSlot",
    "int8": "PrependInt8Slot",
    "uint8": "PrependUint8Slot",
    "int32": "PrependInt32Slot",
    "uint32": "PrependUint32Slot",
}


def _table(b, fields):
    """One table from [(slot, kind, value)]; None values are left out (the field is absent)."""
    fields = [f for f in fields if f[2] is not None]
    b.StartObject(max((slot for slot, _, _ in fields), default=-1) + 1)
    for slot, kind, value in fields:
        # Default 0 is never equal to an offset; for scalars it drops zeros, which read back as 0.
        getattr(b, _PREPEND_SLOT[kind])(slot, value, 0)
    return b.EndObject()


def _offsets(b, items):
    b.StartVector(4, len(items), 4)
    for item in reversed(items):
        b.PrependUOffsetTRelative(item)
    return b.EndVector()


def _floats(b, values):
    return b.CreateNumpyVector(np.asarray(values, dtype="<f4"))


def _aligned_bytes(b, data, alignment):
    """A [ubyte] vector whose first byte sits at a multiple of `alignment` (schema force_align)."""
    array = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    b.Prep(alignment, len(array))
    return b.CreateNumpyVector(array)


# === Writing: the model flatbuffer and the zip ===


class _AlignedBuffer:
    """A Model.buffers entry that packs its data 16-byte aligned, as the TFLite schema asks
    (`data:[ubyte] (force_align: 16)`); the generated BufferT.Pack aligns to 1 byte only."""

    def __init__(self, buffer, schema):
        self.data, self.offset, self.size = buffer.data, buffer.offset, buffer.size
        self._schema = schema

    def Pack(self, b):  # the object API's method name
        data = None
        if self.data is not None:
            data = _aligned_bytes(b, np.asarray(self.data, dtype=np.uint8).ravel(), 16)
        self._schema.BufferStart(b)
        if data is not None:
            self._schema.BufferAddData(b, data)
        self._schema.BufferAddOffset(b, self.offset)
        self._schema.BufferAddSize(b, self.size)
        return self._schema.BufferEnd(b)


def _set_metadata_buffer(model, schema, metadata):
    """Points Model.metadata "TFLITE_METADATA" at a buffer holding `metadata` (replacing an old one)."""
    model.buffers = model.buffers or []
    model.metadata = model.metadata or []
    for entry in model.metadata:
        if _name(entry) == METADATA_NAME:
            model.buffers[entry.buffer].data = np.frombuffer(metadata, dtype=np.uint8)
            return
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)


def _pack_model(model, schema, size_hint):
    model.buffers = [_AlignedBuffer(buffer, schema) for buffer in model.buffers]
    # Sized up front: growing a flatbuffers.Builder copies everything written so far each time.
    b = flatbuffers.Builder(size_hint + (1 << 20))
    b.Finish(model.Pack(b), file_identifier=TFLITE_ID)
    return b.Output()


def _append_zip(flat, files):
    """`flat` followed by a zip archive of `files` (STORED: readers map the files in place).
    The archive's offsets count from the start of the whole file, as appending with zipfile does."""
    out = io.BytesIO()
    out.write(flat)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
    return out.getvalue()

