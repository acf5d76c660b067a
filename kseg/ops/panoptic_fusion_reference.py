"""The NumPy reference of the panoptic fusion op (`kseg.ops.panoptic_fusion`), as plain loops.

The algorithm, shapes and arguments are those of `kseg.ops.panoptic_fusion.panoptic_fusion`; the
graph is tested against this function on random inputs.
"""

import numpy as np

from kseg.ops.panoptic_fusion import OUTPUT_KEYS, _stuff_table, default_max_segments


def panoptic_fusion_numpy(masks, scores, classes, num_detections, semantic_logits, *, stuff_categories,
                          thing_class=0, score_threshold=0.5, mask_threshold=0.5, overlap_threshold=0.5,
                          min_stuff_area=4096, max_segments=None):
    """The NumPy reference of `panoptic_fusion` (same arguments and outputs), written as plain loops."""
    masks = np.asarray(masks, np.float32)
    if masks.ndim == 4:
        images = [panoptic_fusion_numpy(
            masks[b], np.asarray(scores)[b], np.asarray(classes)[b], np.reshape(num_detections, [-1])[b],
            np.asarray(semantic_logits)[b], stuff_categories=stuff_categories, thing_class=thing_class,
            score_threshold=score_threshold, mask_threshold=mask_threshold, overlap_threshold=overlap_threshold,
            min_stuff_area=min_stuff_area, max_segments=max_segments) for b in range(masks.shape[0])]
        return {k: np.stack([image[k] for image in images]) for k in OUTPUT_KEYS}
    scores = np.asarray(scores, np.float32)
    classes = np.asarray(classes, np.int32)
    logits = np.asarray(semantic_logits, np.float32)
    num_slots, height, width = masks.shape
    num_channels = logits.shape[-1]
    category_of_channel, is_stuff = _stuff_table(num_channels, stuff_categories, thing_class)
    if max_segments is None:
        max_segments = default_max_segments(num_slots, num_channels, thing_class)
    n = int(np.reshape(num_detections, []))

    panoptic = np.zeros([height, width], np.int32)
    segments = []  # (category, is_thing, area, score)
    candidates = [i for i in range(num_slots) if i < n and classes[i] > 0 and scores[i] >= np.float32(score_threshold)]
    candidates.sort(key=lambda i: (-scores[i], i))
    for i in candidates:
        mask = masks[i] >= np.float32(mask_threshold)
        area = int(mask.sum())
        new = mask & (panoptic == 0)
        visible = int(new.sum())
        if visible == 0 or visible < np.float32(overlap_threshold) * np.float32(area) or len(segments) >= max_segments:
            continue
        segments.append((int(classes[i]), True, visible, float(scores[i])))
        panoptic[new] = len(segments)

    channel = logits.argmax(-1)
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    probability = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    unclaimed = panoptic == 0
    for c in range(num_channels):
        region = unclaimed & (channel == c)
        area = int(region.sum())
        if not is_stuff[c] or area < max(min_stuff_area, 1) or len(segments) >= max_segments:
            continue
        segments.append((int(category_of_channel[c]), False, area, float(probability[..., c][region].mean())))
        panoptic[region] = len(segments)

    table = {"category": np.zeros([max_segments], np.int32), "is_thing": np.zeros([max_segments], bool),
             "area": np.zeros([max_segments], np.int32), "score": np.zeros([max_segments], np.float32)}
    for k, (category, is_thing, area, score) in enumerate(segments):
        table["category"][k], table["is_thing"][k], table["area"][k], table["score"][k] = category, is_thing, area, score
    return {"panoptic": panoptic, **table, "num_segments": np.int32(len(segments))}
