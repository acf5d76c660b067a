"""kseg.ops.panoptic_fusion: hand-made cases, the TF op against its NumPy reference (hypothesis),
the PanopticFusion layer's config, and builtin-only TFLite export with exact LiteRT parity."""

import doctest
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from kseg.layers import PanopticFusion
from kseg.ops import panoptic_fusion as fusion_module
from kseg.ops.panoptic_fusion import OUTPUT_KEYS, panoptic_fusion
from kseg.ops.panoptic_fusion_reference import panoptic_fusion_numpy

H = W = 8


def box_mask(y1, x1, y2, x2, size=(H, W)):
    mask = np.zeros(size, np.float32)
    mask[y1:y2, x1:x2] = 0.9
    return mask


def stuff_logits(channel_map, num_channels=3):
    """[H, W, S] logits whose argmax is channel_map."""
    return np.eye(num_channels, dtype=np.float32)[channel_map] * 4.0


def fuse_both(*args, **kwargs):
    """Runs the op and the reference, checks they agree, returns the op's outputs as NumPy."""
    got = {k: v.numpy() for k, v in panoptic_fusion(*args, **kwargs).items()}
    want = panoptic_fusion_numpy(*args, **kwargs)
    assert_same(got, want)
    return got


def assert_same(got, want):
    for key in OUTPUT_KEYS:
        if key == "score":
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def two_instances(second_box):
    masks = np.stack([box_mask(0, 0, 4, 4), box_mask(*second_box)])
    return masks, np.float32([0.9, 0.8]), np.int32([1, 2])


ALL_VOID = stuff_logits(np.zeros([H, W], int))  # argmax is the thing channel everywhere


def test_docstring_example_runs():
    assert doctest.testmod(fusion_module).failed == 0


def test_lower_score_instance_kept_when_mostly_visible():
    # second: 4x4 = 16 pixels, 4 under the first -> 12 / 16 visible >= 0.5
    masks, scores, classes = two_instances((2, 2, 6, 6))
    out = fuse_both(masks, scores, classes, 2, ALL_VOID, stuff_categories=[5, 6], min_stuff_area=1)
    assert out["num_segments"] == 2
    assert out["category"][:2].tolist() == [1, 2] and out["area"][:2].tolist() == [16, 12]
    assert out["panoptic"][3, 3] == 1 and out["panoptic"][5, 5] == 2 and out["panoptic"][7, 7] == 0
    assert out["is_thing"].tolist() == [True, True, False, False]


def test_lower_score_instance_dropped_when_mostly_hidden():
    # second: 4x2 = 8 pixels, 6 under the first -> 2 / 8 visible < 0.5: dropped, claims nothing
    masks, scores, classes = two_instances((1, 2, 5, 4))
    logits = stuff_logits(np.full([H, W], 1))
    out = fuse_both(masks, scores, classes, 2, logits, stuff_categories=[5, 6], min_stuff_area=1)
    assert out["num_segments"] == 2
    assert out["category"][:2].tolist() == [1, 5] and out["is_thing"][:2].tolist() == [True, False]
    assert out["panoptic"][4, 3] == 2  # the dropped instance's own pixels went to stuff
    assert out["area"][:2].tolist() == [16, 64 - 16]


def test_exactly_half_visible_is_kept():
    masks, scores, classes = two_instances((2, 0, 6, 4))  # 16 pixels, 8 visible
    out = fuse_both(masks, scores, classes, 2, ALL_VOID, stuff_categories=[5, 6])
    assert out["area"][:2].tolist() == [16, 8]


def test_score_tie_lower_index_paints_first():
    masks = np.stack([box_mask(0, 0, 4, 4), box_mask(0, 0, 4, 4), box_mask(2, 2, 6, 6)])
    scores = np.float32([0.7, 0.7, 0.9])
    out = fuse_both(masks, scores, np.int32([3, 4, 5]), 3, ALL_VOID, stuff_categories=[5, 6])
    # index 2 first (highest), then index 0 (tie, lower index) keeps 12/16, index 1 sees 0 free
    assert out["num_segments"] == 2 and out["category"][:2].tolist() == [5, 3]


def test_identical_instances_keep_only_the_first():
    masks = np.stack([box_mask(1, 1, 5, 5)] * 3)
    out = fuse_both(masks, np.float32([0.6, 0.95, 0.8]), np.int32([1, 2, 3]), 3, ALL_VOID, stuff_categories=[5, 6])
    assert out["num_segments"] == 1 and out["category"][0] == 2 and out["area"][0] == 16
    assert out["score"][0] == np.float32(0.95)


def test_visible_part_is_taken_against_the_union_of_kept_masks():
    # A and B are kept and overlap each other; C lies on their shared rows. C's visible part is
    # C minus (A | B) = 8 of 16 pixels, kept at 0.5; subtracting the pairwise overlaps
    # (8 with A, 8 with B) would leave 0 and drop it.
    masks = np.stack([box_mask(0, 0, 4, 4), box_mask(2, 0, 6, 4), box_mask(2, 0, 4, 8)])
    out = fuse_both(masks, np.float32([0.9, 0.8, 0.7]), np.int32([1, 2, 3]), 3, ALL_VOID, stuff_categories=[5, 6])
    assert out["num_segments"] == 3 and out["area"][:3].tolist() == [16, 8, 8]
    assert (out["panoptic"][2:4, 4:8] == 3).all() and (out["panoptic"][2:4, :4] == 1).all()


def test_a_dropped_instance_leaves_its_pixels_to_later_ones():
    # B (second) sees 7 of 16 pixels and is dropped; C, painted after it, then sees all of its
    # pixels but the one under A: 15, not the 12 it would see had B claimed its part.
    masks = np.stack([box_mask(0, 0, 4, 4), box_mask(1, 1, 5, 5), box_mask(3, 3, 7, 7)])
    out = fuse_both(masks, np.float32([0.9, 0.8, 0.7]), np.int32([1, 2, 3]), 3, ALL_VOID, stuff_categories=[5, 6])
    assert out["num_segments"] == 2 and out["category"][:2].tolist() == [1, 3]
    assert out["area"][:2].tolist() == [16, 15] and out["panoptic"][4, 4] == 2


def test_no_detections_gives_stuff_only():
    masks, scores, classes = two_instances((2, 2, 6, 6))
    channel = np.zeros([H, W], int)
    channel[:, :3], channel[:, 3:] = 1, 2
    out = fuse_both(masks, scores, classes, 0, stuff_logits(channel), stuff_categories=[5, 6], min_stuff_area=1)
    assert out["num_segments"] == 2 and not out["is_thing"].any()
    assert out["category"][:2].tolist() == [5, 6] and out["area"][:2].tolist() == [24, 40]
    np.testing.assert_array_equal(out["panoptic"], np.where(channel == 1, 1, 2))


def test_all_void_semantic_and_no_detections():
    masks, scores, classes = two_instances((2, 2, 6, 6))
    out = fuse_both(masks, scores, classes, 0, ALL_VOID, stuff_categories=[5, 6], min_stuff_area=1)
    assert out["num_segments"] == 0 and not out["panoptic"].any() and not out["area"].any()


def test_small_stuff_region_dropped_by_min_area():
    channel = np.full([H, W], 1)
    channel[:2, :2] = 2  # 4 pixels of channel 2
    out = fuse_both(np.zeros([1, H, W], np.float32), np.float32([0.9]), np.int32([1]), 1, stuff_logits(channel),
                    stuff_categories=[5, 6], min_stuff_area=5)
    assert out["num_segments"] == 1 and out["category"][0] == 5  # the empty-mask instance is dropped too
    assert (out["panoptic"][:2, :2] == 0).all() and out["area"][0] == 60


def test_padding_and_low_scores_ignored():
    masks = np.stack([box_mask(0, 0, 4, 4), box_mask(4, 4, 8, 8), box_mask(0, 4, 4, 8), box_mask(4, 0, 8, 4)])
    scores = np.float32([0.9, 0.4, 0.99, 0.99])
    classes = np.int32([1, 2, 0, 4])  # index 2 has class 0 (padding); index 3 is past num_detections
    out = fuse_both(masks, scores, classes, 3, ALL_VOID, stuff_categories=[5, 6])
    assert out["num_segments"] == 1 and out["category"][0] == 1
    assert (out["panoptic"] == 1).sum() == 16 and (out["panoptic"] == 0).sum() == 48


def test_stuff_score_is_mean_softmax_probability():
    logits = np.zeros([H, W, 2], np.float32)
    logits[..., 1] = np.log(3.0)  # p = 0.75 everywhere
    out = fuse_both(np.zeros([1, H, W], np.float32), np.float32([0.0]), np.int32([0]), 0, logits,
                    stuff_categories=[9], min_stuff_area=1)
    assert out["category"][0] == 9 and abs(out["score"][0] - 0.75) < 1e-6


def test_max_segments_truncates_in_painting_order():
    masks = np.stack([box_mask(0, 0, 4, 4), box_mask(4, 4, 8, 8)])
    out = fuse_both(masks, np.float32([0.6, 0.9]), np.int32([1, 2]), 2, stuff_logits(np.full([H, W], 1)),
                    stuff_categories=[5, 6], min_stuff_area=1, max_segments=1)
    assert out["category"].tolist() == [2] and out["num_segments"] == 1
    assert set(np.unique(out["panoptic"])) == {0, 1}


def test_batched_matches_per_image():
    rng = np.random.default_rng(0)
    masks = rng.uniform(size=[2, 3, H, W]).astype(np.float32)
    scores = rng.uniform(0.4, 1, size=[2, 3]).astype(np.float32)
    classes, num = np.int32([[1, 2, 3], [4, 5, 0]]), np.int32([3, 2])
    logits = rng.normal(size=[2, H, W, 3]).astype(np.float32)
    options = dict(stuff_categories=[5, 6], min_stuff_area=3)
    batched = {k: v.numpy() for k, v in panoptic_fusion(masks, scores, classes, num, logits, **options).items()}
    assert_same(batched, panoptic_fusion_numpy(masks, scores, classes, num, logits, **options))
    for b in range(2):
        one = panoptic_fusion_numpy(masks[b], scores[b], classes[b], num[b], logits[b], **options)
        assert_same({k: v[b] for k, v in batched.items()}, one)


def test_bad_stuff_categories_raise():
    with pytest.raises(ValueError, match="stuff_categories"):
        panoptic_fusion(np.zeros([1, H, W]), [0.9], [1], 1, ALL_VOID, stuff_categories=[5])


# --- the op against the reference on random inputs ------------------------------------------


@st.composite
def fusion_inputs(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    d = draw(st.integers(1, 6))
    s = draw(st.integers(1, 4))
    size = draw(st.sampled_from([16, 15]))  # 15 x 15 pixels: not whole int64 words of codes
    masks = np.zeros([d, size, size], np.float32)
    for i in range(d):  # boxes (heavy overlap), sometimes noisy, sometimes a copy of another
        y1, x1 = rng.integers(0, 12, size=2)
        y2, x2 = y1 + rng.integers(0, 10), x1 + rng.integers(0, 10)
        masks[i, y1:y2, x1:x2] = rng.choice([0.5, 0.7, 1.0])
        if rng.uniform() < 0.3:
            masks[i] = rng.uniform(size=[size, size])
        if i and rng.uniform() < 0.2:
            masks[i] = masks[rng.integers(0, i)]
    scores = rng.choice(np.float32([0.3, 0.5, 0.6, 0.8, 0.8, 0.9]), size=d)  # ties likely
    classes = rng.integers(0, 4, size=d).astype(np.int32)
    num = int(rng.integers(0, d + 1))
    logits = rng.normal(size=[size, size, s]).astype(np.float32)
    thing_class = draw(st.sampled_from([0, s - 1, None]))
    stuff_categories = list(range(10, 10 + s - (thing_class is not None)))
    options = dict(stuff_categories=stuff_categories, thing_class=thing_class,
                   overlap_threshold=draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])),
                   min_stuff_area=draw(st.sampled_from([0, 5, 40])),
                   max_segments=draw(st.sampled_from([None, 2, 5])))
    return (masks, scores, classes, num, logits), options


@settings(max_examples=40, deadline=None)
@given(fusion_inputs())
def test_op_matches_numpy_reference(case):
    args, options = case
    got = {k: v.numpy() for k, v in panoptic_fusion(*args, **options).items()}
    assert_same(got, panoptic_fusion_numpy(*args, **options))
    # the table agrees with the map
    for n in range(int(got["num_segments"])):
        assert (got["panoptic"] == n + 1).sum() == got["area"][n]
    assert got["panoptic"].max() <= got["num_segments"]


@settings(max_examples=30, deadline=None)
@given(fusion_inputs(), st.sampled_from([1, 2, 3]))
def test_op_matches_numpy_reference_across_blocks(case, block):
    # Step 2 paints BLOCK slots per pixel histogram; with small blocks the masks of one image
    # fall in several blocks, so pixels taken in an earlier block, overlaps that span blocks
    # and blocks skipped past the last candidate are exercised on the same inputs.
    args, options = case
    with mock.patch.object(fusion_module, "BLOCK", block):
        got = {k: v.numpy() for k, v in panoptic_fusion(*args, **options).items()}
    assert_same(got, panoptic_fusion_numpy(*args, **options))


@pytest.mark.parametrize("block", [1, 2, 7])
def test_third_instance_depends_on_whether_the_second_was_kept(block):
    # 0 (0.9) takes the 4 left columns; 1 (0.8) has 12 of its 16 pixels under 0 and is dropped;
    # 2 (0.7) has 8 of 16 under 0 and 2 more under 1 only: kept (8 >= 8) because 1 was dropped,
    # it would have shown 6 had 1 been kept. Pairwise overlaps cannot tell these apart.
    masks = np.zeros([3, H, W], np.float32)
    masks[0, :, :4] = 0.9
    masks[1, 0:4, 1:5] = 0.9
    masks[2, 2:6, 2:6] = 0.9
    args = (masks, np.float32([0.9, 0.8, 0.7]), np.int32([1, 2, 3]), 3, ALL_VOID)
    with mock.patch.object(fusion_module, "BLOCK", block):
        out = fuse_both(*args, stuff_categories=[8, 9])
    assert out["num_segments"] == 2 and out["category"][:2].tolist() == [1, 3] and out["area"][1] == 8


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_pixels_exactly_at_and_just_below_the_mask_threshold(threshold):
    # the bool stack is `mask >= mask_threshold`: a value one float below the threshold is off
    # the mask, the threshold itself and one float above are on it
    t = np.float32(threshold)
    below, above = np.nextafter(t, np.float32(0)), np.nextafter(t, np.float32(1))
    masks = np.zeros([2, H, W], np.float32)
    masks[0, :2] = t
    masks[0, 2:4] = below
    masks[1, 3:5] = above
    masks[1, 5:6] = below
    out = fuse_both(masks, np.float32([0.9, 0.8]), np.int32([1, 2]), 2, ALL_VOID, stuff_categories=[5, 6],
                    mask_threshold=threshold)
    assert out["area"][:2].tolist() == [16, 16] and (out["panoptic"][:2] == 1).all()
    assert not out["panoptic"][2].any() and (out["panoptic"][3:5] == 2).all() and not out["panoptic"][5:].any()


# --- the layer ------------------------------------------------------------------------------


def test_layer_config_round_trip():
    layer = PanopticFusion(stuff_categories=[5, 6], thing_class=0, min_stuff_area=10, max_segments=7, name="fuse")
    clone = PanopticFusion.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is PanopticFusion and restored.get_config() == layer.get_config()


def _fusion_model(d, size, s, **options):
    inputs = [keras.Input((d, size, size), batch_size=1, name="masks"),
              keras.Input((d,), batch_size=1, name="scores"),
              keras.Input((d,), batch_size=1, dtype="int32", name="classes"),
              keras.Input((), batch_size=1, dtype="int32", name="num_detections"),
              keras.Input((size, size, s), batch_size=1, name="semantic_logits")]
    return keras.Model(inputs, PanopticFusion(**options)(*inputs))


def _convert(model):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # fails on Flex ops
    return converter.convert()


def _litert_runner(content, num_threads=2):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=num_threads)
    runner = interpreter.get_signature_runner()
    return interpreter, runner


def _random_batch(d, size, s, seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros([1, d, size, size], np.float32)
    for i in range(d):
        y1, x1 = rng.integers(0, size - size // 4, size=2)
        h, w = rng.integers(1, size // 3, size=2)
        masks[0, i, y1:y1 + h, x1:x1 + w] = rng.uniform(0.3, 1.0)
    scores = rng.choice(np.float32([0.4, 0.6, 0.7, 0.9]), size=[1, d])
    classes = rng.integers(1, 5, size=[1, d]).astype(np.int32)
    num = np.int32([rng.integers(0, d + 1)])
    logits = rng.normal(size=[1, size, size, s]).astype(np.float32)
    return masks, scores, classes, num, logits


def test_layer_in_model_saves_and_reloads(tmp_path):
    model = _fusion_model(3, 16, 3, stuff_categories=[5, 6], min_stuff_area=8)
    batch = list(_random_batch(3, 16, 3, seed=1))
    path = str(tmp_path / "fusion.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    got, want = restored(batch), model(batch)
    for key in OUTPUT_KEYS:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))
    assert_same({k: np.asarray(v) for k, v in want.items()},
                panoptic_fusion_numpy(*batch, stuff_categories=[5, 6], min_stuff_area=8))


def _large_tensors(content, elements):
    """(name, dtype) of the tensors in the main graph that hold more than `elements` elements."""
    from export import runtime

    graph = runtime.parse_model(content).subgraphs[0]
    return [(t.name.decode() if isinstance(t.name, bytes) else t.name, runtime.dtype_name(t.type))
            for t in graph.tensors if t.shape is not None and len(t.shape) and int(np.prod(t.shape)) > elements]


def test_litert_graph_makes_one_bool_copy_of_the_mask_stack():
    # The graph thresholds the [1, D, H, W] masks once into a bool stack (1 byte a pixel) and
    # reads that BLOCK slots at a time (GATHER): no float copy of the whole stack, binarized,
    # reordered, sliced or unstacked. The first graph made five float copies, which cost most
    # of its LiteRT time (benchmarks/panoptic_fusion_time.py).
    block, size, s = fusion_module.BLOCK, 32, 4
    d = 2 * block + 3
    content = _convert(_fusion_model(d, size, s, stuff_categories=[11, 12, 13], min_stuff_area=20))
    large = _large_tensors(content, block * size * size)
    assert sorted(dtype for _, dtype in large) == ["bool", "float32"], large
    assert any("masks" in name for name, dtype in large if dtype == "float32"), large


def test_litert_graph_paints_each_block_in_an_if_op():
    # Each block of BLOCK slots runs in an IF op, taken only while some image has a candidate in
    # the block. Its branch reads the masks only as the block's b bool masks and passes over the
    # image with one count (UNSORTED_SEGMENT_SUM) and one table lookup (GATHER) of the (state,
    # code) pairs; the other branch does no work over pixels. The graph before ran every block,
    # with about ten full-image ops each, in the main graph.
    from export import runtime

    block, size, s = fusion_module.BLOCK, 32, 4
    d = 2 * block + 3
    content = _convert(_fusion_model(d, size, s, stuff_categories=[11, 12, 13], min_stuff_area=20))
    model = runtime.parse_model(content)
    ifs = [op for op in model.subgraphs[0].operators if runtime.op_name(model, op) == "IF"]
    assert len(ifs) == 3
    for op in ifs:
        paint = model.subgraphs[op.builtinOptions.thenSubgraphIndex]
        names = [runtime.op_name(model, o) for o in paint.operators]
        assert names.count("UNSORTED_SEGMENT_SUM") == 1 and names.count("GATHER") == 2, names  # masks, pairs
        largest = {}  # dtype -> elements of its largest tensor in the branch
        for t in paint.tensors:
            dtype = runtime.dtype_name(t.type)
            largest[dtype] = max(largest.get(dtype, 0), int(np.prod(t.shape)) if t.shape is not None else 1)
        assert largest["bool"] == d * size * size and largest["uint8"] <= block * size * size, largest  # stack in
        image_or_pairs = max(size * size, (d + 1) * 2 ** block)  # no per-slot float or int32 planes
        assert largest["float32"] <= image_or_pairs and largest["int32"] <= image_or_pairs, largest
        assert largest["int64"] <= block * size * size // 8, largest
        skip = model.subgraphs[op.builtinOptions.elseSubgraphIndex]
        assert all(int(np.prod(skip.tensors[i].shape)) <= d for o in skip.operators for i in o.outputs)


def test_block_above_seven_slots_raises():
    with mock.patch.object(fusion_module, "BLOCK", 8), pytest.raises(ValueError, match="BLOCK"):
        panoptic_fusion(np.zeros([1, H, W]), [0.9], [1], 1, ALL_VOID, stuff_categories=[5, 6])


@pytest.mark.slow
def test_tflite_builtins_and_exact_litert_parity():
    from export.tflite import op_counts

    d, size, s = 8, 32, 4
    options = dict(stuff_categories=[11, 12, 13], min_stuff_area=20)
    model = _fusion_model(d, size, s, **options)
    content = _convert(model)
    assert not any(op.startswith("FLEX") or op == "CUSTOM" for op in op_counts(content)), op_counts(content)
    _, runner = _litert_runner(content)
    names = ["masks", "scores", "classes", "num_detections", "semantic_logits"]
    for seed in range(4):
        batch = _random_batch(d, size, s, seed)
        got = runner(**dict(zip(names, batch)))
        keras_out = {k: np.asarray(v) for k, v in model(list(batch)).items()}
        reference = panoptic_fusion_numpy(*batch, **options)
        by_shape = {}
        for key in OUTPUT_KEYS:  # signature output names are Keras' output_0.. : match by content
            # ids, categories and areas are exact; the stuff score goes through EXP, whose TF and
            # LiteRT kernels may differ in the last bit (seen: 1 ulp, 6e-8)
            same = (lambda a, b: np.allclose(a, b, rtol=0, atol=1e-6)) if key == "score" else np.array_equal
            match = [v for v in got.values() if v.shape == keras_out[key].shape and v.dtype == keras_out[key].dtype
                     and same(v, keras_out[key])]
            assert match, f"no LiteRT output equals Keras' {key}"
            by_shape[key] = match[0]
        assert_same(by_shape, reference)
        assert int(reference["num_segments"][0]) > 0
