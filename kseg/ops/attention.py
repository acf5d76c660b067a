"""Multi-head scaled dot-product attention from static-shape matmul, softmax, reshape and
transpose: ops that TFLite has as builtins and LiteRT's GPU path takes."""

import math

from keras import ops


def multi_head_attention(q, k, v, num_heads, weights_dropout=None, keys_first=False):
    """Scaled dot-product attention split into heads (SegFormer's and MaskFormer's attention).

    Args:
        q: [B, N, C] queries.
        k, v: [B, M, C] keys and values (M may be smaller than N: sequence reduction).
        num_heads: h; C must be divisible by h.
        weights_dropout: None, or a callable applied to the attention weights [B, h, N, M]
            (a Dropout layer in training).
        keys_first: compute the scores as (k q^T)^T instead of q k^T: the same numbers, with the
            queries as the matmul's second operand. When the queries are a constant of the
            converted graph (MaskFormer's first decoder layer: learned queries over a zero state,
            folded by the TFLite converter), LiteRT's GPU accelerator takes a BATCH_MATMUL only
            with the constant second ("Not supported batched mat mul case: non-constant tensor").

    Returns:
        [B, N, C]: for each head, softmax(q k^T / sqrt(d)) v with d = C / h, heads concatenated
        back in order along the channels.
    """
    n, m, channels = q.shape[1], k.shape[1], q.shape[2]
    head_dim = channels // num_heads

    def heads(x, length):  # [B, L, C] -> [B, h, L, d]
        return ops.transpose(ops.reshape(x, (-1, length, num_heads, head_dim)), (0, 2, 1, 3))

    q = heads(q, n) * (1.0 / math.sqrt(head_dim))
    k, v = heads(k, m), heads(v, m)
    if keys_first:  # [B, h, M, N] -> [B, h, N, M]
        scores = ops.transpose(ops.matmul(k, ops.transpose(q, (0, 1, 3, 2))), (0, 1, 3, 2))
    else:
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
    scores = ops.softmax(scores, axis=-1)
    if weights_dropout is not None:
        scores = weights_dropout(scores)
    out = ops.matmul(scores, v)  # [B, h, N, d]
    return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, n, channels))
