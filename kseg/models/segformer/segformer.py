"""SegFormer (Xie et al. 2021): a Mix Transformer encoder and a lightweight All-MLP decoder.

    input     [B, H, W, 3]  raw pixels in [0, 255]; H, W static and divisible by 32
    normalize [B, H, W, 3]  ImageNet mean/std on [0, 1] pixels (the published checkpoints'), or
              x / 127.5 - 1 ("symmetric", what kseg used before it loaded published weights)
    encoder   F_i [B, H / s, W / s, C_i], s = 4, 8, 16, 32 (kseg.backbones.mix_transformer)
    decoder   each F_i -> 1x1 linear to D -> bilinear to H / 4; concat (F_4 first) -> 1x1 conv
              4D -> D + BatchNorm + ReLU -> dropout -> 1x1 conv to K   (D = decoder_channels)
    output    [B, H, W, K]  logits, bilinearly upsampled from stride 4 (as kseg's U-Nets)

Every op of the exported graph (batch 1, fixed size) is one LiteRT's GPU accelerator runs:
strided and depthwise conv, PAD, LayerNorm's MEAN / SQUARED_DIFFERENCE / RSQRT, reshape and
transpose of fixed shapes, BATCH_MATMUL, SOFTMAX, GELU, bilinear resize, concat.
"""

import keras
from keras import layers

from kseg.models.base import SegmentationModel, check_kwargs, dtype_policy_scope
from kseg.ops.checks import check_choice
from kseg.backbones.mix_transformer import MIT_CONFIGS, STRIDES, encoder_name, mix_transformer, stage_widths_and_depths
from kseg.models.unet import blocks

# What the published SegFormer checkpoints were trained on (NVlabs' mmseg configs, Hugging Face's
# image processor): (x / 255 - mean) / std per RGB channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "symmetric")

# Values a config saved before these arguments existed was built with; `from_config` fills a
# missing key with them, so older `.keras` files reload computing exactly what they did.
_SAVED_BEFORE_DEFAULTS = {
    "normalization": "symmetric",
    "layer_norm_epsilon": 1e-6,
    "stage_norm_epsilon": None,
    "conv_norm_epsilon": 1e-6,
    "approximate_gelu": False,
    "batch_norm_epsilon": 1e-3,
    "widths": None,
    "depths": None,
}


@keras.saving.register_keras_serializable(package="kseg")
class SegFormer(SegmentationModel):
    """SegFormer: hierarchical Transformer features fused by an All-MLP decoder.

    Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
    Transformers", NeurIPS 2021. The encoder is the nested model "mit_{variant}"; the
    decoder layers are named "decode_*" ("decode_logits" gives the stride-4 logits the
    reference implementations return). Like kseg's U-Nets the model normalizes raw pixels
    inside the graph and returns logits at the input size, so training, metrics and export
    treat it like a UNet.

    The defaults are those of NVlabs' implementation, which published the weights: ImageNet
    normalization, LayerNorm epsilon 1e-6 in the blocks and stage norms and 1e-5 after the
    strided convs, decoder BatchNorm epsilon 1e-5. `kseg.weights.load_segformer` sets the
    epsilons of the checkpoint's source (Hugging Face uses 1e-5 everywhere).

    Parameter counts with 150 classes (ADE20K), counted as PyTorch does (trainable weights;
    BatchNorm's moving statistics are buffers, not parameters), beside the paper's Table 1:

        B0  encoder 3,319,392 (3.3M; paper 3.4M)    decoder 433,302 (0.4M)    total 3.8M
        B1  encoder 13,151,424 (13.2M; paper 13.1M)  decoder 564,374 (0.6M)    total 13.7M
        B2  encoder 24,196,288 (24.2M)              decoder 3,265,686 (3.3M)  total 27.5M

    Decoders and totals round to the paper's figures. The encoder counts follow exactly from
    the paper's hyperparameters (tests/models/test_segformer.py writes the formula out); the paper's
    B0 and B1 encoder figures equal its total minus its rounded decoder (3.753 - 0.4 -> 3.4,
    13.716 - 0.6 -> 13.1), a rounding artefact rather than a missing or extra layer.

    Args:
        num_classes: K, channels of the output logits.
        variant: "b0".."b5" (`MIT_CONFIGS`), or None for custom `widths` and `depths`.
        input_shape: (H, W, C), static, H and W divisible by 32 (sequence reduction and the
            fixed-shape attention need a known token count).
        drop_path_rate: stochastic depth rate of the encoder's last block (paper: 0.1).
        dropout: dropout rate before the classifier (paper: 0.1).
        decoder_channels: D; None takes the paper's (256 for B0/B1, 768 for B2..B5).
        normalization: "imagenet" ((x / 255 - mean) / std with ImageNet's RGB mean and std,
            what published checkpoints expect) or "symmetric" (x / 127.5 - 1).
        layer_norm_epsilon: epsilon of the blocks' LayerNorms.
        stage_norm_epsilon: epsilon of the stages' closing LayerNorms; None: `layer_norm_epsilon`.
        conv_norm_epsilon: epsilon of the patch-embedding and sequence-reduction LayerNorms.
        approximate_gelu: tanh-approximated GELU in the Mix-FFNs (keras-hub's MiT); exact by default.
        batch_norm_epsilon: epsilon of the decoder's BatchNorm.
        widths: four custom stage widths (None: the variant's); each divisible by 1, 2, 5, 8.
        depths: four custom block counts (None: the variant's).
        name: model name; "segformer_{variant}" by default.

    Returns:
        A `keras.Model` mapping images [B, H, W, C] in [0, 255] to logits [B, H, W, K].

    Example:
    >>> model = SegFormer(num_classes=3, variant="b0", input_shape=(64, 64, 3))
    >>> tuple(model.output.shape)
    (None, 64, 64, 3)
    """

    def __init__(
        self,
        num_classes,
        variant="b0",
        input_shape=(512, 512, 3),
        drop_path_rate=0.1,
        dropout=0.1,
        decoder_channels=None,
        normalization="imagenet",
        layer_norm_epsilon=1e-6,
        stage_norm_epsilon=None,
        conv_norm_epsilon=1e-5,
        batch_norm_epsilon=1e-5,
        approximate_gelu=False,
        widths=None,
        depths=None,
        name=None,
        **kwargs,
    ):
        check_kwargs("SegFormer", kwargs)
        input_shape = tuple(input_shape)
        _validate(num_classes, variant, input_shape, drop_path_rate, dropout, decoder_channels, normalization)
        stage_widths_and_depths(variant, widths, depths)
        for arg, value in (("layer_norm_epsilon", layer_norm_epsilon), ("stage_norm_epsilon", stage_norm_epsilon),
                           ("conv_norm_epsilon", conv_norm_epsilon), ("batch_norm_epsilon", batch_norm_epsilon)):
            if arg == "stage_norm_epsilon" and value is None:
                continue
            if not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"`{arg}` must be a number in (0, 1); got {value!r}.")
        if variant is None and decoder_channels is None:
            raise ValueError("`variant=None` (custom widths and depths) needs `decoder_channels`; got None.")
        channels = decoder_channels or MIT_CONFIGS[variant]["decoder_channels"]
        height, width = input_shape[0], input_shape[1]

        # === Functional graph ===
        with dtype_policy_scope(kwargs.get("dtype")):
            inputs = keras.Input(shape=input_shape, name="image")
            x = _normalize(inputs, normalization)
            encoder = mix_transformer(
                input_shape,
                variant,
                drop_path_rate,
                name=encoder_name(variant),
                widths=widths,
                depths=depths,
                layer_norm_epsilon=layer_norm_epsilon,
                stage_norm_epsilon=stage_norm_epsilon,
                conv_norm_epsilon=conv_norm_epsilon,
                approximate_gelu=approximate_gelu,
            )
            features = encoder(x)
            # All-MLP decoder: unify channels, bring every stage to stride 4, fuse, classify.
            fused = []
            for stage, (feature, stride) in enumerate(zip(features, STRIDES), start=1):
                y = layers.Dense(channels, name=f"decode_linear{stage}")(feature)
                if stride > 4:
                    y = layers.UpSampling2D(stride // 4, interpolation="bilinear", name=f"decode_up{stage}")(y)
                fused.append(y)
            x = layers.Concatenate(name="decode_concat")(fused[::-1])
            x = layers.Conv2D(channels, 1, use_bias=False, name="decode_fuse")(x)
            x = layers.BatchNormalization(epsilon=batch_norm_epsilon, name="decode_fuse_bn")(x)
            x = layers.Activation("relu", name="decode_fuse_relu")(x)
            if dropout:
                x = layers.Dropout(dropout, name="decode_dropout")(x)
            x = blocks.logits_head(x, num_classes, name="decode_logits")
            outputs = layers.Resizing(height, width, interpolation="bilinear", dtype="float32", name="logits")(x)
        super().__init__(inputs=inputs, outputs=outputs, name=name or f"segformer_{variant or 'custom'}", **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.variant = variant
        self.image_shape = input_shape
        self.drop_path_rate = drop_path_rate
        self.dropout = dropout
        self.decoder_channels = decoder_channels
        self.normalization = normalization
        self.layer_norm_epsilon = layer_norm_epsilon
        self.stage_norm_epsilon = stage_norm_epsilon
        self.conv_norm_epsilon = conv_norm_epsilon
        self.batch_norm_epsilon = batch_norm_epsilon
        self.approximate_gelu = approximate_gelu
        self.widths = None if widths is None else tuple(widths)
        self.depths = None if depths is None else tuple(depths)

    @property
    def encoder(self):
        """The Mix Transformer encoder (a nested functional model with four outputs)."""
        return self.get_layer(encoder_name(self.variant))

    @classmethod
    def from_config(cls, config):
        return cls(**{**_SAVED_BEFORE_DEFAULTS, **config})

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "variant": self.variant,
            "input_shape": list(self.image_shape),
            "drop_path_rate": self.drop_path_rate,
            "dropout": self.dropout,
            "decoder_channels": self.decoder_channels,
            "normalization": self.normalization,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "stage_norm_epsilon": self.stage_norm_epsilon,
            "conv_norm_epsilon": self.conv_norm_epsilon,
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "approximate_gelu": self.approximate_gelu,
            "widths": None if self.widths is None else list(self.widths),
            "depths": None if self.depths is None else list(self.depths),
            **self.base_config(),
        }


def _normalize(image, normalization):
    """Raw pixels [0, 255] -> the encoder's input, before the patch embedding's zero padding."""
    if normalization == "symmetric":
        return blocks.pixel_normalization(image)
    mean = [255.0 * m for m in IMAGENET_MEAN]
    variance = [(255.0 * s) ** 2 for s in IMAGENET_STD]
    return layers.Normalization(mean=mean, variance=variance, name="normalize")(image)


def _validate(num_classes, variant, input_shape, drop_path_rate, dropout, decoder_channels, normalization):
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int; got {num_classes!r}.")
    if variant is not None:
        check_choice("variant", variant, MIT_CONFIGS)
    check_choice("normalization", normalization, NORMALIZATIONS)
    if len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (H, W, C); got {input_shape!r}.")
    for side in input_shape[:2]:
        if side is None or side % 32:
            raise ValueError(
                f"SegFormer needs a static input size divisible by 32; got input_shape={input_shape!r}."
            )
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"`drop_path_rate` must be in [0, 1); got {drop_path_rate!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); got {dropout!r}.")
    if decoder_channels is not None and (not isinstance(decoder_channels, int) or decoder_channels < 1):
        raise ValueError(f"`decoder_channels` must be a positive int or None; got {decoder_channels!r}.")
