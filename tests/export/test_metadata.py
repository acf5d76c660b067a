"""export.metadata: TFLite metadata that MediaPipe's ImageSegmenter reads, and our reader."""

import io
import os
import subprocess
import sys
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from export import metadata
from export.tflite import convert
from kseg.data.samples import isbi_sample_dirs
from kseg.models import build_model
from tests.testing import segment_with_mediapipe

SIZE = 64
LABELS = ["background", "membrane", "cell"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_unet(channels=3, num_classes=3):
    return build_model("unet", num_classes=num_classes, input_shape=(SIZE, SIZE, channels), filters=8, depth=2)


@pytest.fixture(scope="module")
def unet():
    return small_unet()


@pytest.fixture(scope="module")
def logits_model(unet):
    """float32 [1, 64, 64, 3] raw pixels -> float32 logits [1, 64, 64, 3]."""
    return convert(unet)


def isbi_rgb():
    """The first vendored ISBI image at the model size, as false-colour RGB uint8 [H, W, 3].

    Distinct channels (grey, its negative, its transpose) make a swapped channel order fail.
    """
    grey = np.asarray(Image.open(isbi_sample_dirs()[0] / "0.png").convert("L").resize((SIZE, SIZE), Image.BILINEAR))
    return np.ascontiguousarray(np.stack([grey, 255 - grey, grey.T], axis=-1))


def run_tflite(content, image):
    """All outputs of a single-input `.tflite` model on `image` [1, H, W, C]."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    interpreter.set_tensor(inp["index"], np.asarray(image, dtype=inp["dtype"]))
    interpreter.invoke()
    return [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def check_category_mask(category, confidence):
    """MediaPipe's class map equals the argmax of its own confidence masks on every pixel without
    an exact tie. (Those masks equal the activated scores to 1e-5, checked separately; two
    classes closer than that may rank either way in the two float32 computations.)"""
    top2 = np.sort(confidence, axis=-1)[..., -2:]
    untied = top2[..., 1] > top2[..., 0]
    assert untied.mean() > 0.99
    np.testing.assert_array_equal(category[untied], confidence.argmax(-1)[untied])


# === Writing and reading back ===


def test_round_trip_keeps_the_model_and_its_outputs(logits_model):
    content = metadata.add_metadata(
        logits_model, labels=LABELS, name="kseg-unet", version="1.2", description="ISBI membranes",
        author="kseg tests", mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0), input_range=(0, 255),
        activation="softmax", license="Apache-2.0",
    )
    assert content[4:8] == b"TFL3"
    info = metadata.read_metadata(content)
    assert info == {
        "name": "kseg-unet", "version": "1.2", "description": "ISBI membranes", "author": "kseg tests",
        "license": "Apache-2.0", "min_parser_version": "1.5.0", "labels": LABELS, "labelled_output": 0,
        "mean": (1.0, 2.0, 3.0), "std": (4.0, 5.0, 6.0), "input_range": (0.0, 255.0), "color_space": "RGB",
        "activation": "softmax",
    }
    assert metadata.read_metadata(logits_model) is None

    # The labels travel as an uncompressed zip member after the flatbuffer (MediaPipe maps it in place).
    (member,) = zipfile.ZipFile(io.BytesIO(content)).infolist()
    assert (member.filename, member.compress_type) == ("labels.txt", zipfile.ZIP_STORED)
    assert member.header_offset >= len(logits_model)

    from ai_edge_litert import schema_py_generated as schema

    def entry_names(model):
        return [m.name for m in schema.ModelT.InitFromPackedBuf(model, 0).metadata]

    assert entry_names(content) == entry_names(logits_model) + [b"TFLITE_METADATA"]  # converter entries kept

    image = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype("float32")
    (before,), (after,) = run_tflite(logits_model, image), run_tflite(content, image)
    assert np.abs(before).max() > 0
    np.testing.assert_array_equal(after, before)


def test_activation_none_writes_no_segmenter_options(logits_model):
    info = metadata.read_metadata(metadata.add_metadata(logits_model, labels=LABELS, name="u", version="1"))
    assert info["activation"] == "none"
    assert info["min_parser_version"] == "1.0.0"  # no custom_metadata (a 1.5.0 field)
    assert (info["mean"], info["std"], info["input_range"]) == ((0.0,), (1.0,), (0.0, 255.0))


def test_adding_metadata_twice_replaces_it(logits_model):
    first = metadata.add_metadata(logits_model, labels=LABELS, name="u", version="1", activation="softmax")
    second = metadata.add_metadata(first, labels=["a", "b", "c"], name="v", version="2", activation="sigmoid")
    info = metadata.read_metadata(second)
    assert (info["name"], info["version"], info["labels"], info["activation"]) == ("v", "2", ["a", "b", "c"], "sigmoid")
    assert len(zipfile.ZipFile(io.BytesIO(second)).infolist()) == 1
    assert abs(len(second) - len(first)) < 64


def test_layout_matches_the_schema_as_mediapipe_generated_code_reads_it(logits_model):
    """An independent reader (MediaPipe's generated metadata code) sees the tables and enums we meant."""
    pytest.importorskip("mediapipe", reason="mediapipe is not installed: its generated schema code is the reference")
    from ai_edge_litert import schema_py_generated as schema
    from mediapipe.tasks.metadata import image_segmenter_metadata_schema_py_generated as segmenter_fb
    from mediapipe.tasks.metadata import metadata_schema_py_generated as metadata_fb

    content = metadata.add_metadata(logits_model, labels=LABELS, name="u", version="3", activation="softmax")
    model = schema.Model.GetRootAs(content, 0)
    (entry,) = [model.Metadata(i) for i in range(model.MetadataLength()) if model.Metadata(i).Name() == b"TFLITE_METADATA"]
    data = model.Buffers(entry.Buffer()).DataAsNumpy()
    assert (data.ctypes.data - np.frombuffer(content, np.uint8).ctypes.data) % 16 == 0
    assert metadata_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(data.tobytes(), 0)
    meta = metadata_fb.ModelMetadataT.InitFromPackedBuf(data.tobytes(), 0)
    assert (meta.name, meta.version, meta.author, meta.minParserVersion) == (b"u", b"3", b"kseg", b"1.5.0")
    (subgraph,) = meta.subgraphMetadata
    (image,) = subgraph.inputTensorMetadata
    assert image.content.contentPropertiesType == metadata_fb.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == metadata_fb.ColorSpaceType.RGB
    size = image.content.contentProperties.defaultSize
    assert (size.width, size.height) == (SIZE, SIZE)
    (unit,) = image.processUnits
    assert unit.optionsType == metadata_fb.ProcessUnitOptions.NormalizationOptions
    assert (list(unit.options.mean), list(unit.options.std)) == ([0.0], [1.0])
    assert (list(image.stats.min), list(image.stats.max)) == ([0.0], [255.0])
    (masks,) = subgraph.outputTensorMetadata
    assert masks.content.contentPropertiesType == metadata_fb.ContentProperties.ImageProperties
    assert (masks.content.range.min, masks.content.range.max) == (1, 2)
    (labels,) = masks.associatedFiles
    assert (labels.name, labels.type) == (b"labels.txt", metadata_fb.AssociatedFileType.TENSOR_AXIS_LABELS)
    (custom,) = subgraph.customMetadata
    assert custom.name == b"SEGMENTER_METADATA"
    options = bytes(np.asarray(custom.data, dtype=np.uint8))
    assert segmenter_fb.ImageSegmenterOptions.ImageSegmenterOptionsBufferHasIdentifier(options, 0)
    assert segmenter_fb.ImageSegmenterOptionsT.InitFromPackedBuf(options, 0).activation == segmenter_fb.Activation.SOFTMAX


def test_read_metadata_imports_no_tensorflow_nor_litert(logits_model, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(metadata.add_metadata(logits_model, labels=LABELS, name="u", version="1", activation="softmax"))
    code = (
        "import sys\n"
        "for name in ('tensorflow', 'keras', 'ai_edge_litert', 'mediapipe'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "from export.metadata import read_metadata\n"
        f"info = read_metadata(open({str(path)!r}, 'rb').read())\n"
        "print(info['labels'], info['activation'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{LABELS} softmax"


@pytest.fixture(scope="module")
def uint8_model(unet):
    """The U-Net behind a uint8 [1, 64, 64, 3] input (a camera frame as it is)."""
    image = keras.Input((SIZE, SIZE, 3), batch_size=1, dtype="uint8", name="image")
    fixed = keras.Model(image, unet(keras.ops.cast(image, "float32")))
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def test_uint8_input_model(uint8_model):
    content = metadata.add_metadata(uint8_model, labels=LABELS, name="u8", version="1", activation="softmax")
    info = metadata.read_metadata(content)
    assert (info["labels"], info["mean"], info["std"], info["color_space"]) == (LABELS, (0.0,), (1.0,), "RGB")
    frame = isbi_rgb()[None]
    (before,), (after,) = run_tflite(uint8_model, frame), run_tflite(content, frame)
    np.testing.assert_array_equal(after, before)


def test_labels_go_to_the_output_with_that_many_classes():
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    two_outputs = keras.Model(inputs, [keras.layers.Conv2D(5, 1)(features), keras.layers.Conv2D(2, 1)(features)])
    content = convert(two_outputs)
    shapes = [o.shape[-1] for o in run_tflite(content, np.zeros((1, SIZE, SIZE, 3)))]
    assert sorted(shapes) == [2, 5]
    info = metadata.read_metadata(metadata.add_metadata(content, labels=["no", "yes"], name="u", version="1"))
    assert info["labels"] == ["no", "yes"]
    assert shapes[info["labelled_output"]] == 2
    with pytest.raises(ValueError, match=r"labels has 3 entries.*output shapes are \[\[1, 64, 64, [25]\], \[1, 64, 64, [25]\]\]"):
        metadata.add_metadata(content, labels=LABELS, name="u", version="1")


def test_labels_name_the_values_of_a_class_map_output():
    from export.tflite import convert_variant, device_model

    model = build_model("unet", num_classes=3, input_shape=(SIZE, SIZE, 3), filters=8, depth=2)
    content = convert_variant(device_model(model, input_type="uint8", output="class_map"), "fp32")
    outputs = run_tflite(content, np.zeros((1, SIZE, SIZE, 3), np.uint8))
    info = metadata.read_metadata(metadata.add_metadata(content, labels=LABELS, name="u", version="1"))
    assert info["labels"] == list(LABELS)
    assert outputs[info["labelled_output"]].dtype == np.int32  # the class map, not the confidence map


# === Bad input ===


def test_label_count_mismatch_names_what_was_seen_and_expected(logits_model):
    with pytest.raises(ValueError, match=r"labels has 2 entries; expected one per class.*\[\[1, 64, 64, 3\]\]"):
        metadata.add_metadata(logits_model, labels=["a", "b"], name="u", version="1")


def test_not_a_tflite_flatbuffer_is_refused(logits_model):
    for bad in (b"", b"not a model at all", logits_model[:4] + b"XXXX" + logits_model[8:]):
        with pytest.raises(ValueError, match="tflite_model is not a TFLite flatbuffer: expected file identifier b'TFL3'"):
            metadata.add_metadata(bad, labels=LABELS, name="u", version="1")
        with pytest.raises(ValueError, match="model is not a TFLite flatbuffer"):
            metadata.read_metadata(bad)
    truncated = logits_model[:100]
    with pytest.raises(ValueError, match="tflite_model has file identifier b'TFL3' but does not parse"):
        metadata.add_metadata(truncated, labels=LABELS, name="u", version="1")
    with pytest.raises(ValueError, match="model has file identifier b'TFL3' but does not parse"):
        metadata.read_metadata(truncated)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "relu"}, "activation must be one of none, sigmoid, softmax; got 'relu'"),
        ({"mean": (0.0, 0.0), "std": (1.0, 1.0)}, "mean has 2 values and std 2; expected the same count, 1 or 3"),
        ({"mean": (0.0,), "std": (0.0,)}, "std != 0"),
        ({"input_range": (255, 0)}, "input_range must have min < max"),
        ({"labels": ["a", "", "c"]}, r"labels\[1\] is ''"),
        ({"labels": "abc"}, "labels must be a list of class names"),
        ({"version": 1}, "version must be a string; got int 1"),
    ],
)
def test_bad_arguments_are_refused(logits_model, kwargs, message):
    arguments = {"labels": LABELS, "name": "u", "version": "1", **kwargs}
    with pytest.raises(ValueError, match=message):
        metadata.add_metadata(logits_model, **arguments)


def test_label_file_missing_from_the_model_is_reported(logits_model):
    content = metadata.add_metadata(logits_model, labels=LABELS, name="u", version="1")
    flatbuffer_only = content[: zipfile.ZipFile(io.BytesIO(content)).infolist()[0].header_offset]
    with pytest.raises(ValueError, match="label file 'labels.txt'.*no zip archive"):
        metadata.read_metadata(flatbuffer_only)


# === MediaPipe ImageSegmenter as the client ===


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_mediapipe_applies_the_recorded_activation_to_logits(unet, logits_model, activation, tmp_path):
    content = metadata.add_metadata(logits_model, labels=LABELS, name="u", version="1", activation=activation)
    image = isbi_rgb()
    labels, confidence, category = segment_with_mediapipe(content, image, tmp_path)
    assert labels == LABELS
    (logits,) = run_tflite(content, image[None].astype("float32"))
    logits = logits[0]
    expected = softmax(logits) if activation == "softmax" else 1 / (1 + np.exp(-logits))
    assert np.abs(expected - expected.mean()).max() > 1e-3  # a constant map would hide a broken pipeline
    np.testing.assert_allclose(confidence, expected, rtol=0, atol=1e-5)
    keras_logits = unet(image[None].astype("float32"), training=False).numpy()[0]
    np.testing.assert_allclose(softmax(keras_logits), softmax(logits), rtol=0, atol=1e-5)
    check_category_mask(category, confidence)


def test_mediapipe_with_a_model_that_ends_in_softmax_and_activation_none(unet, tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    probabilities = convert(keras.Model(inputs, keras.layers.Softmax()(unet(inputs))))
    content = metadata.add_metadata(probabilities, labels=LABELS, name="u", version="1", activation="none")
    image = isbi_rgb()
    labels, confidence, category = segment_with_mediapipe(content, image, tmp_path)
    assert labels == LABELS
    (expected,) = run_tflite(content, image[None].astype("float32"))
    np.testing.assert_allclose(expected.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(confidence, expected[0], rtol=0, atol=1e-5)  # not softmax applied twice
    check_category_mask(category, confidence)


def test_mediapipe_with_a_uint8_input_model(uint8_model, tmp_path):
    content = metadata.add_metadata(uint8_model, labels=LABELS, name="u8", version="1", activation="softmax")
    image = isbi_rgb()
    labels, confidence, category = segment_with_mediapipe(content, image, tmp_path)
    assert labels == LABELS
    (logits,) = run_tflite(content, image[None])
    np.testing.assert_allclose(confidence, softmax(logits[0]), rtol=0, atol=1e-5)
    check_category_mask(category, confidence)


def test_grey_model_gets_grayscale_metadata_which_mediapipe_refuses(tmp_path):
    """MediaPipe's ImageSegmenter takes [1, H, W, 3 or 4] RGB inputs only (image_segmenter_graph.cc);
    the GRAYSCALE metadata is still right for other readers. A grey model reaches MediaPipe
    with an RGB input that converts to grey in the graph."""
    grey = convert(small_unet(channels=1, num_classes=2))
    content = metadata.add_metadata(grey, labels=["membrane", "cell"], name="u", version="1", activation="softmax")
    info = metadata.read_metadata(content)
    assert (info["color_space"], info["labels"]) == ("GRAYSCALE", ["membrane", "cell"])
    with pytest.raises(ValueError, match="channels = 3 or 4"):
        segment_with_mediapipe(content, isbi_rgb(), tmp_path)
