"""Keras model -> TFLite flatbuffers: fp32, fp16, dynamic-range and full-integer int8 variants.

Every exported graph has static shapes (batch 1, fixed H x W): the GPU delegate needs them.
Only builtin TFLite ops are allowed unless Flex is asked for explicitly: ai-edge-litert's
interpreter and phones without the large select-TF-ops library cannot run Flex ops, so a graph
that would need them fails here, naming them.

`device_model` puts the phone-side pre- and post-processing into the graph: a uint8 frame in
(optionally RGB for a grey model), and logits, probabilities or a class map + confidence map
out.
"""

import contextlib
import io
import re

import keras
import numpy as np
import tensorflow as tf

from kseg.ops.checks import check_choice

VARIANTS = ("fp32", "fp16", "dynamic", "int8")
INPUT_TYPES = ("float32", "uint8")
OUTPUTS = ("logits", "probabilities", "class_map")
INT8_IO = ("uint8", "float32")
# ITU-R BT.601 luma, the weights Pillow's convert("L") uses: a grey model trained on
# Pillow-decoded images sees the same values when the phone feeds it RGB.
LUMA = (0.299, 0.587, 0.114)


class FlexOpsError(RuntimeError):
    """The model needs TensorFlow (Flex / select-TF) ops that TFLite builtins lack."""

    def __init__(self, ops, detail):
        self.ops = sorted(set(ops))
        super().__init__(
            f"conversion needs non-builtin TensorFlow ops {self.ops or '(unnamed)'}; "
            "expected builtin TFLite ops only. Rewrite those ops with builtins, or allow Flex "
            f"explicitly (allow_flex=True, `kseg export --allow-flex`). Converter said: {detail}"
        )


def static_input_shape(model, image_size=None):
    """[1, H, W, C] for `model`, with `image_size` (H, W) filling its dynamic H and W.

    A model built for one size (static H and W) takes only that size: another `image_size`
    raises a ValueError naming both.
    """
    shape = list(model.input.shape)
    if len(shape) != 4:
        raise ValueError(f"expected a model with one image input [B, H, W, C]; got input shape {shape}.")
    if image_size is not None:
        size = tuple(int(v) for v in image_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image_size {image_size!r} (`--image-size`): expected (H, W) positive ints.")
        fixed = tuple(shape[1:3])
        if None not in fixed and size != fixed:
            raise ValueError(f"image_size {size[0]}x{size[1]} (`--image-size`): the model was built for "
                             f"{fixed[0]}x{fixed[1]} inputs only; expected {fixed[0]}x{fixed[1]} or no --image-size.")
        shape[1], shape[2] = size
    if shape[1] is None or shape[2] is None or shape[3] is None:
        raise ValueError(
            f"the model's input {shape} has dynamic dimensions; pass image_size=(H, W) (`--image-size H W`)."
        )
    return [1] + shape[1:]


def device_model(model, image_size=None, input_type="float32", output="logits", rgb_input=False):
    """`model` at batch 1 and a fixed size, with the phone-side pre/post-processing in the graph.

    Args:
        model: a kseg model (raw pixels [0, 255] in, float32 logits [B, H, W, K] out).
        image_size: (H, W) for models built with dynamic H, W.
        input_type: "float32" (raw pixels as floats) or "uint8" (a camera frame as it is).
        output: "logits"; "probabilities" (softmax); or "class_map", which returns two
            outputs: the class map [1, H, W] (int32, ARG_MAX) and the confidence map
            [1, H, W] (float32, the top class's probability).
        rgb_input: for a one-channel (grey) model, take RGB and convert it to grey in the
            graph with the BT.601 luma weights (a 1x1 convolution).

    Returns:
        A Keras model with a batch-1 input named "image".
    """
    check_choice("input_type", input_type, INPUT_TYPES)
    check_choice("output", output, OUTPUTS)
    shape = static_input_shape(model, image_size)
    channels = shape[3]
    if rgb_input and channels != 1:
        raise ValueError(f"rgb_input=True converts RGB to grey for a 1-channel model; this model takes {channels} channels.")
    in_channels = 3 if rgb_input else channels
    # A batch-1 Input in front of the model fixes every shape in the traced graph, which
    # also removes the SHAPE/PACK ops that a dynamic batch adds around transposed convs.
    image = keras.Input(shape=(shape[1], shape[2], in_channels), batch_size=1, dtype=input_type, name="image")
    x = image
    if input_type != "float32":
        x = keras.ops.cast(x, "float32")
    if rgb_input:
        x = keras.ops.conv(x, keras.ops.reshape(keras.ops.convert_to_tensor(LUMA, "float32"), (1, 1, 3, 1)))
    logits = model(x, training=False)
    if output == "logits":
        outputs = logits
    elif output == "probabilities":
        outputs = keras.ops.softmax(logits, axis=-1)
    else:
        outputs = _ClassMap(name="class_map")(logits)
    return keras.Model(image, outputs, name=model.name)


class _ClassMap(keras.layers.Layer):
    """logits -> [class map (int32 ARG_MAX), confidence (top softmax probability)].

    tf.argmax directly: keras.ops.argmax adds sign-bit ops (BitwiseAnd) for -0.0 ties,
    which are not TFLite builtins.
    """

    def call(self, logits):
        confidence = tf.reduce_max(tf.nn.softmax(logits, axis=-1), axis=-1)
        return [tf.argmax(logits, axis=-1, output_type=tf.int32), confidence]


def convert(model, image_size=None, allow_flex=False, optimizations=None, supported_types=None):
    """Converts `model` as it is (float in, float out) at batch 1 and a fixed size.

    Args:
        model: a Keras model with one image input.
        image_size: (H, W) for models built with dynamic H, W.
        allow_flex: also allow select-TF (Flex) ops.
        optimizations: passed to the converter (e.g. [tf.lite.Optimize.DEFAULT]).
        supported_types: passed to target_spec.supported_types (e.g. [tf.float16]).

    Returns:
        The `.tflite` file content (bytes).

    Raises:
        FlexOpsError: the graph needs ops outside the TFLite builtins and allow_flex is False.
    """
    converter = _converter(device_model(model, image_size), allow_flex)
    if optimizations:
        converter.optimizations = list(optimizations)
    if supported_types:
        converter.target_spec.supported_types = list(supported_types)
    return _convert(converter)


def convert_variant(fixed_model, variant, representative=None, int8_io="uint8", allow_flex=False,
                    float_fallback=False, float_ops=(), float_layers=(), float_model=None):
    """Converts a batch-1 model (from `device_model`) to one of VARIANTS.

    Args:
        fixed_model: a Keras model with a static batch-1 input.
        variant: "fp32"; "fp16" (float16 weights, float32 compute where the runtime wants
            it); "dynamic" (int8 weights, float activations); "int8" (full integer: weights and
            activations, calibrated on `representative`).
        representative: for "int8", an iterable of input arrays shaped and typed like the
            model's input: real images, not noise (calibration sets the activation ranges).
        int8_io: for "int8", the type of the model's float inputs and outputs: "uint8"
            (quantized I/O; a uint8-input graph keeps its uint8 input) or "float32"
            (quantize/dequantize inside the graph). Integer outputs (class maps) stay int32.
        allow_flex: also allow select-TF (Flex) ops.
        float_fallback: for "int8", let ops without an int8 kernel (NMS, casts, integer
            index arithmetic) stay float instead of failing; every op with one is integer.
        float_ops: for "int8", TFLite op names (e.g. "EXP") kept float although an int8 kernel
            exists: the part of a graph where 8-bit activations cost accuracy (see
            `DETECTOR_FLOAT_OPS`). Implies float_fallback.
        float_layers: for "int8", names of Keras layers (at any depth) whose every op stays
            float (see `DETECTOR_FLOAT_LAYERS`). Implies float_fallback.
        float_model: with float_layers, the "fp32" bytes of the same model when already made
            (they name the layers' ops; otherwise a float conversion is made for that).

    Returns:
        The `.tflite` file content (bytes).
    """
    check_choice("variant", variant, VARIANTS)
    check_choice("int8_io", int8_io, INT8_IO)
    converter = _converter(fixed_model, allow_flex)
    if variant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if representative is None:
            raise ValueError("variant 'int8' needs `representative` images (real inputs, to calibrate activations).")
        samples = [np.asarray(a) for a in representative]
        if not samples:
            raise ValueError("variant 'int8' got an empty `representative` set; expected at least one image.")
        expected = tuple(fixed_model.input.shape)
        for i, sample in enumerate(samples):
            if sample.shape != expected:
                raise ValueError(f"representative image {i} has shape {sample.shape}; expected {expected}.")
        dtype = fixed_model.input.dtype
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s.astype(dtype)] for s in samples)
        selective = bool(float_ops or float_layers)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] + (
            [tf.lite.OpsSet.TFLITE_BUILTINS] if float_fallback or selective else []) + (
            [tf.lite.OpsSet.SELECT_TF_OPS] if allow_flex else []
        )
        io_type = tf.uint8 if int8_io == "uint8" else tf.float32
        if fixed_model.input.dtype == "float32":
            converter.inference_input_type = io_type
        if all(o.dtype == "float32" for o in fixed_model.outputs):
            converter.inference_output_type = io_type
        if selective:
            if int8_io != "float32":
                raise ValueError(f"float_ops {list(float_ops)} and float_layers {list(float_layers)} keep float32 "
                                 f"inputs and outputs; got int8_io={int8_io!r}, expected 'float32'.")
            float_model = float_model or (_convert(_converter(fixed_model, allow_flex)) if float_layers else None)
            nodes = layer_nodes(float_model, float_layers) if float_layers else []
            if float_layers and not nodes:
                raise ValueError(f"float_layers {list(float_layers)}: no op of the model is in these layers.")
            return _selective_int8(converter, samples, dtype, float_ops, nodes)
    return _convert(converter)


def layer_nodes(tflite_model, layers):
    """The tensor names of a float `.tflite` model that ops of the Keras layers `layers` write.

    A tensor name is its op's TensorFlow name scope, e.g.
    "model/mask_rcnn/box_roi_align_1/GatherV2" (fused ops join theirs with ";"); a layer matches
    a scope part equal to its name or to its name with the "_N" suffix TensorFlow adds when a
    name repeats. A model output is named after the signature ("StatefulPartitionedCall:3"),
    not its layer: the op that writes one counts as the layers' when one of its inputs does.
    The branches of IF and WHILE ops (other subgraphs) are searched too: a layer's control flow
    would otherwise be quantized.
    """
    from export.runtime import parse_model

    pattern = re.compile(r"(^|/)(%s)(_\d+)?/" % "|".join(map(re.escape, layers)))
    subgraphs = parse_model(tflite_model).subgraphs
    found = set()
    for index, graph in enumerate(subgraphs):  # the main graph, then the branches of its IF / WHILE ops
        names = [t.name.decode() if isinstance(t.name, bytes) else str(t.name) for t in graph.tensors]
        inside = {i for i, name in enumerate(names) if pattern.search(name)}
        if index == 0:
            outputs = set(graph.outputs)
            for op in graph.operators:  # operators are in execution order: inputs come first
                if any(i in inside for i in op.inputs) and all(o in outputs for o in op.outputs):
                    inside.update(op.outputs)
        found.update(names[i] for i in inside)
    return sorted(found)


def _selective_int8(converter, samples, dtype, float_ops, nodes):
    """Full-integer conversion with the ops named in `float_ops` and the nodes (tensor names)
    `nodes` left float (TFLite's quantization debugger builds the model with them denylisted)."""
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops),
                                                             denylisted_nodes=nodes)
    with contextlib.redirect_stdout(io.StringIO()):
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: ([s.astype(dtype)] for s in samples), debug_options=options)
        return debugger.get_nondebug_quantized_model()


def _converter(fixed_model, allow_flex):
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS] + (
        [tf.lite.OpsSet.SELECT_TF_OPS] if allow_flex else []
    )
    return converter


def _convert(converter):
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its SavedModel's captures
            return converter.convert()
    except Exception as e:  # the converter raises ConverterError, whose module moves between releases
        message = str(e)
        flex = re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)
        if flex or "flex" in message.lower():
            raise FlexOpsError(flex, message.splitlines()[0] if message else "") from e
        raise


def op_counts(tflite_model):
    """{op name: count} of a `.tflite` flatbuffer (bytes), e.g. {"CONV_2D": 23, ...}; Flex ops included."""
    from export.runtime import describe

    return describe(tflite_model)["ops"]


def run(tflite_model, image, num_threads=2):
    """Runs a single-input `.tflite` model on `image` [1, H, W, C]; returns its first output."""
    from export.runtime import Runner

    with Runner(tflite_model, num_threads=num_threads) as runner:
        return runner.run(np.asarray(image, dtype=runner.inputs[0]["dtype"]))[0]


# TFLite op names that a detector's int8 variant keeps float although they have an int8 kernel
# (`convert_variant(float_ops=...)`); the ops without one (NMS, casts, integer index arithmetic)
# stay float anyway. DIV: an int8 DIV whose divisor quantizes to its zero point stops LiteRT
# ("div.cc: data[i] != zero_point"); the trained shapes Mask R-CNN and Panoptic FPN hit it in
# their box and ROI geometry on held-out images.
# GATHER: ROI Align samples with it (see DETECTOR_FLOAT_LAYERS); the detectors use it nowhere in
# the backbone, FPN or heads, and the quantizer's node denylist misses one in the proposals.
# SPLIT, UNPACK, TOPK_V2: ops with several outputs, which the node denylist does not reach
# either; in the detectors they only carry box coordinates, scores and Panoptic FPN's stuff
# segment ids, which int8 rounds (segment 3 becomes 2.9: the listed segment loses its pixels).
DETECTOR_FLOAT_OPS = ("DIV", "GATHER", "SPLIT", "UNPACK", "TOPK_V2")
# Keras layers whose ops a detector's int8 variant keeps float: the geometry, sampling, pasting
# and fusion after the networks, and MaskFormer's small per-query heads. Measured with TFLite's
# quantization debugger on the trained shapes models, calibrated on their training images (RMSE
# of each op's output in its own quanta): ROI Align's GATHER 1785 and the mask paste's clipped
# coordinates 254 (Mask R-CNN); the fusion's id arithmetic up to 1e9 (Panoptic FPN); MaskFormer's
# inference 182 and its mask-embedding matmul 7 (mask logits off by up to 3.9); the worst op of
# a backbone, FPN or head elsewhere, an RPN box-delta conv, 9. On 12 held-out shapes images
# (benchmarks/detector_variants.py), int8 mask AP / PQ below Keras with only ROI Align and
# pasting float: Mask R-CNN 6.82 points; adding "proposals" and "detections": 0.54; MaskFormer
# with "inference" only: 2.18, adding "heads": 0.95. Backbones, FPNs, the RPN, box, mask and
# semantic heads and MaskFormer's pixel and transformer decoders stay integer.
DETECTOR_FLOAT_LAYERS = ("proposals", "box_roi_align", "detections", "mask_roi_align", "masks", "fusion", "inference",
                         "heads")


def detector_model(model):
    """A kseg MaskRCNN (or TorchvisionMaskRCNN), PanopticFPN or MaskFormer as the batch-1 Keras
    model that is converted: float32 image [1, H, W, 3] named "image" in, the detector's output
    dict out.

    A Mask R-CNN graph is `model`'s rebuilt with `roi_align_method="gather"` (builtin ops; it
    agrees with crop_and_resize) and the same weights.
    """
    from kseg.models import MaskFormer, MaskRCNN, PanopticFPN, TorchvisionMaskRCNN

    if isinstance(model, (MaskRCNN, PanopticFPN, TorchvisionMaskRCNN)):
        twin = type(model).from_config({**model.get_config(), "roi_align_method": "gather"})
        twin.set_weights(model.get_weights())
    elif isinstance(model, MaskFormer):  # builtin ops already
        twin = model
    else:
        raise TypeError(f"expected a kseg MaskRCNN, PanopticFPN or MaskFormer; got {type(model).__name__}")
    image = keras.Input((*model.image_size, 3), batch_size=1, name="image")
    return keras.Model(image, twin(image), name=model.name)


def detector_tflite(model, variant="fp32", representative=None, float_ops=None, float_layers=None, float_model=None):
    """A kseg MaskRCNN (or TorchvisionMaskRCNN), PanopticFPN or MaskFormer as builtin-op TFLite bytes, batch 1.

    Args:
        model: the Keras detector.
        variant: one of VARIANTS. "int8" is integer in the backbone, FPN and heads (every op
            with an int8 kernel), float where there is none (NMS, index arithmetic) and in
            `float_ops`; its input and outputs stay float32 (images, boxes, masks).
        representative: for "int8": float32 images [1, H, W, 3] at the model's size, real
            ones (e.g. the run's training images) that calibrate the activation ranges.
        float_ops: for "int8", TFLite op names kept float (default DETECTOR_FLOAT_OPS).
        float_layers: for "int8", Keras layer names whose ops stay float (default
            DETECTOR_FLOAT_LAYERS).
        float_model: for "int8", this model's "fp32" bytes when already converted (saves a
            conversion).

    Returns:
        The `.tflite` bytes; the signature keeps the Keras dict's output names ("boxes",
        "scores", ...). Raises FlexOpsError if conversion needs Flex ops.
    """
    float_ops = DETECTOR_FLOAT_OPS if float_ops is None else tuple(float_ops)
    float_layers = DETECTOR_FLOAT_LAYERS if float_layers is None else tuple(float_layers)
    int8 = variant == "int8"
    return convert_variant(detector_model(model), variant, representative=representative, int8_io="float32",
                           float_fallback=True, float_ops=float_ops if int8 else (),
                           float_layers=float_layers if int8 else (), float_model=float_model if int8 else None)


def compare_detections(reference, got, image_size, mask_threshold=0.5):
    """How far one image's detections from a converted detector are from the reference's.

    Detections with near-equal scores may come out in either order, so each reference
    detection is matched to the unused detection of the same class with the nearest box.

    Args:
        reference, got: output dicts of a detector at batch 1 ("boxes" [1, D, 4], "classes",
            "masks" [1, D, H, W], "num_detections" [1]; arrays or tensors).
        image_size: (H, W); box errors are a fraction of max(H, W).

    Returns:
        {"count": (reference count, got count), "matched": same-class matches, "unmatched":
        reference detections with no same-class partner, "max_box_error": the largest box
        coordinate difference of a match over max(H, W), "mask_ious": IoU of each matched
        pair's masks at `mask_threshold` (1.0 when both are empty)}.
    """
    ref = {k: np.asarray(v)[0] for k, v in reference.items()}
    out = {k: np.asarray(v)[0] for k, v in got.items()}
    n, m = int(ref["num_detections"]), int(out["num_detections"])
    unused, box_error, ious = set(range(m)), 0.0, []
    for j in range(n):
        candidates = [i for i in unused if out["classes"][i] == ref["classes"][j]]
        if not candidates:
            continue
        i = min(candidates, key=lambda i: np.abs(out["boxes"][i] - ref["boxes"][j]).max())
        unused.remove(i)
        box_error = max(box_error, float(np.abs(out["boxes"][i] - ref["boxes"][j]).max()))
        a, b = ref["masks"][j] >= mask_threshold, out["masks"][i] >= mask_threshold
        union = (a | b).sum()
        ious.append(1.0 if union == 0 else float((a & b).sum() / union))
    return {"count": (n, m), "matched": len(ious), "unmatched": n - len(ious),
            "max_box_error": box_error / max(image_size), "mask_ious": ious}


def panoptic_agreement(a, b):
    """Fraction of pixels on which two panoptic maps agree, up to a renaming of segment ids
    (ids are labels: detections with near-equal scores may be numbered in either order).
    Each id of `a` is paired with the id of `b` covering most of it, one-to-one; void stays 0."""
    a, b = np.asarray(a), np.asarray(b)
    pairs, counts = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1, return_counts=True)
    mapping, taken = {0: 0}, {0}
    for (x, y), _ in sorted(zip(pairs.T.tolist(), counts), key=lambda t: -t[1]):
        if x not in mapping and y not in taken:
            mapping[x] = y
            taken.add(y)
    ids, inverse = np.unique(a, return_inverse=True)
    renamed = np.array([mapping.get(v, -1) for v in ids.tolist()])[inverse.ravel()]
    return float((renamed == b.ravel()).mean())
