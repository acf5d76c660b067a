"""MaskFormer's pixel decoder, transformer decoder and prediction heads (Cheng et al. 2021).

    P{n}            [B, H / 2^n, W / 2^n, C_n]  backbone levels n = 2..5
    pixel_embed     [B, H / 4, W / 4, E]        per-pixel embeddings (E = mask_dim)
    queries         [B, N, D]                   decoded queries, one tensor per decoder layer
    class_logits    [B, N, K + 1]               K classes, the last one is "no object"
    mask_logits     [B, P, N]                   P = H / 4 x W / 4 pixels, queries last

Every op is a static-shape matmul / softmax / reshape / conv, so the inference graph converts
to builtin TFLite ops at batch 1. Attention is written out (Dense projections, BATCH_MATMUL,
SOFTMAX) rather than taken from keras.layers.MultiHeadAttention, so the converted graph is
plain and its shape known.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from kseg.layers.group_normalization import GroupNormalization
from kseg.layers.resize import NearestUpsampling2D
from kseg.ops.attention import multi_head_attention


def sine_positional_encoding(height, width, channels, temperature=10000.0):
    """Fixed 2-D sine positional encoding (DETR, Carion et al. 2020), as a NumPy constant.

    Row and column positions are normalized to (0, 2 pi]; half the channels encode the row,
    half the column, alternating sin / cos at geometrically spaced frequencies.

    Returns:
        float32 [height * width, channels], pixels in row-major order.

    Example:
    >>> sine_positional_encoding(2, 3, 8).shape
    (6, 8)
    """
    if channels % 4:
        raise ValueError(f"`channels` of the sine positional encoding must be divisible by 4; got {channels}.")
    half = channels // 2
    scale = 2.0 * np.pi
    rows = (np.arange(1, height + 1, dtype=np.float64) / height * scale)[:, None]
    cols = (np.arange(1, width + 1, dtype=np.float64) / width * scale)[:, None]
    frequency = temperature ** (2.0 * (np.arange(half) // 2) / half)

    def encode(positions):  # [L, 1] -> [L, half], sin on even channels and cos on odd ones
        angles = positions / frequency
        return np.where(np.arange(half) % 2 == 0, np.sin(angles), np.cos(angles))

    row_code = np.repeat(encode(rows), width, axis=0)
    col_code = np.tile(encode(cols), (height, 1))
    return np.concatenate([row_code, col_code], axis=1).astype(np.float32)


def grid_matmul(grid, matrix):
    """Every pixel's vector times a per-image matrix, as one BATCH_MATMUL with equal batch dims.

    The pixels are flattened to [B, 1, H * W, C] and the matrix lifted to [B, 1, C, K]. With a
    [B, H * W, C] left operand instead, the TFLite converter folds the flattening into the matmul
    ([B, H, W, C] x [B, C, K], batch dims broadcast), and LiteRT's GPU accelerator takes that
    BATCH_MATMUL but computes it wrong (it does not broadcast batch dims).

    Args:
        grid: [B, H, W, C] with static H, W.
        matrix: [B, C, K].

    Returns:
        [B, H * W, K], pixels in row-major order.
    """
    pixels = grid.shape[1] * grid.shape[2]
    product = ops.matmul(ops.reshape(grid, (-1, 1, pixels, grid.shape[3])), matrix[:, None])
    return ops.reshape(product, (-1, pixels, matrix.shape[2]))


@keras.saving.register_keras_serializable(package="kseg")
class PixelDecoder(layers.Layer):
    """FPN-style top-down decoder from P5..P2 to per-pixel embeddings at 1/4 scale (section 3.3).

    P5 goes through a 3x3 conv; each lower level adds a 1x1 lateral projection of its
    backbone features to the x2 (nearest) upsampled level above, then a 3x3 conv; convs are
    followed by GroupNorm and ReLU. A last 3x3 conv gives the mask_dim embeddings.

    Args:
        channels: width of the decoder (256).
        mask_dim: E, the per-pixel embedding size (256).
        groups: GroupNorm groups (32; fewer if channels is smaller).

    Example:
    >>> head = PixelDecoder(channels=8, mask_dim=4, groups=2)
    >>> out = head({f"P{n}": np.zeros((1, 64 // 2**n, 64 // 2**n, 4), "float32") for n in range(2, 6)})
    >>> tuple(out.shape)
    (1, 16, 16, 4)
    """

    def __init__(self, channels=256, mask_dim=256, groups=32, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.mask_dim = mask_dim
        self.groups = groups
        g = min(groups, channels)
        self.lateral = {f"P{n}": layers.Conv2D(channels, 1, use_bias=False, name=f"lateral_P{n}") for n in (2, 3, 4)}
        self.lateral_norm = {f"P{n}": GroupNormalization(g, name=f"lateral_gn_P{n}") for n in (2, 3, 4)}
        self.output_conv = {f"P{n}": layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"output_P{n}")
                            for n in (2, 3, 4, 5)}
        self.output_norm = {f"P{n}": GroupNormalization(g, name=f"output_gn_P{n}") for n in (2, 3, 4, 5)}
        self.upsample = NearestUpsampling2D(2, name="top_down")
        self.mask_features = layers.Conv2D(mask_dim, 3, padding="same", name="mask_features")

    def call(self, features):
        y = None
        for n in (5, 4, 3, 2):
            if y is None:
                y = features["P5"]
            else:
                y = self.lateral_norm[f"P{n}"](self.lateral[f"P{n}"](features[f"P{n}"])) + self.upsample(y)
            y = ops.relu(self.output_norm[f"P{n}"](self.output_conv[f"P{n}"](y)))
        return self.mask_features(y)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "mask_dim": self.mask_dim, "groups": self.groups}


@keras.saving.register_keras_serializable(package="kseg")
class Attention(layers.Layer):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017) with static shapes.

    Args:
        hidden_dim: D, the model width (divisible by num_heads).
        num_heads: h.
        dropout: on the attention weights (0.0).

    Call args: query [B, L, D], key [B, S, D], value [B, S, D] -> [B, L, D].
    """

    def __init__(self, hidden_dim, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(f"`hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads}).")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.query_proj = layers.Dense(hidden_dim, name="query")
        self.key_proj = layers.Dense(hidden_dim, name="key")
        self.value_proj = layers.Dense(hidden_dim, name="value")
        self.output_proj = layers.Dense(hidden_dim, name="output")
        self.weights_dropout = layers.Dropout(dropout)

    def call(self, query, key, value, training=None):
        # keys first: the first decoder layer's queries are constants of the exported graph
        out = multi_head_attention(self.query_proj(query), self.key_proj(key), self.value_proj(value),
                                   self.num_heads, lambda w: self.weights_dropout(w, training=training),
                                   keys_first=True)
        # The output projection runs on [B, 1, L, D]. On [B, L, D] the converter folds the Dense's
        # reshapes into a rank-2 FULLY_CONNECTED that an ADD broadcasts to rank 3 against a constant
        # (the first decoder layer's residual, folded), and LiteRT's GPU accelerator computes an
        # ADD whose runtime operand has a lower rank than its output wrong.
        length = out.shape[1]
        return ops.reshape(self.output_proj(ops.reshape(out, (-1, 1, length, self.hidden_dim))),
                           (-1, length, self.hidden_dim))

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "num_heads": self.num_heads,
                "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="kseg")
class DecoderLayer(layers.Layer):
    """One transformer decoder layer (DETR's post-norm form): self-attention over the queries,
    cross-attention to the image features, FFN; each a residual followed by LayerNorm.
    Positional encodings are added to queries and keys, not to values.

    Args:
        hidden_dim: D (256); num_heads: 8; ffn_dim: the FFN's hidden width (2048);
        dropout: 0.1 in the paper.
    """

    def __init__(self, hidden_dim=256, num_heads=8, ffn_dim=2048, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.self_attention = Attention(hidden_dim, num_heads, dropout, name="self_attention")
        self.cross_attention = Attention(hidden_dim, num_heads, dropout, name="cross_attention")
        self.ffn_in = layers.Dense(ffn_dim, activation="relu", name="ffn_in")
        self.ffn_out = layers.Dense(hidden_dim, name="ffn_out")
        self.norms = [layers.LayerNormalization(epsilon=1e-5, name=f"norm{i}") for i in range(3)]
        self.drops = [layers.Dropout(dropout) for _ in range(4)]

    def call(self, x, query_pos, memory, memory_pos, training=None):
        q = x + query_pos
        x = self.norms[0](x + self.drops[0](self.self_attention(q, q, x, training=training), training=training))
        attended = self.cross_attention(x + query_pos, memory + memory_pos, memory, training=training)
        x = self.norms[1](x + self.drops[1](attended, training=training))
        hidden = self.drops[2](self.ffn_in(x), training=training)
        return self.norms[2](x + self.drops[3](self.ffn_out(hidden), training=training))

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "num_heads": self.num_heads,
                "ffn_dim": self.ffn_dim, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="kseg")
class TransformerDecoder(layers.Layer):
    """N learned queries decoded against the 1/32 features (section 3.3, DETR's decoder).

    The features are projected to D by a 1x1 conv and get the fixed sine positional encoding;
    the queries start at zero with a learned positional embedding each. The output of every
    layer goes through the same final LayerNorm (deep supervision reads all of them).

    Args:
        num_queries: N (100).
        hidden_dim: D (256).
        num_layers: 6.
        num_heads: 8.
        ffn_dim: 2048.
        dropout: 0.1.

    Call args: features [B, h, w, C] with static h, w -> list of num_layers [B, N, D].

    Example:
    >>> decoder = TransformerDecoder(num_queries=3, hidden_dim=8, num_layers=2, num_heads=2, ffn_dim=16)
    >>> [tuple(q.shape) for q in decoder(np.zeros((1, 2, 2, 4), "float32"))]
    [(1, 3, 8), (1, 3, 8)]
    """

    def __init__(self, num_queries=100, hidden_dim=256, num_layers=6, num_heads=8, ffn_dim=2048, dropout=0.1,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.input_proj = layers.Conv2D(hidden_dim, 1, name="input_proj")
        self.decoder_layers = [DecoderLayer(hidden_dim, num_heads, ffn_dim, dropout, name=f"layer{i}")
                               for i in range(num_layers)]
        self.final_norm = layers.LayerNormalization(epsilon=1e-5, name="final_norm")

    def build(self, input_shape):
        self.query_embed = self.add_weight(shape=(self.num_queries, self.hidden_dim), name="query_embed",
                                           initializer=keras.initializers.RandomNormal(stddev=1.0))
        self.built = True

    def call(self, features, training=None):
        height, width = features.shape[1], features.shape[2]
        if height is None or width is None:
            raise ValueError(f"TransformerDecoder needs static feature sizes; got {features.shape}.")
        memory = ops.reshape(self.input_proj(features), (-1, height * width, self.hidden_dim))
        memory_pos = ops.convert_to_tensor(sine_positional_encoding(height, width, self.hidden_dim)[None],
                                           dtype=memory.dtype)
        ones = ops.ones_like(memory[:, :1, :1])  # [B, 1, 1]: carries the batch size, static at export
        query_pos = ones * ops.cast(self.query_embed, memory.dtype)[None]
        x = ops.zeros_like(query_pos)
        outputs = []
        for layer in self.decoder_layers:
            x = layer(x, query_pos, memory, memory_pos, training=training)
            outputs.append(self.final_norm(x))
        return outputs

    def get_config(self):
        return {**super().get_config(), "num_queries": self.num_queries, "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers, "num_heads": self.num_heads, "ffn_dim": self.ffn_dim,
                "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="kseg")
class PredictionHeads(layers.Layer):
    """Per query: class logits (a linear layer) and a mask embedding (3-layer MLP); the mask
    logits are the dot products of the mask embeddings with the per-pixel embeddings.

    Args:
        num_outputs: K + 1 (the classes and "no object", last).
        hidden_dim: D, the MLP's hidden width (256).
        mask_dim: E, the embedding size (256).

    Call args: queries [B, N, D], pixel_embed [B, h, w, E] -> (class_logits [B, N, K + 1],
    mask_logits [B, h * w, N]).
    """

    def __init__(self, num_outputs, hidden_dim=256, mask_dim=256, **kwargs):
        super().__init__(**kwargs)
        self.num_outputs = num_outputs
        self.hidden_dim = hidden_dim
        self.mask_dim = mask_dim
        self.classifier = layers.Dense(num_outputs, name="classifier")
        self.mask_mlp = [layers.Dense(hidden_dim, activation="relu", name="mask_mlp0"),
                         layers.Dense(hidden_dim, activation="relu", name="mask_mlp1"),
                         layers.Dense(mask_dim, name="mask_mlp2")]

    def call(self, queries, pixel_embed):
        embedding = queries
        for dense in self.mask_mlp:
            embedding = dense(embedding)
        return self.classifier(queries), grid_matmul(pixel_embed, ops.transpose(embedding, (0, 2, 1)))

    def get_config(self):
        return {**super().get_config(), "num_outputs": self.num_outputs, "hidden_dim": self.hidden_dim,
                "mask_dim": self.mask_dim}


def mask_classification_panoptic(class_probs, mask_probs, *, num_thing_classes, object_threshold=0.8,
                                 overlap_threshold=0.8, mask_threshold=0.5, min_area=0):
    """MaskFormer's panoptic inference (section 3.4) with static shapes and builtin TFLite ops.

        class_probs  [B, N, K + 1]  per-query class probabilities, the last class "no object"
        mask_probs   [B, H, W, N]   per-query mask probabilities, queries last
        ->           panoptic_fusion's format (kseg.ops.panoptic_fusion), table size N

    1. A query is kept if its top class (argmax over K + 1) is not "no object" and its top
       probability (its score) is > object_threshold. Class k is category k + 1; categories
       1..num_thing_classes are things, the rest stuff.
    2. Each pixel goes to the kept query maximizing score x mask probability (ties: lowest
       query index), and belongs to it if that mask probability is >= mask_threshold (else void).
    3. A kept query becomes a segment if its visible area (pixels assigned to it) is > 0,
       >= overlap_threshold x its own mask area (pixels >= mask_threshold) and >= min_area;
       the pixels of a dropped query are void.
    4. Surviving stuff queries of one category merge into one segment (area summed, score the
       highest). Segment ids 1..num_segments follow query order (a merged stuff segment takes
       the place of its first query).

    Returns:
        dict with "panoptic" [B, H, W] int32 (0 void), "category", "is_thing", "area",
        "score" [B, N] (int32, bool, int32, float32; 0 / False past num_segments) and
        "num_segments" [B] int32.

    Example:
    >>> probs = np.array([[[0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]], np.float32)  # thing, no object
    >>> masks = np.zeros([1, 2, 2, 2], np.float32); masks[0, 0, :, 0] = 1.0
    >>> out = mask_classification_panoptic(probs, masks, num_thing_classes=1)
    >>> out["panoptic"].numpy()[0].tolist(), out["category"].numpy()[0].tolist()
    ([[1, 1], [0, 0]], [1, 0])
    """
    f32 = tf.float32
    class_probs = tf.cast(class_probs, f32)
    mask_probs = tf.cast(mask_probs, f32)
    num_queries, num_outputs = class_probs.shape[1], class_probs.shape[2]
    height, width = mask_probs.shape[1], mask_probs.shape[2]
    if None in (num_queries, num_outputs, height, width) or mask_probs.shape[3] != num_queries:
        raise ValueError(f"Expected static class_probs [B, N, K + 1] and mask_probs [B, H, W, N]; got "
                         f"{class_probs.shape} and {mask_probs.shape}.")
    pixels = height * width
    probs = tf.reshape(mask_probs, [-1, pixels, num_queries])  # [B, P, N]

    # 1. kept queries.
    label = tf.argmax(class_probs, axis=-1, output_type=tf.int32)  # [B, N]
    score = tf.reduce_max(class_probs, axis=-1)
    kept = tf.cast((label < num_outputs - 1) & (score > object_threshold), f32)
    category = tf.cast(label + 1, f32)
    stuff = kept * tf.cast(label >= num_thing_classes, f32)

    # 2. mask-wise argmax over the kept queries.
    weighted = kept[:, None, :] * score[:, None, :] * probs - (1.0 - kept[:, None, :])  # dropped: -1
    owner = tf.argmax(weighted, axis=-1, output_type=tf.int32)  # [B, P]
    # Indices compared as floats (exact below 2^24): the int form, equal(owner, range), converts to
    # a fused ONE_HOT whose on / off values an fp16 model stores as float16 constants, and LiteRT's
    # GPU accelerator reads those as float32 bits (its "1.0" is 2.2e-41), so every pixel was void.
    query = tf.constant(np.arange(num_queries, dtype=np.float32).reshape([1, 1, num_queries]))
    assigned = tf.cast(tf.equal(tf.cast(owner, f32)[..., None], query), f32) * kept[:, None, :]  # [B, P, N]
    binary = tf.cast(probs >= mask_threshold, f32)
    visible = assigned * binary

    # 3. overlap and area filters (areas are exact integers in float32).
    area = tf.reduce_sum(visible, axis=1)  # [B, N]
    own_area = tf.reduce_sum(binary, axis=1)
    survive = kept * tf.cast((area > 0) & (area >= tf.constant(overlap_threshold, f32) * own_area)
                             & (area >= min_area), f32)

    # 4. merge stuff per category: same[b, j, q] = queries j and q are surviving stuff of one category.
    stuff = stuff * survive
    same = stuff[:, :, None] * stuff[:, None, :] * tf.cast(tf.equal(category[:, :, None], category[:, None, :]), f32)
    # [1, j, q]: j < q. Constants keep the rank of the tensors they meet: in an fp16 model they
    # are DEQUANTIZE outputs, and LiteRT's GPU accelerator mishandles a runtime operand broadcast
    # from a lower rank.
    earlier = tf.constant(np.triu(np.ones([1, num_queries, num_queries], np.float32), 1))
    first = survive * (1.0 - tf.reduce_max(same * earlier, axis=1))  # [B, N] heads of segments
    head_id = tf.cumsum(first, axis=1) * first
    belongs = tf.maximum(same, tf.eye(num_queries)[None]) * first[:, :, None]  # [B, j, q]: q is in j's segment
    segment_id = tf.reduce_sum(belongs * head_id[:, :, None], axis=1) * survive  # [B, N]
    # [B, P]: one nonzero term per pixel (a reshape, not [..., 0]: LiteRT's GPU accelerator has no
    # kernel for a slice that drops an axis)
    label_map = tf.reshape(tf.matmul(visible, segment_id[..., None]), [-1, pixels])

    slot = tf.reshape(tf.range(1, num_queries + 1, dtype=f32), [1, 1, num_queries])
    member = tf.cast(tf.equal(segment_id[:, :, None], slot), f32) * survive[:, :, None]  # [B, N, slot]
    head = member * first[:, :, None]
    num_segments = tf.reduce_sum(first, axis=1)
    table_category = tf.reduce_sum(head * category[:, :, None], axis=1)
    return {
        "panoptic": tf.reshape(tf.cast(label_map, tf.int32), [-1, height, width]),
        "category": tf.cast(table_category, tf.int32),
        "is_thing": (table_category > 0) & (table_category <= num_thing_classes),
        "area": tf.cast(tf.reduce_sum(member * area[:, :, None], axis=1), tf.int32),
        "score": tf.reduce_max(member * score[:, :, None], axis=1),
        "num_segments": tf.cast(num_segments, tf.int32),
    }


@keras.saving.register_keras_serializable(package="kseg")
class MaskClassificationInference(layers.Layer):
    """Class and mask predictions -> probabilities, semantic map and panoptic segments.

    Args:
        image_size: (H, W) to upsample the mask logits to (bilinear, before the sigmoid).
        num_thing_classes: categories 1..num_thing_classes are things.
        object_threshold, overlap_threshold, mask_threshold, min_area: see
            `mask_classification_panoptic` (0.8, 0.8, 0.5, 0 pixels).

    Call args: class_logits [B, N, K + 1], mask_logits [B, h * w, N] at 1/4 scale ->
    {"class_probs" [B, N, K + 1], "mask_probs" [B, H, W, N], "semantic" [B, H, W, K]
    (sum over queries of class probability x mask probability; channel k is category k + 1),
    and `mask_classification_panoptic`'s outputs}.
    """

    def __init__(self, image_size, num_thing_classes, object_threshold=0.8, overlap_threshold=0.8,
                 mask_threshold=0.5, min_area=0, **kwargs):
        kwargs.setdefault("dtype", "float32")  # probabilities and panoptic inference stay float32
        super().__init__(**kwargs)
        self.image_size = tuple(int(s) for s in image_size)
        self.num_thing_classes = num_thing_classes
        self.object_threshold = object_threshold
        self.overlap_threshold = overlap_threshold
        self.mask_threshold = mask_threshold
        self.min_area = min_area

    def call(self, class_logits, mask_logits):
        height, width = self.image_size
        num_queries = class_logits.shape[1]
        class_probs = ops.softmax(ops.cast(class_logits, "float32"), axis=-1)
        grid = ops.reshape(ops.cast(mask_logits, "float32"), (-1, height // 4, width // 4, num_queries))
        mask_probs = ops.sigmoid(ops.image.resize(grid, (height, width), interpolation="bilinear"))
        semantic = grid_matmul(mask_probs, class_probs[:, :, :-1])
        panoptic = mask_classification_panoptic(
            class_probs, mask_probs, num_thing_classes=self.num_thing_classes,
            object_threshold=self.object_threshold, overlap_threshold=self.overlap_threshold,
            mask_threshold=self.mask_threshold, min_area=self.min_area)
        return {"class_probs": class_probs, "mask_probs": mask_probs,
                "semantic": ops.reshape(semantic, (-1, height, width, class_probs.shape[-1] - 1)), **panoptic}

    def get_config(self):
        return {**super().get_config(), "image_size": list(self.image_size),
                "num_thing_classes": self.num_thing_classes, "object_threshold": self.object_threshold,
                "overlap_threshold": self.overlap_threshold, "mask_threshold": self.mask_threshold,
                "min_area": self.min_area}
