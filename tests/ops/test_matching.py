"""kseg.ops.matching: the Hungarian matchers (SciPy and pure TF, also compiled by XLA) against
brute force (hypothesis), the TF wrapper's static shapes and its XLA path, and the pairwise
MaskFormer costs against NumPy loops."""

import doctest
import itertools

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from kseg.ops import matching
from kseg.ops.matching import hungarian_match, hungarian_match_numpy, hungarian_match_tf


def brute_force_cost(cost, valid):
    """The minimum total cost of giving the valid targets distinct queries (as many as fit)."""
    columns = np.flatnonzero(valid)
    rows = cost.shape[0]
    if len(columns) == 0:
        return 0.0
    if len(columns) <= rows:
        return min(sum(cost[q, t] for q, t in zip(perm, columns)) for perm in itertools.permutations(range(rows),
                                                                                                     len(columns)))
    return min(sum(cost[q, t] for q, t in enumerate(perm)) for perm in itertools.permutations(columns, rows))


@st.composite
def problems(draw):
    queries = draw(st.integers(1, 5))
    targets = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    cost = rng.normal(size=(queries, targets))
    if draw(st.booleans()):  # ties
        cost = np.round(cost)
    valid = np.array(draw(st.lists(st.booleans(), min_size=targets, max_size=targets)))
    return cost, valid


@settings(max_examples=150, deadline=None)
@given(problems())
def test_matches_brute_force_on_rectangular_and_padded_problems(problem):
    cost, valid = problem
    matched = hungarian_match_numpy(cost, valid)
    assert matched.shape == valid.shape and matched.dtype == np.int32
    assert (matched[~valid] == -1).all()
    assigned = matched[matched >= 0]
    assert len(set(assigned.tolist())) == len(assigned)  # distinct queries
    assert len(assigned) == min(int(valid.sum()), cost.shape[0])  # every valid target, as far as queries go
    total = sum(cost[q, t] for t, q in enumerate(matched) if q >= 0)
    assert total == pytest.approx(brute_force_cost(cost, valid), abs=1e-9)


def check_optimal(matched, cost, valid):
    """`matched` follows the contract and reaches the brute-force minimum (ties may pick other pairs)."""
    assert matched.shape == valid.shape and matched.dtype == np.int32
    assert (matched[~valid] == -1).all()
    assigned = matched[matched >= 0]
    assert len(set(assigned.tolist())) == len(assigned)
    assert len(assigned) == min(int(valid.sum()), cost.shape[0])
    total = sum(cost[q, t] for t, q in enumerate(matched) if q >= 0)
    assert total == pytest.approx(brute_force_cost(cost, valid), abs=1e-6)


_tf_match = tf.function(hungarian_match_tf)
_xla_match = tf.function(hungarian_match_tf, jit_compile=True)


@st.composite
def batches(draw):
    """2 problems of one shape: the TF solver runs them in the same loop steps."""
    queries, targets = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    cost = rng.normal(size=(2, queries, targets)).astype(np.float32)
    if draw(st.booleans()):  # ties
        cost = np.round(cost)
    valid = np.array(draw(st.lists(st.booleans(), min_size=2 * targets, max_size=2 * targets))).reshape(2, targets)
    return cost, valid


@settings(max_examples=60, deadline=None)
@given(batches())
def test_tf_matcher_reaches_the_minimum_in_a_graph_and_under_xla(problem):
    cost, valid = problem
    for solve in (_tf_match, _xla_match):
        matched = solve(cost, valid).numpy()
        for b in range(2):
            check_optimal(matched[b], cost[b].astype(np.float64), valid[b])


@settings(max_examples=40, deadline=None)
@given(problems())
def test_tf_matcher_reaches_the_minimum_eagerly_on_one_problem(problem):
    cost, valid = problem
    check_optimal(hungarian_match_tf(cost, valid).numpy(), cost, valid)


def test_tf_matcher_equals_scipy_cost_on_maskformer_sizes_and_non_finite_costs():
    rng = np.random.default_rng(4)
    cost = rng.normal(size=(3, 20, 27)).astype(np.float32)  # 20 queries, 4 things + 23 stuff slots
    valid = rng.random((3, 27)) < 0.5
    valid[0, :3] = True
    valid[1] = True  # more valid targets than queries
    valid[2] = False
    cost[0, 0, 0], cost[0, 1, 1], cost[0, 2, 2] = np.nan, np.inf, -np.inf
    want = hungarian_match_numpy(cost, valid)
    got = _xla_match(cost, valid).numpy()
    finite = np.nan_to_num(cost.astype(np.float64), nan=1e8, posinf=1e8, neginf=-1e8)
    for b in range(3):
        assert (got[b] >= 0).sum() == (want[b] >= 0).sum()
        total = lambda m: sum(finite[b, q, t] for t, q in enumerate(m) if q >= 0)  # noqa: E731
        assert total(got[b]) == pytest.approx(total(want[b]), rel=1e-9)
    assert (got[2] == -1).all() and got[0, 2] == 2  # the -inf pair is taken


def test_hungarian_match_takes_the_tf_solver_under_xla():
    cost = tf.constant(np.random.default_rng(5).normal(size=(2, 6, 4)).astype(np.float32))
    valid = tf.constant([[True, True, False, True], [True, True, True, True]])

    @tf.function(jit_compile=True)
    def compiled(cost, valid):
        return hungarian_match(cost, valid)  # tf.numpy_function would not compile

    np.testing.assert_array_equal(compiled(cost, valid).numpy(), hungarian_match_numpy(cost.numpy(), valid.numpy()))


def test_tf_matcher_rejects_dynamic_or_mismatched_shapes():
    with pytest.raises(ValueError, match="valid"):
        hungarian_match_tf(np.zeros((2, 3, 2), np.float32), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="static"):
        tf.function(hungarian_match_tf, input_signature=[tf.TensorSpec([2, None, 3]), tf.TensorSpec([2, 3], tf.bool)]
                    ).get_concrete_function()


def test_batched_matches_each_image_and_tolerates_non_finite_costs():
    rng = np.random.default_rng(1)
    cost = rng.normal(size=(3, 4, 3))
    valid = np.array([[True, True, False], [False, False, False], [True, True, True]])
    cost[2, 0, 0] = np.nan
    cost[2, 1, 1] = np.inf
    matched = hungarian_match_numpy(cost, valid)
    for b in range(3):
        np.testing.assert_array_equal(matched[b], hungarian_match_numpy(cost[b], valid[b]))
    assert (matched[1] == -1).all()
    assert matched[2, 0] != 0 and matched[2, 1] != 1  # NaN / inf count as very expensive


def test_tf_wrapper_has_static_shape_inside_a_graph():
    @tf.function(input_signature=[tf.TensorSpec([2, 4, 3], tf.float32), tf.TensorSpec([2, 3], tf.bool)])
    def match(cost, valid):
        matched = hungarian_match(cost, valid)
        assert matched.shape == (2, 3)
        return matched

    cost = np.random.default_rng(2).normal(size=(2, 4, 3)).astype(np.float32)
    valid = np.array([[True, False, True], [True, True, True]])
    np.testing.assert_array_equal(match(cost, valid).numpy(), hungarian_match_numpy(cost, valid))


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="valid"):
        hungarian_match_numpy(np.zeros((3, 2)), np.ones(3, bool))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_pairwise_costs_equal_numpy_loops():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=2.0, size=(2, 12, 3)).astype(np.float32)  # [B, P, N]
    targets = (rng.random((2, 12, 4)) < 0.4).astype(np.float32)  # [B, P, T]
    weights = (rng.random((2, 12)) < 0.8).astype(np.float32)
    probs = rng.dirichlet(np.ones(5), size=(2, 3)).astype(np.float32)  # [B, N, C]
    classes = rng.integers(0, 5, size=(2, 4))
    focal = matching.pairwise_focal_cost(logits, targets, weights).numpy()
    dice = matching.pairwise_dice_cost(logits, targets, weights).numpy()
    klass = matching.pairwise_class_cost(probs, classes).numpy()
    for b, n, t in itertools.product(range(2), range(3), range(4)):
        p, y, w = _sigmoid(logits[b, :, n]), targets[b, :, t], weights[b]
        per_pixel = np.where(y > 0, 0.25 * (1 - p) ** 2 * -np.log(p), 0.75 * p**2 * -np.log(1 - p))
        assert focal[b, n, t] == pytest.approx((per_pixel * w).sum() / w.sum(), rel=1e-4)
        expected_dice = 1 - (2 * (p * y * w).sum() + 1) / ((p * w).sum() + (y * w).sum() + 1)
        assert dice[b, n, t] == pytest.approx(expected_dice, rel=1e-4, abs=1e-6)
        assert klass[b, n, t] == pytest.approx(-probs[b, n, classes[b, t]], rel=1e-6)


def test_docstring_examples_run():
    failures, _ = doctest.testmod(matching, extraglobs={"np": np, "tf": tf})
    assert failures == 0
