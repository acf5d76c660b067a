"""torchvision's Mask R-CNN (`maskrcnn_resnet50_fpn`, v1) outputs for kseg's parity tests.

Run with an environment that has torch and torchvision (no TensorFlow needed):

    /work/refenv/bin/python tests/reference/make_mask_rcnn_fixtures.py            # the fixture
    /work/refenv/bin/python tests/reference/make_mask_rcnn_fixtures.py --full OUT.npz [--images N]
        [--state-dict OUT.pth]

The network is built as the published checkpoint is (ResNet-50 with FrozenBatchNorm2d, the
stem and layer1 frozen, 91 classes) and given random weights that both frameworks regenerate
from a seed with NumPy (`seeded_state_dict`, no weights are stored): He-normal convs and
linears, batch norms with spread statistics, and larger RPN objectness and class-score
weights so that scores spread out and the detections are not ties.

Default: tests/fixtures/mask_rcnn_torchvision.npz, a reduced configuration (min_size 160,
max_size 224, 200 / 100 RPN proposals) on two real images, holding per image the transformed
image's corner, the first channels of every FPN level, the proposals, the detections and the
28 x 28 and pasted masks. `--full` writes the same at torchvision's defaults (800 / 1333, 1000
proposals) for the live comparison (tests marked `reference`).

Everything is stored as kseg has it: channels-last, boxes (y1, x1, y2, x2).
"""

import argparse
import hashlib
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(HERE, "..", "fixtures", "mask_rcnn_torchvision.npz")
DATA = os.path.join(HERE, "..", "..", "..", "shared", "data")
IMAGES = (
    "coco128-seg/images/train2017/000000000009.jpg",
    "coco-panoptic-sample/input_images/000000142238.jpg",
    "coco128-seg/images/train2017/000000000025.jpg",
    "coco-panoptic-sample/input_images/000000439180.jpg",
    "coco128-seg/images/train2017/000000000030.jpg",
)
SEED = 14
REDUCED = dict(min_size=160, max_size=224, rpn_pre_nms_topk=200, rpn_post_nms_topk=100)
FULL = dict(min_size=800, max_size=1333, rpn_pre_nms_topk=1000, rpn_post_nms_topk=1000)
FEATURE_CHANNELS = 4  # channels of each FPN level kept in the fixture
# Output layers scaled so that objectness logits have a spread of a few units (not saturating
# sigmoids into ties), class probabilities spread over (0.05, 1), and box deltas are moderate.
_SCALES = {"rpn.head.cls_logits": 0.03, "rpn.head.bbox_pred": 0.01, "roi_heads.box_predictor.cls_score": 0.12,
           "roi_heads.box_predictor.bbox_pred": 0.05}


def seeded_state_dict(names_and_shapes, seed=SEED):
    """{name: float32 array} for torchvision's Mask R-CNN from a seed, the same in every framework.

    Args:
        names_and_shapes: [(name, shape)] in state-dict order (num_batches_tracked excluded).
        seed: NumPy Generator seed.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in names_and_shapes:
        shape = tuple(int(s) for s in shape)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "running_mean":
            value = rng.normal(0.0, 0.1, shape)
        elif len(shape) == 1 and leaf == "weight":  # batch-norm scale
            value = rng.uniform(0.5, 1.0, shape)
        elif leaf == "bias":
            value = rng.normal(0.0, 0.05, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        value = value.astype(np.float32)
        value *= _SCALES.get(name.rsplit(".", 1)[0], 1.0)
        out[name] = value
    return out


def load_image(relative):
    """RGB uint8 [H, W, 3] of an image under the shared data folder."""
    from PIL import Image

    with Image.open(os.path.join(DATA, relative)) as image:
        return np.asarray(image.convert("RGB"))


def image_digest(image):
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def build_torchvision(min_size, max_size, rpn_pre_nms_topk, rpn_post_nms_topk, seed=SEED):
    """torchvision's maskrcnn_resnet50_fpn as the COCO checkpoint has it, with seeded weights."""
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    model = MaskRCNN(backbone, num_classes=91, min_size=min_size, max_size=max_size,
                     rpn_pre_nms_top_n_test=rpn_pre_nms_topk, rpn_post_nms_top_n_test=rpn_post_nms_topk)
    names = [(k, tuple(v.shape)) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    weights = seeded_state_dict(names, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model.eval(), names


def _yxyx(boxes):
    return boxes[:, [1, 0, 3, 2]].numpy().astype(np.float32)


def run(model, image):
    """torchvision outputs of one uint8 image, stage by stage, in kseg's layouts."""
    import torch

    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        images, _ = model.transform([x])
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        anchors = model.rpn.anchor_generator(images, list(features.values()))[0]
        detections, _ = model.roi_heads(features, proposals, images.image_sizes)
        roi_masks = detections[0]["masks"][:, 0].numpy()
        resized_boxes = _yxyx(detections[0]["boxes"])
        final = model.transform.postprocess(detections, images.image_sizes, [tuple(image.shape[:2])])[0]
    out = {
        "resized_size": np.asarray(images.image_sizes[0]),
        "padded_size": np.asarray(images.tensors.shape[-2:]),
        "image_corner": images.tensors[0, :, :32, :32].permute(1, 2, 0).numpy(),
        "proposals": _yxyx(proposals[0]),
        "anchor_count": np.asarray(len(anchors)),
        "anchors_p6": _yxyx(anchors[-3 * features["pool"].shape[-2] * features["pool"].shape[-1]:]),
        "resized_boxes": resized_boxes,
        "boxes": _yxyx(final["boxes"]),
        "scores": final["scores"].numpy(),
        "classes": final["labels"].numpy().astype(np.int32),
        "roi_masks": roi_masks.astype(np.float32),
        "masks": final["masks"][:, 0].numpy() > 0.5,
        "digest": np.asarray(image_digest(image)),
    }
    for key, level in zip(("0", "1", "2", "3", "pool"), ("P2", "P3", "P4", "P5", "P6")):
        out[level] = features[key][0, :FEATURE_CHANNELS].permute(1, 2, 0).numpy()
    return out


def write(path, config, images, state_dict=None):
    model, names = build_torchvision(**config)
    if state_dict:  # the checkpoint as torch saves it, for kseg's file reader and converter
        import torch

        torch.save(model.state_dict(), state_dict)
    arrays = {"names": np.asarray([n for n, _ in names]),
              "shapes": np.asarray([",".join(map(str, s)) for _, s in names]),
              "config": np.asarray([f"{k}={v}" for k, v in config.items()]), "seed": np.asarray(SEED),
              "images": np.asarray(images)}
    for i, relative in enumerate(images):
        result = run(model, load_image(relative))
        if path == OUTPUT:  # keep the committed fixture small
            result["masks"] = np.packbits(result["masks"], axis=-1)
        arrays.update({f"{i}/{k}": v for k, v in result.items()})
        print(relative, "detections", len(result["scores"]), "proposals", len(result["proposals"]))
    np.savez_compressed(path, **arrays)
    print("wrote", path, os.path.getsize(path), "bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", metavar="OUT", help="write torchvision-default outputs here instead")
    parser.add_argument("--images", type=int, default=len(IMAGES), help="images for --full")
    parser.add_argument("--state-dict", metavar="PTH", help="with --full: also torch.save the state dict here")
    args = parser.parse_args()
    if args.full:
        write(args.full, FULL, IMAGES[: args.images], args.state_dict)
    else:
        write(OUTPUT, REDUCED, IMAGES[:2])


if __name__ == "__main__":
    main()
