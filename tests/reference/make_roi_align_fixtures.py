"""Writes tests/fixtures/roi_align_torchvision.npz: torchvision.ops.roi_align outputs and
feature gradients on boxes inside, on, across and outside the image borders.

Run with an environment that has torch and torchvision (no TensorFlow needed):

    /work/refenv/bin/python tests/reference/make_roi_align_fixtures.py
    /work/refenv/bin/python tests/reference/make_roi_align_fixtures.py --seed 7 --output OUT.npz

Two cases, each for aligned True/False and sampling ratio 2 and -1 (adaptive):

    "p2"       one level (P2, stride 4) of a 64 x 48 image, 7 x 7 bins; every box on P2.
    "pyramid"  P2..P5 of a 128 x 96 image, 14 x 14 bins, canonical size 28 so that the boxes
               spread over the four levels; each box pooled from the level torchvision's
               LevelMapper gives it (stored as `levels`), with spatial scale 1 / 2**level.

Boxes are stored as kseg has them, [B, N, 4] (y1, x1, y2, x2) in image pixels, features
channels-last [B, H_l, W_l, C]; the script converts both to torchvision's layout. For each
variant it stores the pooled output [B, N, S, S, C] and the gradient of sum(output *
upstream) with respect to every level, upstream a fixed random [B, N, S, S, C].

torchvision.ops.roi_align on the CPU (torchvision 0.29) reads a point at (y, x) as 0 when
y < -1 or y > H or x < -1 or x > W, clamps it into the map otherwise, and with
sampling_ratio <= 0 uses ceil(roi side / output side) points per bin side.
"""

import argparse
import os

import numpy as np
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import LevelMapper

OUTPUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "roi_align_torchvision.npz")
CHANNELS = 2
BATCH = 2
CASES = {
    "p2": dict(image_size=(64, 48), levels=(2,), output_size=7, canonical_size=224.0, seed=1),
    "pyramid": dict(image_size=(128, 96), levels=(2, 3, 4, 5), output_size=14, canonical_size=28.0,
                    seed=2),
}
VARIANTS = [(aligned, ratio) for aligned in (True, False) for ratio in (2, -1)]


def variant_name(aligned, sampling_ratio):
    return f"aligned{int(aligned)}_ratio{sampling_ratio}"


def border_boxes(image_size, rng, count):
    """Hand-placed boxes on, across and just outside the borders, plus random ones."""
    h, w = image_size
    fixed = [
        [0, 0, h, w],  # the whole image: edges on every border
        [0, 0, h / 3, w / 4],  # on the top-left corner
        [h - h / 3, w - w / 4, h, w],  # on the bottom-right corner
        [0, w / 5, h, w / 2],  # top and bottom edges on the border
        [-h / 8, -w / 8, h / 3, w / 3],  # across the top-left corner
        [h / 2, w / 2, h + h / 6, w + w / 5],  # across the bottom-right corner
        [-5, 4, h + 5, w - 4],  # across top and bottom
        [-6, 4, -1, w / 2],  # just above the image: samples in the [-1, 0) band
        [h + 1, 3, h + 5, w - 3],  # just below the image
        [4, w + 0.5, h - 4, w + 3],  # just right of the image
        [-2, -2, 1, 1],  # tiny, across the corner
        [10, 10, 10, 10],  # zero size inside
        [0, 0, 0, 0],  # zero size on the corner (kseg's padding)
        [h, w, h, w],  # zero size on the far corner
        [10.3, 7.1, 10.9, 7.4],  # under one pixel of the level
        [3 * h, 3 * w, 3 * h + 20, 3 * w + 30],  # far outside
        [-3 * h, -w, -2 * h, -w / 2],  # far outside
    ]
    corner = rng.uniform(-0.3, 1.1, size=(count - len(fixed), 2)) * [h, w]
    size = np.exp(rng.uniform(np.log(0.5), np.log(1.2 * max(h, w)), size=(count - len(fixed), 2)))
    random = np.concatenate([corner, corner + size], axis=-1)
    return np.concatenate([np.array(fixed, np.float64), random]).astype(np.float32)


def torchvision_levels(boxes, levels, canonical_size):
    """LevelMapper's level of every box (as torchvision's MultiScaleRoIAlign assigns)."""
    mapper = LevelMapper(min(levels), max(levels), canonical_scale=canonical_size, canonical_level=4)
    flat = torch.from_numpy(boxes.reshape(-1, 4)[:, [1, 0, 3, 2]])
    return (mapper([flat]).numpy().reshape(boxes.shape[:2]) + min(levels)).astype(np.int32)


def reference(features, boxes, box_levels, output_size, aligned, sampling_ratio, upstream):
    """torchvision.ops.roi_align of every box on its level; returns (output, gradients)."""
    tensors = {l: torch.from_numpy(f).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
               for l, f in features.items()}
    batch, num_boxes = boxes.shape[:2]
    image_index = np.repeat(np.arange(batch), num_boxes)[:, None].astype(np.float32)
    rois = torch.from_numpy(np.concatenate([image_index, boxes.reshape(-1, 4)[:, [1, 0, 3, 2]]], 1))
    flat_levels = torch.from_numpy(box_levels.reshape(-1))
    output = torch.zeros(batch * num_boxes, CHANNELS, output_size, output_size)
    for level, tensor in tensors.items():
        pooled = roi_align(tensor, rois, output_size, spatial_scale=2.0**-level,
                           sampling_ratio=sampling_ratio, aligned=aligned)
        output = torch.where((flat_levels == level)[:, None, None, None], pooled, output)
    output = output.reshape(batch, num_boxes, CHANNELS, output_size, output_size)
    output = output.permute(0, 1, 3, 4, 2)
    (output * torch.from_numpy(upstream)).sum().backward()
    gradients = {l: t.grad.permute(0, 2, 3, 1).numpy() for l, t in tensors.items()}
    return output.detach().numpy(), gradients


def check_against_multiscale(features, boxes, case, output):
    """The per-level composition equals torchvision's own MultiScaleRoIAlign (aligned=False)."""
    names = [f"P{l}" for l in case["levels"]]
    pooler = MultiScaleRoIAlign(names, case["output_size"], 2, canonical_scale=case["canonical_size"])
    maps = {f"P{l}": torch.from_numpy(f).permute(0, 3, 1, 2) for l, f in features.items()}
    box_list = [torch.from_numpy(b[:, [1, 0, 3, 2]]) for b in boxes]
    pooled = pooler(maps, box_list, [case["image_size"]] * len(box_list)).detach().numpy()
    pooled = pooled.reshape(output.shape[0], output.shape[1], CHANNELS, *output.shape[2:4])
    np.testing.assert_array_equal(pooled.transpose(0, 1, 3, 4, 2), output)


def adaptive_grid(boxes, box_levels, output_size, aligned):
    """The largest per-box sampling ratio ceil(roi / output_size) torchvision uses."""
    extent = (boxes[..., 2:] - boxes[..., :2]) / 2.0 ** box_levels[..., None]
    if not aligned:
        extent = np.maximum(extent, 1.0)
    return int(np.ceil(extent / output_size).max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--seed", type=int, default=0, help="added to each case's seed (other boxes)")
    args = parser.parse_args()
    arrays = {"torch_version": np.array(torch.__version__),
              "torchvision_version": np.array(torchvision.__version__)}
    for name, case in CASES.items():
        rng = np.random.default_rng(case["seed"] + args.seed)
        h, w = case["image_size"]
        features = {l: rng.uniform(0, 1, (BATCH, -(-h // 2**l), -(-w // 2**l), CHANNELS)).astype(np.float32)
                    for l in case["levels"]}
        boxes = np.stack([border_boxes(case["image_size"], rng, 32) for _ in range(BATCH)])
        box_levels = torchvision_levels(boxes, case["levels"], case["canonical_size"])
        size = case["output_size"]
        # N(0, 1/256): the gradients stay within a few units, like the outputs. Summing a
        # pixel's terms in another order changes it by float32 round-off times its size, and
        # pixels are large at the corners, where every point of a box across the corner
        # clamps (784 points of the tiny corner box on P2 add into one pixel).
        upstream = rng.normal(0, 0.0625, size=(BATCH, boxes.shape[1], size, size, CHANNELS)).astype(np.float32)
        arrays.update({f"{name}/boxes": boxes, f"{name}/levels": box_levels,
                       f"{name}/upstream": upstream, f"{name}/image_size": np.array(case["image_size"]),
                       f"{name}/output_size": np.array(size),
                       f"{name}/canonical_size": np.array(case["canonical_size"])})
        arrays.update({f"{name}/features/P{l}": f for l, f in features.items()})
        for aligned, ratio in VARIANTS:
            output, gradients = reference(features, boxes, box_levels, size, aligned, ratio, upstream)
            if not aligned and ratio == 2:
                check_against_multiscale(features, boxes, case, output)
            key = f"{name}/{variant_name(aligned, ratio)}"
            arrays[f"{key}/output"] = output
            arrays.update({f"{key}/gradient/P{l}": g for l, g in gradients.items()})
            if ratio <= 0:
                arrays[f"{key}/max_grid"] = np.array(adaptive_grid(boxes, box_levels, size, aligned))
        print(name, "levels used:", sorted(set(box_levels.ravel().tolist())),
              "adaptive grids up to", [int(arrays[f"{name}/{variant_name(a, -1)}/max_grid"]) for a in (1, 0)])
    np.savez_compressed(args.output, **arrays)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
