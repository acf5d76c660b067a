"""Bipartite (Hungarian) matching of predictions to targets, and the pairwise costs MaskFormer uses.

    cost      [N, T]  float cost of giving target t to query n (or [B, N, T])
    valid     [T]     bool; False marks padding targets (or [B, T])
    ->
    matched   [T]     int32 query index assigned to target t; -1 for padding (or [B, T])

The assignment minimizes the summed cost over the valid targets, each valid target getting a
distinct query (Kuhn 1955). With more valid targets than queries, every query gets a target and
the targets left without a query read -1. NaN and +-inf costs count as +-1e8. Two solvers follow
this contract:

    hungarian_match_numpy   `scipy.optimize.linear_sum_assignment` (float64), NumPy in and out.
    hungarian_match_tf      pure TensorFlow: the shortest augmenting path form of the Hungarian
                            algorithm (Jonker & Volgenant 1987) in float64 with dual potentials,
                            one tf.while_loop step per Dijkstra step, batched, static shapes. It
                            compiles with XLA.

`hungarian_match` (the op MaskFormer's loss calls) runs the TF solver when the graph is being
compiled by XLA (`jit_compile=True`, or Keras' "auto" on a GPU), where `tf.numpy_function`
cannot run, and the SciPy one otherwise. Both give a minimal total cost; where several
assignments tie, they may pick different ones. Matching is training-only (no gradient; not
convertible to TFLite).

The pairwise mask costs take pixels on a flat axis P and queries / targets last:

    logits    [B, P, N]  predicted mask logits of N queries
    targets   [B, P, T]  binary target masks of T targets
    weights   [B, P]     1 for pixels that count, 0 for void
    ->        [B, N, T]
"""

import numpy as np
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from kseg.ops.xla import compiling_with_xla

# Finite stand-in for NaN / inf costs, which linear_sum_assignment rejects.
_LARGE_COST = 1e8


def hungarian_match_numpy(cost, valid):
    """The minimum-cost assignment of valid targets to distinct queries (NumPy).

    Args:
        cost: [..., N, T] float array, any leading batch dims.
        valid: [..., T] bool array.

    Returns:
        int32 [..., T]: the query of each target, -1 for padding and unassigned targets.

    Example:
    >>> cost = np.array([[1.0, 0.0], [0.0, 5.0], [2.0, 2.0]])
    >>> hungarian_match_numpy(cost, [True, True]).tolist()
    [1, 0]
    >>> hungarian_match_numpy(cost, [False, True]).tolist()
    [-1, 0]
    """
    cost = np.asarray(cost, np.float64)
    valid = np.asarray(valid, bool)
    if cost.ndim < 2 or valid.shape != cost.shape[:-2] + cost.shape[-1:]:
        raise ValueError(f"Expected cost [..., N, T] and valid [..., T]; got cost {cost.shape}, valid {valid.shape}.")
    matched = np.full(valid.shape, -1, np.int32)
    for index in np.ndindex(cost.shape[:-2]):
        columns = np.flatnonzero(valid[index])
        if columns.size == 0 or cost.shape[-2] == 0:
            continue
        block = np.nan_to_num(cost[index][:, columns], nan=_LARGE_COST, posinf=_LARGE_COST, neginf=-_LARGE_COST)
        rows, picked = linear_sum_assignment(block)
        matched[index][columns[picked]] = rows
    return matched


def hungarian_match(cost, valid):
    """The minimum-cost matching as a TF op with a static output shape: `hungarian_match_tf`
    when the graph is compiled by XLA, else `hungarian_match_numpy` through `tf.numpy_function`.

    Args:
        cost: float tensor [B, N, T] (or [N, T]); gradients are stopped.
        valid: bool tensor [B, T] (or [T]).

    Returns:
        int32 tensor shaped like `valid`: the query index per target, -1 for padding.

    Example:
    >>> hungarian_match(tf.constant([[0.0, 3.0], [1.0, 0.0]]), tf.constant([True, True])).numpy().tolist()
    [0, 1]
    """
    cost = tf.stop_gradient(tf.cast(cost, tf.float32))
    valid = tf.cast(valid, tf.bool)
    if compiling_with_xla():
        return hungarian_match_tf(cost, valid)
    matched = tf.numpy_function(hungarian_match_numpy, [cost, valid], tf.int32, stateful=False, name="hungarian")
    matched.set_shape(valid.shape)
    return matched


def hungarian_match_tf(cost, valid):
    """The minimum-cost assignment of valid targets to distinct queries, in TensorFlow ops only.

    Shortest augmenting paths with dual potentials (Jonker & Volgenant 1987; the O(n^2 m)
    Hungarian algorithm): the rows of the problem are the valid targets when there are at most
    N of them, else the queries; one row at a time joins the assignment through a Dijkstra
    search over the columns on reduced costs. Every image of the batch runs in the same
    tf.while_loop steps (an image whose search is over waits), with static shapes throughout,
    in float64, so it compiles with XLA and is exact to float64 round-off.

    Args:
        cost: float tensor [B, N, T] (or [N, T]) with static N and T; NaN / +-inf count as
            +-1e8; gradients are stopped.
        valid: bool tensor [B, T] (or [T]).

    Returns:
        int32 tensor shaped like `valid`: the query of each target, -1 for padding and
        unassigned targets (the same contract as `hungarian_match_numpy`).

    Example:
    >>> cost = tf.constant([[1.0, 0.0], [0.0, 5.0], [2.0, 2.0]])
    >>> hungarian_match_tf(cost, tf.constant([True, True])).numpy().tolist()
    [1, 0]
    >>> hungarian_match_tf(cost, tf.constant([False, True])).numpy().tolist()
    [-1, 0]
    """
    cost = tf.convert_to_tensor(cost)
    valid = tf.cast(valid, tf.bool)
    single = cost.shape.rank == 2
    if single:
        cost, valid = cost[None], valid[None]
    num_queries, num_targets = cost.shape[-2], cost.shape[-1]
    if (cost.shape.rank != 3 or None in (num_queries, num_targets) or valid.shape.rank != 2
            or valid.shape[-1] != num_targets):
        raise ValueError(f"Expected cost [B, N, T] with static N, T and valid [B, T]; got cost {cost.shape}, "
                         f"valid {valid.shape}.")
    cost = tf.cast(tf.stop_gradient(cost), tf.float64)
    cost = tf.where(tf.math.is_nan(cost), tf.constant(_LARGE_COST, tf.float64),
                    tf.clip_by_value(cost, -_LARGE_COST, _LARGE_COST))
    if num_queries == 0 or num_targets == 0:
        matched = tf.fill(tf.shape(valid), -1)
    else:
        matched = _shortest_augmenting_paths(cost, valid, num_queries, num_targets)
    return matched[0] if single else matched


def _shortest_augmenting_paths(cost, valid, num_queries, num_targets):
    """`hungarian_match_tf` on [B, N, T] float64 costs with N, T >= 1: int32 [B, T].

    Square form of side S = max(N, T) plus a virtual row and column 0 (as in the classic
    array formulation): per image, rows are targets (cost transposed; rows of invalid targets
    inactive, columns past N unavailable) if its valid targets fit the queries, else queries
    (columns of invalid targets unavailable). Active rows never outnumber available columns,
    so every search ends at a free column.
    """
    n, t = num_queries, num_targets
    side = max(n, t)
    size = side + 1  # index 0 is the virtual row / column
    batch = tf.shape(cost)[0]
    inf = tf.constant(float("inf"), tf.float64)
    num_valid = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
    targets_are_rows = num_valid <= n  # [B]

    def square(matrix):  # [B, r, c] -> [B, size, size] with a zero virtual row / column 0
        return tf.pad(matrix, [[0, 0], [1, side - matrix.shape[1]], [1, side - matrix.shape[2]]])

    by_target = square(tf.transpose(cost, [0, 2, 1]))
    by_query = square(cost)
    matrix = tf.where(targets_are_rows[:, None, None], by_target, by_query)
    index = tf.range(size)
    query_column = (index >= 1) & (index <= n)
    target_column = tf.pad(valid, [[0, 0], [1, side - t]])
    available = tf.where(targets_are_rows[:, None], query_column[None], target_column)  # [B, size]
    active = tf.where(targets_are_rows[:, None], target_column, query_column[None])  # rows, [B, size]
    # Active rows first, in order: the k-th row each image adds to the assignment.
    order = tf.argsort(tf.cast(~active, tf.int32), axis=1, stable=True)  # [B, size]
    num_rows = tf.reduce_sum(tf.cast(active, tf.int32), axis=1)

    def gather(values, positions):  # values [B, size], positions [B] -> [B]
        return tf.gather(values, positions, batch_dims=1)

    def add_row(k, u, v, owner, way):
        """Adds the k-th active row of every image that has one: a Dijkstra search from it
        to the nearest free column on reduced costs, then the flip along the path found."""
        adding = k < num_rows  # [B]
        row = tf.where(adding, gather(order, tf.fill([batch], k)), 0)
        owner = tf.where((index[None] == 0) & adding[:, None], row[:, None], owner)
        column = tf.zeros([batch], tf.int32)
        distance = tf.fill([batch, size], inf)
        used = tf.zeros([batch, size], tf.bool)  # columns reached
        used_rows = tf.zeros([batch, size], tf.bool)  # their rows

        def searching(column, searching_flags, *_):
            return tf.reduce_any(searching_flags)

        def dijkstra_step(column, search, u, v, way, distance, used, used_rows):
            current_row = gather(owner, column)
            used = used | ((index[None] == column[:, None]) & search[:, None])
            used_rows = used_rows | ((index[None] == current_row[:, None]) & search[:, None])
            reduced = (tf.gather(matrix, current_row, batch_dims=1) - gather(u, current_row)[:, None] - v)
            free = ~used & available
            better = free & (reduced < distance) & search[:, None]
            distance = tf.where(better, reduced, distance)
            way = tf.where(better, column[:, None], way)
            candidates = tf.where(free, distance, inf)
            delta = tf.reduce_min(candidates, axis=1)
            nearest = tf.argmin(candidates, axis=1, output_type=tf.int32)
            found = search & tf.math.is_finite(delta)  # no free column: the image's search stops
            step = tf.where(found, delta, 0.0)[:, None]
            u = u + step * tf.cast(used_rows, tf.float64)
            v = v - step * tf.cast(used, tf.float64)
            distance = tf.where(used, distance, distance - step)
            column = tf.where(found, nearest, column)
            search = found & (gather(owner, column) != 0)
            return column, search, u, v, way, distance, used, used_rows

        column, _, u, v, way, _, _, _ = tf.while_loop(
            searching, dijkstra_step, (column, adding, u, v, way, distance, used, used_rows),
            maximum_iterations=size)
        column = tf.where(adding & (gather(owner, column) == 0) & (column != 0), column, 0)

        def flipping(column, owner):
            return tf.reduce_any(column != 0)

        def flip_step(column, owner):
            previous = gather(way, column)
            moved = gather(owner, previous)
            owner = tf.where((index[None] == column[:, None]) & (column != 0)[:, None], moved[:, None], owner)
            return tf.where(column != 0, previous, 0), owner

        _, owner = tf.while_loop(flipping, flip_step, (column, owner), maximum_iterations=size)
        return k + 1, u, v, owner, way

    zeros = tf.zeros([batch, size], tf.float64)
    unassigned = tf.zeros([batch, size], tf.int32)
    _, _, _, owner, _ = tf.while_loop(
        lambda k, *_: k < tf.reduce_max(num_rows), add_row, (tf.constant(0), zeros, zeros, unassigned, unassigned),
        maximum_iterations=size)
    # owner[b, j]: the row (1-based, 0 = none) holding column j (1-based).
    as_rows = owner[:, 1 : t + 1] - 1  # targets are columns: the query of target t
    holder = tf.equal(owner[:, 1 : n + 1, None], tf.range(1, t + 1)[None, None])  # targets are rows: [B, N, T]
    by_rows = tf.where(tf.reduce_any(holder, axis=1), tf.argmax(tf.cast(holder, tf.int32), axis=1,
                                                                output_type=tf.int32), -1)
    matched = tf.where(targets_are_rows[:, None], by_rows, as_rows)
    return tf.where(valid, matched, -1)


def pairwise_class_cost(class_probs, target_classes):
    """-p_n(c_t): minus each query's probability of each target's class.

    Args:
        class_probs: [B, N, C] softmax probabilities.
        target_classes: [B, T] int class indices in [0, C) (padding may hold anything in range).

    Returns:
        [B, N, T].
    """
    onehot = tf.one_hot(target_classes, class_probs.shape[-1], dtype=class_probs.dtype)  # [B, T, C]
    return -tf.matmul(class_probs, onehot, transpose_b=True)


def sigmoid_focal_terms(logits, alpha=0.25, gamma=2.0):
    """Per-pixel sigmoid focal loss (Lin et al. 2017) if the label were 1 and if it were 0.

    Returns:
        (positive, negative), each shaped like `logits`.
    """
    prob = tf.sigmoid(logits)
    positive = alpha * tf.pow(1.0 - prob, gamma) * tf.nn.softplus(-logits)  # -log(p) = softplus(-x)
    negative = (1.0 - alpha) * tf.pow(prob, gamma) * tf.nn.softplus(logits)  # -log(1 - p) = softplus(x)
    return positive, negative


def pairwise_focal_cost(logits, targets, weights, alpha=0.25, gamma=2.0):
    """Mean sigmoid focal loss over the counted pixels for every (query, target) pair.

    Args:
        logits: [B, P, N]; targets: [B, P, T] in {0, 1}; weights: [B, P] in {0, 1}.

    Returns:
        [B, N, T].
    """
    positive, negative = sigmoid_focal_terms(logits, alpha, gamma)
    w = weights[..., None]
    total = (tf.matmul(positive * w, targets, transpose_a=True)
             + tf.matmul(negative * w, 1.0 - targets, transpose_a=True))
    return total / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)[:, None, None]


def pairwise_dice_cost(logits, targets, weights):
    """1 - Dice(sigmoid(logits_n), target_t) over the counted pixels, +1 smoothing (Milletari et al. 2016).

    Args:
        logits: [B, P, N]; targets: [B, P, T] in {0, 1}; weights: [B, P] in {0, 1}.

    Returns:
        [B, N, T].
    """
    prob = tf.sigmoid(logits) * weights[..., None]
    targets = targets * weights[..., None]
    overlap = tf.matmul(prob, targets, transpose_a=True)
    sizes = tf.reduce_sum(prob, axis=1)[:, :, None] + tf.reduce_sum(targets, axis=1)[:, None, :]
    return 1.0 - (2.0 * overlap + 1.0) / (sizes + 1.0)
