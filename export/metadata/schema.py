"""What the metadata writer and reader share: entry names, file identifiers, schema enums, the file check.

Enum values are those of metadata_schema.fbs (tflite-support, MediaPipe) and of the TFLite
schema.fbs; see export.metadata for the file layout.
"""

METADATA_NAME = "TFLITE_METADATA"  # Model.metadata entry that MediaPipe / Task Library look up
SEGMENTER_METADATA_NAME = "SEGMENTER_METADATA"  # custom metadata holding the activation
LABELS_FILE = "labels.txt"
ACTIVATIONS = ("none", "sigmoid", "softmax")  # MediaPipe's Activation enum: NONE=0, SIGMOID=1, SOFTMAX=2

TFLITE_ID = b"TFL3"
METADATA_ID = b"M001"
SEGMENTER_ID = b"V001"

# Enums of metadata_schema.fbs.
COLOR_SPACES = {1: "RGB", 2: "GRAYSCALE"}
FEATURE_PROPERTIES, IMAGE_PROPERTIES = 1, 2  # ContentProperties union
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
TENSOR_VALUE_LABELS = 3
INTEGER_TYPES = (2, 3, 4)  # TensorType INT32, UINT8, INT64: a class map's value types

# TFLite TensorType values (tensorflow/lite/schema/schema.fbs) that an image input may have.
INPUT_TYPES = {0: "float32", 3: "uint8", 9: "int8"}


def check_tflite(content, arg):
    """`content` as bytes; ValueError naming `arg` unless it is a TFLite flatbuffer (identifier "TFL3").

    Args:
        content: the `.tflite` file content (bytes, bytearray or memoryview).
        arg: the argument's name for the error message.

    Returns:
        The content (bytes or bytearray).
    """
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise ValueError(f"{arg} must be the .tflite file content (bytes); got {type(content).__name__}.")
    content = bytes(content) if isinstance(content, memoryview) else content
    if len(content) < 8 or content[4:8] != TFLITE_ID:
        raise ValueError(
            f"{arg} is not a TFLite flatbuffer: expected file identifier {TFLITE_ID!r} at bytes 4-8, "
            f"got {bytes(content[4:8])!r} ({len(content)} bytes in all)."
        )
    return content
