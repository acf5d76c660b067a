"""U-Net (Ronneberger et al. 2015) and its variants: attention gates, residual and dense blocks.

    input   [B, H, W, C]  raw pixels in [0, 255]
    level i features: filters * 2**i channels at stride 2**i, i = 0..depth (depth = bottleneck)
    output  [B, H', W', K] logits; H' = H with padding="same", smaller with "valid" (the paper)
"""

import keras
from keras import layers

from kseg.models.unet import blocks
from kseg.models.base import SegmentationModel, check_kwargs, dtype_policy_scope
from kseg.ops.checks import check_choice


@keras.saving.register_keras_serializable(package="kseg")
class UNet(SegmentationModel):
    """U-Net: a contracting path, an expanding path and skip connections that concatenate.

    With the defaults (depth 4, 64 filters, plain blocks, transposed-conv upsampling) this is
    the network of Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
    Segmentation", MICCAI 2015: two 3x3 conv + ReLU per level, 2x2 max pooling, 2x2
    up-convolution halving the channels, concatenation with the encoder features and a 1x1
    output conv. `padding="valid"` reproduces the paper's unpadded convolutions (572 -> 388);
    the default "same" keeps the output at the input size.

    Args:
        num_classes: K, channels of the output logits.
        input_shape: (H, W, C). H and W may be None with padding="same"; then they must be
            divisible by 2**depth at call time. "valid" needs static H and W.
        depth: number of poolings (4 in the paper).
        filters: channels of the first level; level i has filters * 2**i.
        block: "plain" (two conv), "residual" or "dense"; the last two need padding="same".
        batch_norm: BatchNormalization after every conv.
        dropout: rate of the dropout at the end of the contracting path (paper: 0.5).
        upsampling: "transpose" (learned 2x2) or "bilinear" (fixed, then 1x1 conv).
        attention: additive attention gates on the skip connections (Oktay et al. 2018).
        padding: "same" or "valid".
        name: model name.

    Returns:
        A `keras.Model` mapping images [B, H, W, C] in [0, 255] to logits [B, H', W', K].

    Example:
    >>> model = UNet(num_classes=2, input_shape=(64, 64, 1), filters=8, depth=3)
    >>> tuple(model.output.shape)
    (None, 64, 64, 2)
    """

    def __init__(
        self,
        num_classes,
        input_shape=(None, None, 3),
        depth=4,
        filters=64,
        block="plain",
        batch_norm=False,
        dropout=0.0,
        upsampling="transpose",
        attention=False,
        padding="same",
        name="unet",
        **kwargs,
    ):
        check_kwargs("UNet", kwargs)
        input_shape = tuple(input_shape)
        _validate(num_classes, input_shape, depth, filters, block, upsampling, padding, dropout)

        # === Functional graph ===
        with dtype_policy_scope(kwargs.get("dtype")):
            inputs = keras.Input(shape=input_shape, name="image")
            x = blocks.pixel_normalization(inputs)
            skips = []
            for level in range(depth):
                x = blocks.conv_block(
                    x, filters * 2**level, block=block, batch_norm=batch_norm, padding=padding, name=f"enc{level}"
                )
                skips.append(x)
                x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
            x = blocks.conv_block(
                x, filters * 2**depth, block=block, batch_norm=batch_norm, padding=padding, name="bottleneck"
            )
            if dropout:
                x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
            for level in reversed(range(depth)):
                level_filters = filters * 2**level
                gating = x
                x = blocks.upsample(x, level_filters, mode=upsampling, name=f"up{level}")
                skip = blocks.center_crop_to(skips[level], x, name=f"crop{level}")
                if attention:
                    skip = blocks.attention_gate(skip, gating, max(level_filters // 2, 1), name=f"att{level}")
                x = layers.Concatenate(name=f"concat{level}")([skip, x])
                x = blocks.conv_block(
                    x, level_filters, block=block, batch_norm=batch_norm, padding=padding, name=f"dec{level}"
                )
            outputs = blocks.logits_head(x, num_classes)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.image_shape = input_shape
        self.depth = depth
        self.filters = filters
        self.block = block
        self.batch_norm = batch_norm
        self.dropout = dropout
        self.upsampling = upsampling
        self.attention = attention
        self.padding = padding

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "input_shape": list(self.image_shape),
            "depth": self.depth,
            "filters": self.filters,
            "block": self.block,
            "batch_norm": self.batch_norm,
            "dropout": self.dropout,
            "upsampling": self.upsampling,
            "attention": self.attention,
            "padding": self.padding,
            **self.base_config(),
        }


def valid_output_size(size, depth=4):
    """Output side length of a padding="valid" U-Net for input side `size` (paper: 572 -> 388).

    Raises:
        ValueError: when `size` does not lead to even sizes before every pooling.
    """
    s = size
    for level in range(depth):
        s -= 4
        if s <= 0 or s % 2:
            raise ValueError(
                f"input size {size} does not fit a valid-padding U-Net of depth {depth}: "
                f"level {level} has odd or empty size {s} before pooling (572 works for depth 4)."
            )
        s //= 2
    s -= 4
    for _ in range(depth):
        s = 2 * s - 4
    if s <= 0:
        raise ValueError(f"input size {size} is too small for a valid-padding U-Net of depth {depth}.")
    return s


def _validate(num_classes, input_shape, depth, filters, block, upsampling, padding, dropout):
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int; got {num_classes!r}.")
    if len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (H, W, C); got {input_shape!r}.")
    if not isinstance(input_shape[2], int) or input_shape[2] < 1:
        raise ValueError(f"`input_shape` channels must be a positive int; got {input_shape!r}.")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"`depth` must be a positive int; got {depth!r}.")
    if not isinstance(filters, int) or filters < 1:
        raise ValueError(f"`filters` must be a positive int; got {filters!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); got {dropout!r}.")
    check_choice("block", block, blocks.BLOCKS)
    check_choice("upsampling", upsampling, blocks.UPSAMPLING)
    check_choice("padding", padding, blocks.PADDINGS)
    height, width = input_shape[0], input_shape[1]
    if padding == "valid":
        if block != "plain":
            raise ValueError(f'padding="valid" supports block="plain" only; got block={block!r}.')
        if height is None or width is None:
            raise ValueError(f'padding="valid" needs a static input size; got input_shape={input_shape!r}.')
        valid_output_size(height, depth)
        valid_output_size(width, depth)
    else:
        for side in (height, width):
            if side is not None and side % 2**depth:
                raise ValueError(
                    f"input size {side} must be divisible by 2**depth = {2**depth} "
                    f"(input_shape={input_shape!r}, depth={depth})."
                )
