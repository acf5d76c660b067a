"""Mix Transformer (MiT) encoder of SegFormer (Xie et al. 2021), variants B0..B5.

    input     [B, H, W, C]  normalized pixels; H, W static and divisible by 32
    stage i   [B, H / 2^(i+1), W / 2^(i+1), widths[i]],  i = 1..4  (strides 4, 8, 16, 32)

Each stage: an overlapping patch embedding (7x7 stride 4 for stage 1, 3x3 stride 2 after),
`depths[i]` Mix Transformer blocks with sequence reduction ratio 8, 4, 2, 1, and a LayerNorm.
Stochastic depth grows linearly from 0 to `drop_path_rate` over all blocks of all stages.

LayerNorm epsilons come in three groups: `layer_norm_epsilon` for the blocks' norm1/norm2,
`stage_norm_epsilon` for each stage's closing norm and `conv_norm_epsilon` for the norms right
after a strided conv (the patch embeddings and the sequence reductions). NVlabs' MiT uses
1e-6, 1e-6, 1e-5; Hugging Face's 1e-5 everywhere; keras-hub's 1e-6, 1e-5, 1e-5. This function
defaults to 1e-6 everywhere, what kseg used before it loaded published weights, so the models
built on it before (the "mit_*" pyramid backbones) are unchanged; SegFormer passes the
reference's.
"""

import keras
from keras import layers

from kseg.layers.mix_transformer import LAYER_NORM_EPSILON, MixTransformerBlock, OverlapPatchEmbed

# Xie et al. 2021, Table 6 (and the reference implementation): every variant has heads
# 1/2/5/8, reduction ratios 8/4/2/1 and MLP ratio 4; decoder_channels is the All-MLP
# decoder's C.
MIT_CONFIGS = {
    "b0": {"widths": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "decoder_channels": 256},
    "b1": {"widths": (64, 128, 320, 512), "depths": (2, 2, 2, 2), "decoder_channels": 256},
    "b2": {"widths": (64, 128, 320, 512), "depths": (3, 4, 6, 3), "decoder_channels": 768},
    "b3": {"widths": (64, 128, 320, 512), "depths": (3, 4, 18, 3), "decoder_channels": 768},
    "b4": {"widths": (64, 128, 320, 512), "depths": (3, 8, 27, 3), "decoder_channels": 768},
    "b5": {"widths": (64, 128, 320, 512), "depths": (3, 6, 40, 3), "decoder_channels": 768},
}
NUM_HEADS = (1, 2, 5, 8)
REDUCTION_RATIOS = (8, 4, 2, 1)
PATCH_SIZES = (7, 3, 3, 3)
PATCH_STRIDES = (4, 2, 2, 2)
MLP_RATIO = 4
STRIDES = (4, 8, 16, 32)


def mix_transformer(
    input_shape,
    variant="b0",
    drop_path_rate=0.1,
    name=None,
    *,
    widths=None,
    depths=None,
    layer_norm_epsilon=LAYER_NORM_EPSILON,
    stage_norm_epsilon=None,
    conv_norm_epsilon=LAYER_NORM_EPSILON,
    approximate_gelu=False,
):
    """Builds the MiT encoder of `variant` as a functional `keras.Model`.

    Args:
        input_shape: (H, W, C) of the (already normalized) input; H and W static, divisible by 32.
        variant: a key of `MIT_CONFIGS` ("b0".."b5"), or None when `widths` and `depths` are given.
        drop_path_rate: stochastic depth rate of the last block (0.1 in the paper).
        name: model name; "mit_{variant}" ("mit" for a custom one) by default.
        widths: four stage widths, overriding the variant's (each divisible by its stage's
            1, 2, 5, 8 heads).
        depths: four block counts, overriding the variant's.
        layer_norm_epsilon: epsilon of the blocks' LayerNorms (norm1, norm2).
        stage_norm_epsilon: epsilon of each stage's closing LayerNorm; None: `layer_norm_epsilon`.
        conv_norm_epsilon: epsilon of the patch-embedding and sequence-reduction LayerNorms.
        approximate_gelu: tanh-approximated GELU in the Mix-FFNs (keras-hub's MiT); exact by default.

    Returns:
        A `keras.Model` with four outputs, the stage features at strides 4, 8, 16, 32:
        [B, H / s, W / s, widths[i]].

    Example:
        >>> encoder = mix_transformer((64, 64, 3), "b0")
        >>> [tuple(o.shape) for o in encoder.outputs]
        [(None, 16, 16, 32), (None, 8, 8, 64), (None, 4, 4, 160), (None, 2, 2, 256)]
    """
    widths, depths = stage_widths_and_depths(variant, widths, depths)
    height, width = input_shape[0], input_shape[1]
    if height is None or width is None or height % 32 or width % 32:
        raise ValueError(f"MiT needs a static H and W divisible by 32; got input_shape={tuple(input_shape)!r}.")
    total = sum(depths)
    rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]

    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    x, features, block = inputs, [], 0
    for stage in range(4):
        prefix = f"stage{stage + 1}"
        x = OverlapPatchEmbed(
            widths[stage], PATCH_SIZES[stage], PATCH_STRIDES[stage], conv_norm_epsilon, name=f"{prefix}_patch_embed"
        )(x)
        for i in range(depths[stage]):
            x = MixTransformerBlock(
                widths[stage],
                num_heads=NUM_HEADS[stage],
                reduction_ratio=REDUCTION_RATIOS[stage],
                mlp_ratio=MLP_RATIO,
                drop_path_rate=rates[block],
                layer_norm_epsilon=layer_norm_epsilon,
                reduction_norm_epsilon=conv_norm_epsilon,
                approximate_gelu=approximate_gelu,
                name=f"{prefix}_block{i + 1}",
            )(x)
            block += 1
        stage_epsilon = layer_norm_epsilon if stage_norm_epsilon is None else stage_norm_epsilon
        x = layers.LayerNormalization(epsilon=stage_epsilon, name=f"{prefix}_norm")(x)
        features.append(x)
    return keras.Model(inputs, features, name=name or encoder_name(variant))


def encoder_name(variant):
    """The encoder's model name: "mit_{variant}", or "mit" for custom widths and depths."""
    return f"mit_{variant}" if variant else "mit"


def stage_widths_and_depths(variant, widths=None, depths=None):
    """The four stage widths and depths of `variant`, or the custom ones given.

    Args:
        variant: a key of `MIT_CONFIGS`, or None (then `widths` and `depths` are required).
        widths: four positive ints, each divisible by its stage's head count (1, 2, 5, 8), or None.
        depths: four positive ints, or None.

    Returns:
        (widths, depths), two tuples of four ints.
    """
    if variant is not None and variant not in MIT_CONFIGS:
        raise ValueError(f"`variant` must be one of {tuple(MIT_CONFIGS)} or None; got {variant!r}.")
    if variant is None and (widths is None or depths is None):
        raise ValueError(f"`variant=None` needs both `widths` and `depths`; got widths={widths!r}, depths={depths!r}.")
    widths = tuple(MIT_CONFIGS[variant]["widths"] if widths is None else widths)
    depths = tuple(MIT_CONFIGS[variant]["depths"] if depths is None else depths)
    if len(depths) != 4 or not all(isinstance(d, int) and d >= 1 for d in depths):
        raise ValueError(f"`depths` must be four positive ints; got {depths!r}.")
    if len(widths) != 4 or not all(isinstance(w, int) and w >= 1 and w % h == 0 for w, h in zip(widths, NUM_HEADS)):
        raise ValueError(f"`widths` must be four positive ints divisible by the heads {NUM_HEADS}; got {widths!r}.")
    return widths, depths
