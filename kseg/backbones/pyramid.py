"""Backbones that expose a feature pyramid.

    image     [B, H, W, 3]  raw pixels in [0, 255] (H, W divisible by 32)
    "P{n}"    [B, H / 2^n, W / 2^n, C_n]  for n = 2..5 (strides 4, 8, 16, 32)

"resnet50" and "mobilenet_v3_large"/"mobilenet_v3_small" come from `keras.applications`
(`weights="imagenet"` loads the ImageNet weights where they can be downloaded, or the path of
the file keras.applications downloads: `kseg.backbones.application_weights`); "mit_b0" ..
"mit_b5" are SegFormer's Mix Transformer encoders (`kseg.backbones.mix_transformer`, no pretrained
weights in kseg); "small" is a light plain-conv network for tests and CPU training.
"""

import keras
from keras import layers

from kseg.backbones.application_weights import build_application
from kseg.backbones.mix_transformer import mix_transformer

LEVELS = (2, 3, 4, 5)
MIT_BACKBONES = tuple(f"mit_b{i}" for i in range(6))
BACKBONES = ("resnet50", "mobilenet_v3_large", "mobilenet_v3_small", *MIT_BACKBONES, "small")
# keras.applications.ResNet50's last block of each stage (strides 4, 8, 16, 32).
_RESNET50_TAPS = ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")
# Caffe-style preprocessing that keras.applications.resnet.preprocess_input applies (BGR means).
_RESNET_BGR_MEAN = (103.939, 116.779, 123.68)


def tap_strides(model, strides, height, width):
    """The last layer output of `model` at each stride: {stride: tensor} (keras.applications taps).

    Raises ValueError naming the strides that have no layer.
    """
    taps = {}
    for layer in model.layers:
        shape = layer.output.shape
        if len(shape) != 4 or shape[1] is None or height % shape[1] or width % shape[2]:
            continue
        stride = height // shape[1]
        if stride in strides and width // shape[2] == stride:
            taps[stride] = layer.output
    missing = sorted(set(strides) - taps.keys())
    if missing:
        raise ValueError(f"could not find {model.name} features at strides {missing} for input {height}x{width}.")
    return taps


DEFAULT_FILTERS = (32, 64, 128, 256)


def build_backbone(name, input_shape, weights=None, filters=DEFAULT_FILTERS):
    """A keras.Model from an image [B, H, W, 3] (raw pixels) to {"P2": ..., "P5": ...}.

    The model is a plain functional keras.Model named "{name}_backbone" (the layout of the
    `.keras` files that hold it); its `kind` attribute keeps `name` (`backbone_config`).

    Args:
        name: one of BACKBONES.
        input_shape: (H, W, 3), H and W divisible by 32.
        weights: None, "imagenet" or the path of keras.applications' ImageNet weights file
            (`..._notop.h5`) (keras.applications backbones).
        filters: channels of the "small" backbone's four stages.

    Example:
        >>> backbone = build_backbone("small", (64, 64, 3))
        >>> backbone.kind, tuple(backbone.output["P5"].shape)
        ('small', (None, 2, 2, 256))
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}.")
    height, width, channels = input_shape
    if height is None or width is None or height % 32 or width % 32 or channels != 3:
        raise ValueError(f"backbone input_shape must be (H, W, 3) with H and W divisible by 32; got {input_shape!r}.")
    if weights is not None and (name == "small" or name in MIT_BACKBONES):
        raise ValueError(f'`weights` is for keras.applications backbones; the {name!r} backbone has none in kseg.')
    image = keras.Input(tuple(input_shape), name="image")
    if name == "resnet50":
        features = _resnet50(image, weights)
    elif name.startswith("mobilenet_v3"):
        features = _mobilenet_v3(image, name, weights)
    elif name in MIT_BACKBONES:
        features = _mix_transformer(image, name[len("mit_"):])
    else:
        features = _small(image, filters)
    model = keras.Model(image, {f"P{n}": features[n] for n in LEVELS}, name=f"{name}_backbone")
    model.kind = name if tuple(filters) == DEFAULT_FILTERS else None  # None: not rebuilt by its name alone
    return model


def backbone_config(backbone):
    """How a model's config records its backbone: one of kseg's named backbones by its name
    (the name and the model's input shape rebuild it), any other keras.Model serialized."""
    if getattr(backbone, "kind", None) in BACKBONES:
        return backbone.kind
    return keras.saving.serialize_keras_object(backbone)


def backbone_from_config(value, input_shape, weights=None):
    """The backbone a model's config records (`backbone_config`), built for `input_shape`.

    Args:
        value: a BACKBONES name (built at `input_shape`, so a model rebuilt at another size
            gets its backbone too), or a serialized keras.Model.
        input_shape: (H, W, 3) of the model.
        weights: for a name: None, "imagenet" or a keras.applications weights file.
    """
    if isinstance(value, str):
        return build_backbone(value, input_shape, weights=weights)
    if weights is not None:
        raise ValueError(f"`backbone_weights` goes with a backbone name; got a serialized backbone and {weights!r}.")
    return keras.saving.deserialize_keras_object(value)


def check_backbone(backbone, input_shape, argument="backbone"):
    """Raises ValueError unless `backbone` is a keras.Model from (H, W, 3) = `input_shape` images to
    {"P2": ..., "P5": ...}."""
    if not isinstance(backbone, keras.Model):
        raise ValueError(f"`{argument}` must be a keras.Model (e.g. kseg.backbones.build_backbone(...)); "
                         f"got {type(backbone).__name__} {backbone!r}.")
    shape = tuple(backbone.input.shape[1:]) if not isinstance(backbone.input, (list, dict)) else None
    outputs = backbone.output if isinstance(backbone.output, dict) else {}
    missing = [f"P{n}" for n in LEVELS if f"P{n}" not in outputs]
    if shape != tuple(input_shape) or missing:
        raise ValueError(f"`{argument}` {backbone.name} takes {shape} images and gives {sorted(outputs)}; expected "
                         f"{tuple(input_shape)} images and P2..P5 features.")


def _resnet50(image, weights):
    height, width = image.shape[1], image.shape[2]
    net = build_application(keras.applications.ResNet50, weights, "backbone_weights", include_top=False,
                            input_shape=(height, width, 3))
    extractor = keras.Model(net.input, [net.get_layer(n).output for n in _RESNET50_TAPS], name="resnet50")
    # RGB [0, 255] -> BGR minus the ImageNet means, what the weights were trained on.
    x = ReverseChannels(name="rgb_to_bgr")(image)
    x = layers.Normalization(mean=_RESNET_BGR_MEAN, variance=(1.0, 1.0, 1.0), name="imagenet_means")(x)
    return dict(zip(LEVELS, extractor(x)))


@keras.saving.register_keras_serializable(package="kseg")
class ReverseChannels(layers.Layer):
    """[..., C] -> the channels in reverse order (RGB <-> BGR)."""

    def call(self, x):
        return keras.ops.flip(x, axis=-1)


def _mobilenet_v3(image, name, weights):
    height, width = image.shape[1], image.shape[2]
    factory = keras.applications.MobileNetV3Large if name == "mobilenet_v3_large" else keras.applications.MobileNetV3Small
    net = build_application(factory, weights, "backbone_weights", input_shape=(height, width, 3), include_top=False,
                            include_preprocessing=True)
    taps = tap_strides(net, (4, 8, 16, 32), height, width)
    extractor = keras.Model(net.input, [taps[2**n] for n in LEVELS], name=name)
    return dict(zip(LEVELS, extractor(image)))


def _mix_transformer(image, variant):
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(image)  # as SegFormer
    encoder = mix_transformer((image.shape[1], image.shape[2], 3), variant)
    return dict(zip(LEVELS, encoder(x)))


def _small(image, filters):
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(image)
    x = _conv_bn_relu(x, filters[0] // 2, 3, 2, "stem")
    features = {}
    for level, f in zip(LEVELS, filters):
        x = _conv_bn_relu(x, f, 3, 2, f"stage{level}_down")
        x = _conv_bn_relu(x, f, 3, 1, f"stage{level}_conv")
        features[level] = x
    return features


def _conv_bn_relu(x, filters, kernel, strides, name):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)  # short CPU runs: stats settle fast
    return layers.ReLU(name=f"{name}_relu")(x)
