"""Layers of the Mix Transformer (MiT), the encoder of SegFormer (Xie et al. 2021).

    x        [B, H, W, C]   tokens kept on their spatial grid (channels-last) between layers
    tokens   [B, N, C]      N = H * W, only inside attention
    q        [B, h, N, d]   h = num_heads heads of d = C / h channels
    k, v     [B, h, M, d]   M = (H / R) * (W / R) after sequence reduction by R
    scores   [B, h, N, M]   softmax(q k^T / sqrt(d)) over M

Every shape is static once H and W are (the model takes a fixed image size), so attention is
reshape -> transpose -> BATCH_MATMUL -> SOFTMAX -> BATCH_MATMUL in TFLite: ops LiteRT's GPU
accelerator takes. LayerNorm and GELU are Keras' own; both lower to builtin elementwise ops
(MEAN, SQUARED_DIFFERENCE, RSQRT, MUL, ADD and the GELU builtin) that the delegate runs.
"""

import keras
from keras import layers, ops

from kseg.ops.attention import multi_head_attention

# LayerNorm epsilons. The layers default to 1e-6 everywhere (what kseg used before it loaded
# published weights, so configs saved then rebuild unchanged); SegFormer passes the source's:
# NVlabs' MiT uses 1e-6 in the blocks and the stage norms but PyTorch's default 1e-5 in the
# norms that follow a strided conv (patch embedding, sequence reduction); Hugging Face's
# SegFormer uses 1e-5 everywhere.
LAYER_NORM_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="kseg")
class DropPath(layers.Layer):
    """Stochastic depth (Huang et al. 2016): drops a residual branch for whole examples.

    In training each example's branch is kept with probability 1 - rate and scaled by
    1 / (1 - rate), so its expectation is unchanged; at inference it is the identity.

    Args:
        rate: probability of dropping the branch, in [0, 1).
        seed: optional seed of the random draws.

    Example:
        >>> import numpy as np
        >>> x = np.ones((4, 2, 2, 3), "float32")
        >>> bool((DropPath(0.5)(x, training=False).numpy() == x).all())
        True
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1); got {rate!r}.")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x * mask / keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="kseg")
class OverlapPatchEmbed(layers.Layer):
    """Overlapping patch embedding: a k x k conv of stride s with k // 2 zero padding, then LayerNorm.

    Stage 1 uses k=7, s=4; later stages k=3, s=2. Patches overlap (k > s), which is what lets
    MiT drop positional encodings.

        [B, H, W, C_in] -> [B, H / s, W / s, channels]   (H, W divisible by s)

    Args:
        channels: output channels (the stage width).
        patch_size: k.
        stride: s.
        layer_norm_epsilon: epsilon of the LayerNorm (NVlabs and Hugging Face: 1e-5).

    Example:
        >>> import numpy as np
        >>> embed = OverlapPatchEmbed(channels=8, patch_size=7, stride=4)
        >>> tuple(embed(np.zeros((1, 32, 32, 3), "float32")).shape)
        (1, 8, 8, 8)
    """

    def __init__(self, channels, patch_size=7, stride=4, layer_norm_epsilon=LAYER_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.patch_size = patch_size
        self.stride = stride
        self.layer_norm_epsilon = layer_norm_epsilon
        self.pad = layers.ZeroPadding2D(patch_size // 2, name="pad")
        self.proj = layers.Conv2D(channels, patch_size, strides=stride, name="proj")
        self.norm = layers.LayerNormalization(epsilon=layer_norm_epsilon, name="norm")

    def build(self, input_shape):
        padded = self.pad.compute_output_shape(input_shape)
        self.proj.build(padded)
        self.norm.build(self.proj.compute_output_shape(padded))
        self.built = True

    def call(self, x):
        return self.norm(self.proj(self.pad(x)))

    def compute_output_shape(self, input_shape):
        return self.proj.compute_output_shape(self.pad.compute_output_shape(input_shape))

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "patch_size": self.patch_size,
            "stride": self.stride,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }


@keras.saving.register_keras_serializable(package="kseg")
class EfficientSelfAttention(layers.Layer):
    """Multi-head self-attention with sequence reduction (SegFormer's "efficient self-attention").

    Keys and values come from the input shrunk by R in each spatial direction (a conv of
    kernel = stride = R, then LayerNorm), so attention costs O(N^2 / R^2) instead of O(N^2).
    R = 1 is plain multi-head self-attention.

        [B, H, W, C] -> [B, H, W, C]   (H, W static and divisible by R)

    Args:
        channels: C.
        num_heads: h; C must be divisible by h.
        reduction_ratio: R (8, 4, 2, 1 for the four MiT stages).
        layer_norm_epsilon: epsilon of the LayerNorm after the reduction conv (NVlabs and
            Hugging Face: 1e-5).

    Example:
        >>> import numpy as np
        >>> attention = EfficientSelfAttention(channels=8, num_heads=2, reduction_ratio=4)
        >>> tuple(attention(np.zeros((1, 16, 16, 8), "float32")).shape)
        (1, 16, 16, 8)
    """

    def __init__(self, channels, num_heads=1, reduction_ratio=1, layer_norm_epsilon=LAYER_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        if channels % num_heads:
            raise ValueError(f"`channels` ({channels}) must be divisible by `num_heads` ({num_heads}).")
        self.channels = channels
        self.num_heads = num_heads
        self.reduction_ratio = reduction_ratio
        self.layer_norm_epsilon = layer_norm_epsilon
        self.query = layers.Dense(channels, name="query")
        self.key = layers.Dense(channels, name="key")
        self.value = layers.Dense(channels, name="value")
        self.proj = layers.Dense(channels, name="proj")
        if reduction_ratio > 1:
            self.reduce = layers.Conv2D(channels, reduction_ratio, strides=reduction_ratio, name="reduce")
            self.reduce_norm = layers.LayerNormalization(epsilon=layer_norm_epsilon, name="reduce_norm")

    def build(self, input_shape):
        self.query.build(input_shape)
        self.proj.build(input_shape)
        reduced = input_shape
        if self.reduction_ratio > 1:
            self.reduce.build(input_shape)
            reduced = self.reduce.compute_output_shape(input_shape)
            self.reduce_norm.build(reduced)
        self.key.build(reduced)
        self.value.build(reduced)
        self.built = True

    def call(self, x):
        height, width = x.shape[1], x.shape[2]
        if height is None or width is None:
            raise ValueError(f"EfficientSelfAttention needs a static height and width; got input shape {x.shape}.")
        context = x
        if self.reduction_ratio > 1:
            context = self.reduce_norm(self.reduce(x))
        m = context.shape[1] * context.shape[2]
        q = ops.reshape(self.query(x), (-1, height * width, self.channels))
        k = ops.reshape(self.key(context), (-1, m, self.channels))
        v = ops.reshape(self.value(context), (-1, m, self.channels))
        out = multi_head_attention(q, k, v, self.num_heads)
        return self.proj(ops.reshape(out, (-1, height, width, self.channels)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "num_heads": self.num_heads,
            "reduction_ratio": self.reduction_ratio,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }


@keras.saving.register_keras_serializable(package="kseg")
class MixFFN(layers.Layer):
    """Mix-FFN: Linear -> 3x3 depthwise conv -> GELU -> Linear, no positional encoding.

    The depthwise conv leaks enough position information (through zero padding) that MiT
    needs no positional encoding.

        [B, H, W, C] -> [B, H, W, C], hidden width C * mlp_ratio

    Args:
        channels: C.
        mlp_ratio: hidden width over C (4 in every MiT variant).
        approximate_gelu: the tanh approximation of GELU instead of the exact erf form (NVlabs
            and Hugging Face use the exact one, keras-hub's MiT the approximation).

    Example:
        >>> import numpy as np
        >>> tuple(MixFFN(channels=8)(np.zeros((1, 4, 4, 8), "float32")).shape)
        (1, 4, 4, 8)
    """

    def __init__(self, channels, mlp_ratio=4, approximate_gelu=False, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.mlp_ratio = mlp_ratio
        self.approximate_gelu = approximate_gelu
        self.fc1 = layers.Dense(channels * mlp_ratio, name="fc1")
        self.dwconv = layers.DepthwiseConv2D(3, padding="same", name="dwconv")
        self.fc2 = layers.Dense(channels, name="fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        hidden = self.fc1.compute_output_shape(input_shape)
        self.dwconv.build(hidden)
        self.fc2.build(hidden)
        self.built = True

    def call(self, x):
        x = self.dwconv(self.fc1(x))
        return self.fc2(keras.activations.gelu(x, approximate=self.approximate_gelu))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "mlp_ratio": self.mlp_ratio,
            "approximate_gelu": self.approximate_gelu,
        }


@keras.saving.register_keras_serializable(package="kseg")
class MixTransformerBlock(layers.Layer):
    """One MiT block, pre-norm with residuals:

        x = x + DropPath(EfficientSelfAttention(LayerNorm(x)))
        x = x + DropPath(MixFFN(LayerNorm(x)))

        [B, H, W, C] -> [B, H, W, C]

    Args:
        channels: C.
        num_heads: attention heads.
        reduction_ratio: R of the sequence reduction.
        mlp_ratio: Mix-FFN hidden width over C.
        drop_path_rate: stochastic depth rate of both residual branches.
        layer_norm_epsilon: epsilon of norm1 and norm2 (NVlabs: 1e-6, Hugging Face: 1e-5).
        reduction_norm_epsilon: epsilon of the attention's sequence-reduction LayerNorm
            (NVlabs and Hugging Face: 1e-5).
        approximate_gelu: the Mix-FFN's GELU in its tanh approximation (keras-hub's MiT).

    Example:
        >>> import numpy as np
        >>> block = MixTransformerBlock(channels=8, num_heads=1, reduction_ratio=2)
        >>> tuple(block(np.zeros((2, 8, 8, 8), "float32")).shape)
        (2, 8, 8, 8)
    """

    def __init__(
        self,
        channels,
        num_heads=1,
        reduction_ratio=1,
        mlp_ratio=4,
        drop_path_rate=0.0,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        reduction_norm_epsilon=LAYER_NORM_EPSILON,
        approximate_gelu=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = channels
        self.num_heads = num_heads
        self.reduction_ratio = reduction_ratio
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.reduction_norm_epsilon = reduction_norm_epsilon
        self.approximate_gelu = approximate_gelu
        self.norm1 = layers.LayerNormalization(epsilon=layer_norm_epsilon, name="norm1")
        self.attention = EfficientSelfAttention(
            channels, num_heads, reduction_ratio, layer_norm_epsilon=reduction_norm_epsilon, name="attention"
        )
        self.norm2 = layers.LayerNormalization(epsilon=layer_norm_epsilon, name="norm2")
        self.ffn = MixFFN(channels, mlp_ratio, approximate_gelu, name="ffn")
        self.drop_path = DropPath(drop_path_rate, name="drop_path")

    def build(self, input_shape):
        for layer in (self.norm1, self.attention, self.norm2, self.ffn):
            layer.build(input_shape)
        self.built = True

    def call(self, x, training=False):
        x = x + self.drop_path(self.attention(self.norm1(x)), training=training)
        return x + self.drop_path(self.ffn(self.norm2(x)), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "num_heads": self.num_heads,
            "reduction_ratio": self.reduction_ratio,
            "mlp_ratio": self.mlp_ratio,
            "drop_path_rate": self.drop_path_rate,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "reduction_norm_epsilon": self.reduction_norm_epsilon,
            "approximate_gelu": self.approximate_gelu,
        }
