"""A U-Net for phones: a MobileNetV3 (or depthwise-separable) encoder and a light decoder.

    input    [B, H, W, C]  raw pixels in [0, 255]; C = 1 is repeated to 3 for MobileNetV3
    encoder  features at strides 2, 4, 8, 16, 32
    decoder  bilinear x2 + concat skip + separable block, from stride 32 up to stride 2
    output   [B, H, W, K]  logits, bilinearly upsampled from stride 2

Every op is one the TFLite GPU delegate runs (conv, depthwise conv, hard-swish, mean,
bilinear resize, concat, add, mul), so the exported model can run fully on a phone's GPU.
"""

import keras
from keras import layers

from kseg.backbones import tap_strides
from kseg.backbones.application_weights import build_application
from kseg.models.unet import blocks
from kseg.models.base import SegmentationModel, check_choice, check_kwargs, dtype_policy_scope

ENCODERS = ("mobilenetv3_small", "mobilenetv3_large", "separable")


@keras.saving.register_keras_serializable(package="kseg")
class MobileUNet(SegmentationModel):
    """U-Net with a mobile encoder, for real-time segmentation on phones.

    The "mobilenetv3_*" encoders are `keras.applications` MobileNetV3 (Howard et al. 2019)
    without the classification top; their own preprocessing maps [0, 255] to [-1, 1], so
    `encoder_weights="imagenet"` works as it is (weights are downloaded by Keras; or give the
    path of the `..._no_top_v2.h5` file Keras downloads, `kseg.backbones.application_weights`). The
    "separable" encoder is a U-Net contracting path of depthwise-separable blocks with
    strided depthwise convs instead of pooling (Howard et al. 2017).

    Args:
        num_classes: K, channels of the output logits.
        input_shape: (H, W, C) with static H and W divisible by 32 (phones use fixed sizes).
        encoder: one of "mobilenetv3_small", "mobilenetv3_large", "separable".
        encoder_weights: None, "imagenet" or the path of keras.applications' MobileNetV3
            weights file without the top (MobileNetV3 encoders only).
        decoder_filters: channels of the decoder blocks at strides 16, 8, 4, 2.
        encoder_filters: channels of the "separable" encoder at strides 1, 2, 4, 8, 16, 32.
        name: model name.

    Returns:
        A `keras.Model` mapping images [B, H, W, C] in [0, 255] to logits [B, H, W, K].

    Example:
    >>> model = MobileUNet(num_classes=3, input_shape=(64, 64, 3), encoder="separable")
    >>> tuple(model.output.shape)
    (None, 64, 64, 3)
    """

    def __init__(
        self,
        num_classes,
        input_shape=(256, 256, 3),
        encoder="mobilenetv3_small",
        encoder_weights=None,
        decoder_filters=(96, 64, 32, 24),
        encoder_filters=(16, 24, 32, 64, 96, 128),
        name="mobile_unet",
        **kwargs,
    ):
        check_kwargs("MobileUNet", kwargs)
        input_shape = tuple(input_shape)
        _validate(num_classes, input_shape, encoder, encoder_weights, decoder_filters, encoder_filters)

        # === Functional graph ===
        with dtype_policy_scope(kwargs.get("dtype")):
            inputs = keras.Input(shape=input_shape, name="image")
            if encoder == "separable":
                features = _separable_encoder(inputs, encoder_filters)
            else:
                features = _mobilenet_encoder(inputs, encoder, encoder_weights)
            x = features[32]
            for stride, filters in zip((16, 8, 4, 2), decoder_filters):
                x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{stride}")(x)
                x = layers.Concatenate(name=f"concat{stride}")([x, features[stride]])
                x = blocks.separable_block(x, filters, name=f"dec{stride}")
            x = blocks.logits_head(x, num_classes, name="logits_s2")
            outputs = layers.UpSampling2D(2, interpolation="bilinear", dtype="float32", name="logits")(x)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.image_shape = input_shape
        self.encoder = encoder
        self.encoder_weights = encoder_weights
        self.decoder_filters = tuple(decoder_filters)
        self.encoder_filters = tuple(encoder_filters)

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "input_shape": list(self.image_shape),
            "encoder": self.encoder,
            # Weights are restored from the saved file, never downloaded again on reload.
            "encoder_weights": None,
            "decoder_filters": list(self.decoder_filters),
            "encoder_filters": list(self.encoder_filters),
            **self.base_config(),
        }


def _mobilenet_encoder(inputs, encoder, weights):
    """Taps a keras.applications MobileNetV3 at strides 2..32: {stride: [B, H/s, W/s, C]}."""
    height, width = inputs.shape[1], inputs.shape[2]
    factory = keras.applications.MobileNetV3Small if encoder == "mobilenetv3_small" else keras.applications.MobileNetV3Large
    backbone = build_application(factory, weights, "encoder_weights", input_shape=(height, width, 3),
                                 include_top=False, include_preprocessing=True)
    # The last layer at each resolution carries the richest features of that scale.
    taps = tap_strides(backbone, (2, 4, 8, 16, 32), height, width)
    extractor = keras.Model(backbone.input, [taps[s] for s in (2, 4, 8, 16, 32)], name=f"{encoder}_encoder")
    x = inputs
    if inputs.shape[-1] == 1:
        x = layers.Concatenate(name="grey_to_rgb")([inputs, inputs, inputs])
    return dict(zip((2, 4, 8, 16, 32), extractor(x)))


def _separable_encoder(inputs, filters):
    """A contracting path of depthwise-separable blocks: {stride: [B, H/s, W/s, C]}."""
    x = blocks.pixel_normalization(inputs)
    x = blocks.conv_bn_act(x, filters[0], batch_norm=True, activation="relu", name="stem")
    x = blocks.separable_block(x, filters[0], name="enc1")
    features = {}
    for level, stride in enumerate((2, 4, 8, 16, 32), start=1):
        x = blocks.separable_block(x, filters[level], strides=2, name=f"enc{stride}_down")
        x = blocks.separable_block(x, filters[level], name=f"enc{stride}")
        features[stride] = x
    return features


def _validate(num_classes, input_shape, encoder, weights, decoder_filters, encoder_filters):
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int; got {num_classes!r}.")
    check_choice("encoder", encoder, ENCODERS)
    if len(input_shape) != 3 or input_shape[0] is None or input_shape[1] is None:
        raise ValueError(f"`input_shape` must be a static (H, W, C); got {input_shape!r}.")
    if input_shape[0] % 32 or input_shape[1] % 32:
        raise ValueError(f"input height and width must be divisible by 32; got input_shape={input_shape!r}.")
    if encoder != "separable" and input_shape[2] not in (1, 3):
        raise ValueError(f"MobileNetV3 encoders take 1 or 3 input channels; got input_shape={input_shape!r}.")
    if weights is not None and not isinstance(weights, str):
        raise ValueError(f'`encoder_weights` must be None, "imagenet" or a weights file path; got {weights!r}.')
    if weights is not None and encoder == "separable":
        raise ValueError(f'`encoder_weights={weights!r}` needs a MobileNetV3 encoder; encoder="separable" has none.')
    if len(decoder_filters) != 4:
        raise ValueError(f"`decoder_filters` needs 4 values (strides 16, 8, 4, 2); got {decoder_filters!r}.")
    if len(encoder_filters) != 6:
        raise ValueError(f"`encoder_filters` needs 6 values (strides 1..32); got {encoder_filters!r}.")
