"""TFLite model metadata for segmentation models: labels, normalization and output activation.

MediaPipe's ImageSegmenter (and the TFLite Task Library) read this metadata: without it a
float32 model does not load ("it requires specifying NormalizationOptions metadata") and has no
labels. `add_metadata` writes it with our own flatbuffer builder; `read_metadata` reads it back
with flatbuffers, numpy and zipfile only (no TensorFlow, no LiteRT), so the edge benchmark can
use it on devices where only LiteRT is installed.

File layout written by `add_metadata` (the TFLite metadata convention):

    [ TFLite flatbuffer "TFL3" ][ zip archive (STORED): labels.txt ]
      Model.metadata += {name: "TFLITE_METADATA", buffer: i}
      Model.buffers[i].data = ModelMetadata flatbuffer, file identifier "M001"

ModelMetadata (metadata_schema.fbs, schema 1.5.0, tensorflow/tflite-support and
google-ai-edge/mediapipe mediapipe/tasks/metadata/):

    name, description, version, author, license, min_parser_version
    subgraph_metadata[0]:
      input_tensor_metadata[0]  "image"
        content: ImageProperties(color_space RGB | GRAYSCALE, default_size W x H)
        process_units: [NormalizationOptions(mean[C or 1], std[C or 1])]
        stats: Stats(min [input_range[0]], max [input_range[1]])
      output_tensor_metadata[j] (one per model output)
        the output whose last dimension is len(labels): "segmentation_masks",
          content ImageProperties(GRAYSCALE), range [1, 2] (H and W), associated_files
          [labels.txt, TENSOR_AXIS_LABELS]; the others: FeatureProperties, tensor name
      custom_metadata: [{name: "SEGMENTER_METADATA", data: ImageSegmenterOptions "V001"
        flatbuffer (activation SIGMOID | SOFTMAX)}] when activation is not "none"

How MediaPipe uses it (mediapipe/tasks/cc/vision/image_segmenter/image_segmenter_graph.cc,
vision/utils/image_tensor_specs.cc): the activation comes only from the "SEGMENTER_METADATA"
custom metadata (absent means NONE: confidence masks are the raw outputs); labels come from the
TENSOR_AXIS_LABELS file of the *last* output's metadata and masks from the *last* output
tensor; float32 inputs need NormalizationOptions (1 or 3 values; pixels in [0, 255] are mapped
to [(0 - mean) / std, (255 - mean) / std]); the input must be [1, H, W, 3 or 4] uint8/float32
with color space RGB. A grey (1-channel) model therefore gets truthful GRAYSCALE metadata here,
which other readers use, but MediaPipe's ImageSegmenter refuses to load it.

Modules: `schema` (names, identifiers and enums both sides share), `writer` (add_metadata:
needs ai_edge_litert's schema), `reader` (read_metadata: flatbuffers, numpy and zipfile only).
"""

from export.metadata.reader import read_metadata
from export.metadata.schema import ACTIVATIONS, LABELS_FILE, METADATA_NAME, SEGMENTER_METADATA_NAME
from export.metadata.writer import add_metadata

__all__ = ["ACTIVATIONS", "add_metadata", "read_metadata"]
