"""A U-Net for phones: a MobileNetV3, inverted-residual or separable encoder and a light decoder.

    input    [B, H, W, C]  raw pixels in [0, 255]; C = 1 is repeated to 3 for MobileNetV3
    encoder  features at strides 2, 4, 8, 16, 32
    decoder  bilinear x2 + concat skip + separable block, from stride 32 up to stride 2
             (`output_stride=2`) or 4
    output   [B, H, W, K]  logits, bilinearly upsampled from `output_stride`

Every op is one the TFLite GPU delegate runs (conv, depthwise conv, hard-swish, mean,
bilinear resize, concat, add, mul), so the exported model can run fully on a phone's GPU.
The "inverted_residual" and "separable" encoders use ReLU6 only (no hard-swish, no
squeeze-excite mean/mul), so their int8 export runs every op on XNNPACK's int8 kernels.
"""

import keras
from keras import layers

from kseg.backbones import tap_strides
from kseg.backbones.application_weights import build_application
from kseg.models.unet import blocks
from kseg.models.base import SegmentationModel, check_kwargs, dtype_policy_scope
from kseg.ops.checks import check_choice

ENCODERS = ("mobilenetv3_small", "mobilenetv3_large", "inverted_residual", "separable")


@keras.saving.register_keras_serializable(package="kseg")
class MobileUNet(SegmentationModel):
    """U-Net with a mobile encoder, for real-time segmentation on phones.

    The "mobilenetv3_*" encoders are `keras.applications` MobileNetV3 (Howard et al. 2019)
    without the classification top; their own preprocessing maps [0, 255] to [-1, 1], so
    `encoder_weights="imagenet"` works as it is (weights are downloaded by Keras; or give the
    path of the `..._no_top_v2.h5` file Keras downloads, `kseg.backbones.application_weights`). The
    "separable" encoder is a U-Net contracting path of depthwise-separable blocks with
    strided depthwise convs instead of pooling (Howard et al. 2017). The "inverted_residual"
    encoder is a MobileNetV2-style stack (Sandler et al. 2018) of expand 1x1 -> depthwise 3x3
    -> linear project 1x1 blocks with residual adds, ReLU6 only: unlike MobileNetV3's
    hard-swish and squeeze-excite, every op has an int8 kernel in XNNPACK. On x86, int8 gains
    little on depthwise and 1x1 convs of 16-40 channels; `fused_stages=5, output_stride=4`
    (full 3x3 convs, no op at stride 2 but the stem) gives an int8 model about 2x faster than
    its fp32 (benchmarks/mobile_encoder.py).

    Args:
        num_classes: K, channels of the output logits.
        input_shape: (H, W, C) with static H and W divisible by 32 (phones use fixed sizes).
        encoder: one of "mobilenetv3_small", "mobilenetv3_large", "inverted_residual",
            "separable".
        encoder_weights: None, "imagenet" or the path of keras.applications' MobileNetV3
            weights file without the top (MobileNetV3 encoders only).
        decoder_filters: channels of the decoder blocks at strides 16, 8, 4, 2 (16, 8, 4 when
            `output_stride=4`).
        encoder_filters: channels of the "separable" encoder at strides 1, 2, 4, 8, 16, 32;
            for "inverted_residual": the stride-2 stem conv, then the stages at strides
            2, 4, 8, 16, 32.
        encoder_depths: blocks per "inverted_residual" stage at strides 2, 4, 8, 16, 32; the
            stride-2 stage may have 0 (the stem alone).
        expansion: channel expansion factor of the "inverted_residual" blocks (the first
            stage, at stride 2, has none).
        fused_stages: how many leading "inverted_residual" stages (from stride 2) use fused
            blocks, a full 3x3 conv in place of the 1x1 expansion + depthwise 3x3 (Tan and Le
            2021, EfficientNetV2): more FLOPs, but int8 kernels run them far faster than
            small-channel depthwise and 1x1 convs.
        output_stride: 2 (default) or 4: the stride of the logits before the final bilinear
            upsampling. 4 skips every decoder op at stride 2, where small-channel ops are
            bound by memory traffic and gain nothing from int8.
        name: model name.

    Returns:
        A `keras.Model` mapping images [B, H, W, C] in [0, 255] to logits [B, H, W, K].

    Example:
    >>> model = MobileUNet(num_classes=3, input_shape=(64, 64, 3), encoder="separable")
    >>> tuple(model.output.shape)
    (None, 64, 64, 3)
    >>> fused = MobileUNet(num_classes=2, input_shape=(64, 64, 3), encoder="inverted_residual",
    ...                    fused_stages=5, expansion=2, output_stride=4, decoder_filters=(64, 48, 24))
    >>> tuple(fused.output.shape)
    (None, 64, 64, 2)
    """

    def __init__(
        self,
        num_classes,
        input_shape=(256, 256, 3),
        encoder="mobilenetv3_small",
        encoder_weights=None,
        decoder_filters=(96, 64, 32, 24),
        encoder_filters=(16, 24, 32, 64, 96, 128),
        encoder_depths=(1, 2, 3, 3, 2),
        expansion=4,
        fused_stages=0,
        output_stride=2,
        name="mobile_unet",
        **kwargs,
    ):
        check_kwargs("MobileUNet", kwargs)
        input_shape = tuple(input_shape)
        _validate(num_classes, input_shape, encoder, encoder_weights, decoder_filters, encoder_filters)
        _validate_inverted_residual(encoder_depths, expansion, fused_stages)
        if output_stride not in (2, 4):
            raise ValueError(f"`output_stride` must be 2 or 4; got {output_stride!r}.")
        decoder_strides = tuple(s for s in (16, 8, 4, 2) if s >= output_stride)
        if len(decoder_filters) != len(decoder_strides):
            raise ValueError(f"`decoder_filters` needs {len(decoder_strides)} values (strides "
                             f"{', '.join(map(str, decoder_strides))}); got {decoder_filters!r}.")

        # === Functional graph ===
        with dtype_policy_scope(kwargs.get("dtype")):
            inputs = keras.Input(shape=input_shape, name="image")
            if encoder == "separable":
                features = _separable_encoder(inputs, encoder_filters)
            elif encoder == "inverted_residual":
                features = _inverted_residual_encoder(inputs, encoder_filters, encoder_depths, expansion,
                                                      fused_stages)
            else:
                features = _mobilenet_encoder(inputs, encoder, encoder_weights)
            x = features[32]
            for stride, filters in zip(decoder_strides, decoder_filters):
                x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{stride}")(x)
                x = layers.Concatenate(name=f"concat{stride}")([x, features[stride]])
                x = blocks.separable_block(x, filters, name=f"dec{stride}")
            x = blocks.logits_head(x, num_classes, name=f"logits_s{output_stride}")
            outputs = layers.UpSampling2D(output_stride, interpolation="bilinear", dtype="float32", name="logits")(x)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.image_shape = input_shape
        self.encoder = encoder
        self.encoder_weights = encoder_weights
        self.decoder_filters = tuple(decoder_filters)
        self.encoder_filters = tuple(encoder_filters)
        self.encoder_depths = tuple(encoder_depths)
        self.expansion = expansion
        self.fused_stages = fused_stages
        self.output_stride = output_stride

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "input_shape": list(self.image_shape),
            "encoder": self.encoder,
            # Weights are restored from the saved file, never downloaded again on reload.
            "encoder_weights": None,
            "decoder_filters": list(self.decoder_filters),
            "encoder_filters": list(self.encoder_filters),
            "encoder_depths": list(self.encoder_depths),
            "expansion": self.expansion,
            "fused_stages": self.fused_stages,
            "output_stride": self.output_stride,
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


def _inverted_residual_encoder(inputs, filters, depths, expansion, fused_stages):
    """MobileNetV2-style stages of inverted residual blocks, ReLU6 only: {stride: [B, H/s, W/s, C]}."""
    x = blocks.pixel_normalization(inputs)
    x = layers.Conv2D(filters[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    features = {}
    for level, (stride, depth) in enumerate(zip((2, 4, 8, 16, 32), depths), start=1):
        for index in range(depth):
            # The stride-2 stage follows the stem at the same resolution, as in MobileNetV2.
            step = 2 if index == 0 and stride > 2 else 1
            block = _fused_block if level <= fused_stages else _inverted_residual_block
            x = block(x, filters[level], strides=step, expansion=1 if stride == 2 else expansion,
                      name=f"enc{stride}_{index}")
        features[stride] = x
    return features


def _inverted_residual_block(x, filters, *, strides, expansion, name):
    """[expand 1x1 + BN + ReLU6] -> depthwise 3x3 + BN + ReLU6 -> project 1x1 + BN (+ x when shapes match)."""
    shortcut = x
    if expansion != 1:
        x = layers.Conv2D(x.shape[-1] * expansion, 1, use_bias=False, name=f"{name}_expand")(x)
        x = layers.BatchNormalization(name=f"{name}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu")(x)
    x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    return _project(x, shortcut, filters, strides=strides, name=name)


def _fused_block(x, filters, *, strides, expansion, name):
    """Full 3x3 conv (expanding) + BN + ReLU6 -> project 1x1 + BN (+ x when shapes match)."""
    shortcut = x
    x = layers.Conv2D(x.shape[-1] * expansion, 3, strides=strides, padding="same", use_bias=False,
                      name=f"{name}_fused")(x)
    x = layers.BatchNormalization(name=f"{name}_fused_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_fused_relu")(x)
    return _project(x, shortcut, filters, strides=strides, name=name)


def _project(x, shortcut, filters, *, strides, name):
    """The blocks' shared end: project 1x1 + BN, plus the block's input when the shapes match."""
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x)
    x = layers.BatchNormalization(name=f"{name}_project_bn")(x)
    if strides == 1 and shortcut.shape[-1] == filters:
        x = layers.Add(name=f"{name}_add")([shortcut, x])
    return x


def _validate_inverted_residual(depths, expansion, fused_stages):
    depths = tuple(depths)
    ok = len(depths) == 5 and all(isinstance(d, int) for d in depths) and depths[0] >= 0 and min(depths[1:]) >= 1
    if not ok:
        raise ValueError(f"`encoder_depths` needs 5 ints (strides 2..32), >= 1 from stride 4 on; got {depths!r}.")
    if not isinstance(fused_stages, int) or not 0 <= fused_stages <= 5:
        raise ValueError(f"`fused_stages` must be an int in [0, 5]; got {fused_stages!r}.")
    if not isinstance(expansion, int) or expansion < 1:
        raise ValueError(f"`expansion` must be a positive int; got {expansion!r}.")


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
    if len(encoder_filters) != 6:
        raise ValueError(f"`encoder_filters` needs 6 values (strides 1..32); got {encoder_filters!r}.")
