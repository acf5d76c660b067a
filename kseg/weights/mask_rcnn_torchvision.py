"""torchvision Mask R-CNN checkpoints (`maskrcnn_resnet50_fpn`, v1) -> kseg's TorchvisionMaskRCNN.

Every tensor of torchvision's state dict is named here and moved to one kseg weight:

    backbone.body.{conv1, bn1, layerS.B.convN, layerS.B.bnN, layerS.B.downsample.{0,1}}
                                        -> the ResNet layer of the same name ("." -> "_")
    backbone.fpn.inner_blocks.i.0       -> fpn lateral_P{i+2}    (1x1)
    backbone.fpn.layer_blocks.i.0       -> fpn output_P{i+2}     (3x3)
    rpn.head.conv.0.0, cls_logits, bbox_pred -> rpn_head conv, objectness, deltas
    roi_heads.box_head.fc6, fc7         -> box_head fc1, fc2
    roi_heads.box_predictor.cls_score, bbox_pred -> box_head class_logits, box_deltas
    roi_heads.mask_head.i.0             -> mask_head conv{i+1}
    roi_heads.mask_predictor.conv5_mask, mask_fcn_logits -> mask_head upsample, mask_logits

Layouts: PyTorch convs [out, in, kh, kw] -> Keras [kh, kw, in, out]; the transposed conv
[in, out, kh, kw] -> [kh, kw, out, in]; linear [out, in] -> [in, out]; fc6 reads its input as
[C, 7, 7] in PyTorch and [7, 7, C] here, so its rows are reordered. Box deltas are (dx, dy, dw,
dh) in torchvision and (dy, dx, dh, dw) in kseg: the RPN and box regressors' outputs are
reordered. The background's box deltas and mask logits (class 0), which torchvision computes
and discards, are dropped. Names of checkpoints saved before torchvision 0.13
(`rpn.head.conv.weight`, `fpn.inner_blocks.0.weight`, `mask_head.mask_fcn1.weight`, as in
the published COCO checkpoint) are read as their current names; `num_batches_tracked`
counters (BatchNorm2d, not FrozenBatchNorm2d) carry no weight and are ignored.
"""

import re

import numpy as np

_DELTA_ORDER = (1, 0, 3, 2)  # kseg (dy, dx, dh, dw) from torchvision (dx, dy, dw, dh)
_OLD_NAMES = (
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$"), r"backbone.fpn.\1_blocks.\2.0.\3"),
)
_OLD_MASK_HEAD = re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$")


class StateDictMismatch(ValueError):
    """A state dict that does not fit the model: tensors missing, left over or of the wrong shape."""


def current_names(state_dict):
    """The state dict with pre-0.13 torchvision names renamed to current ones."""
    renamed = {}
    for name, value in state_dict.items():
        for pattern, replacement in _OLD_NAMES:
            name = pattern.sub(replacement, name)
        match = _OLD_MASK_HEAD.match(name)
        if match:
            name = f"roi_heads.mask_head.{int(match.group(1)) - 1}.0.{match.group(2)}"
        renamed[name] = value
    return renamed


def load_torchvision_mask_rcnn(model, state_dict):
    """Sets a TorchvisionMaskRCNN's weights from torchvision's `maskrcnn_resnet50_fpn` state dict.

    Args:
        model: kseg.models.mask_rcnn.TorchvisionMaskRCNN (any image size; K classes).
        state_dict: {name: array} (NumPy or anything np.asarray takes), e.g. from
            `kseg.weights.read_state_dict(path)`; K + 1 classes in the predictors.

    Returns:
        model, its weights set.

    Raises:
        StateDictMismatch naming every missing, unused or wrong-shape tensor.
    """
    tensors = {k: v for k, v in current_names(state_dict).items() if not k.endswith("num_batches_tracked")}
    plan = []  # (keras layer, [weights])
    used, missing, errors = set(), [], []

    def take(name, shape):
        if name not in tensors:
            missing.append(name)
            return None
        used.add(name)
        value = np.asarray(tensors[name], np.float32)
        if tuple(value.shape) != tuple(shape):
            errors.append(f"{name}: shape {tuple(value.shape)}, expected {tuple(shape)}")
            return None
        return value

    def conv(layer, prefix, bias=True, transposed=False, rows=None):
        kh, kw, a, b = layer.kernel.shape  # Keras: [kh, kw, in, out] (transposed: [kh, kw, out, in])
        if transposed:
            weight = take(f"{prefix}.weight", (b, a, kh, kw))
        else:
            count = b if rows is None else _source_rows(rows, b)
            weight = take(f"{prefix}.weight", (count, a, kh, kw))
        values = []
        if weight is not None:
            if rows is not None:
                weight = weight[rows]
            values.append(weight.transpose(2, 3, 1, 0))
        if bias:
            value = take(f"{prefix}.bias", (layer.bias.shape[0] if rows is None else _source_rows(rows, b),))
            if value is not None:
                values.append(value if rows is None else value[rows])
        plan.append((layer, values, 2 if bias else 1))

    def dense(layer, prefix, rows=None, reshape=None):
        fan_in, fan_out = layer.kernel.shape
        count = fan_out if rows is None else _source_rows(rows, fan_out)
        in_shape = (fan_in,) if reshape is None else reshape
        weight = take(f"{prefix}.weight", (count,) + (int(np.prod(in_shape)),))
        bias = take(f"{prefix}.bias", (count,))
        values = []
        if weight is not None and bias is not None:
            if rows is not None:
                weight, bias = weight[rows], bias[rows]
            if reshape is not None:  # [out, C, h, w] -> [h, w, C, out]
                weight = weight.reshape((count,) + tuple(reshape)).transpose(2, 3, 1, 0).reshape(fan_in, count)
            else:
                weight = weight.T
            values = [weight, bias]
        plan.append((layer, values, 2))

    for layer in model.body.layers:
        prefix = "backbone.body." + layer.name.replace("_", ".")
        kind = type(layer).__name__
        if kind == "Conv2D":
            conv(layer, prefix, bias=False)
        elif kind == "BatchNormalization":
            channels = layer.gamma.shape[0]
            values = [take(f"{prefix}.{p}", (channels,)) for p in ("weight", "bias", "running_mean", "running_var")]
            plan.append((layer, [v for v in values if v is not None], 4))
    for n in range(2, 6):
        conv(model.fpn.lateral[f"P{n}"], f"backbone.fpn.inner_blocks.{n - 2}.0")
        conv(model.fpn.smooth[f"P{n}"], f"backbone.fpn.layer_blocks.{n - 2}.0")
    head = model.rpn_head
    conv(head.conv, "rpn.head.conv.0.0")
    conv(head.objectness, "rpn.head.cls_logits")
    conv(head.deltas, "rpn.head.bbox_pred", rows=_delta_rows(head.num_anchors, first=0))
    box = model.box_head
    size, depth = model.box_align.output_size, model.fpn.channels
    dense(box.fc1, "roi_heads.box_head.fc6", reshape=(depth, size, size))
    dense(box.fc2, "roi_heads.box_head.fc7")
    dense(box.classifier, "roi_heads.box_predictor.cls_score")
    dense(box.regressor, "roi_heads.box_predictor.bbox_pred", rows=_delta_rows(box.num_classes, first=1))
    mask = model.mask_head
    for i, layer in enumerate(mask.convs):
        conv(layer, f"roi_heads.mask_head.{i}.0")
    conv(mask.upsample, "roi_heads.mask_predictor.conv5_mask", transposed=True)
    conv(mask.predictor, "roi_heads.mask_predictor.mask_fcn_logits", rows=np.arange(1, mask.num_classes + 1))

    unused = sorted(set(tensors) - used)
    if missing or unused or errors:
        parts = []
        if missing:
            parts.append(f"missing tensors: {', '.join(missing)}")
        if unused:
            parts.append(f"tensors the model has no place for: {', '.join(unused)}")
        if errors:
            parts.append("wrong shapes: " + "; ".join(errors))
        raise StateDictMismatch("torchvision Mask R-CNN state dict does not fit the model (built for "
                                f"{model.num_classes} classes + background): " + " | ".join(parts))
    for layer, values, _ in plan:
        layer.set_weights(values)
    return model


def mask_rcnn_from_torchvision(path, image_size, **kwargs):
    """A TorchvisionMaskRCNN for `image_size` images with a torchvision checkpoint's weights.

    Args:
        path: a state dict file (.pth / .pt / .safetensors / .npz), e.g. torchvision's
            maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth.
        image_size: (H, W) of the images the model will take.
        **kwargs: more TorchvisionMaskRCNN arguments; num_classes defaults to the checkpoint's
            (its class-score rows less the background: 90 for COCO).

    Returns:
        the model.
    """
    from kseg.models.mask_rcnn.torchvision_mask_rcnn import TorchvisionMaskRCNN
    from kseg.weights import read_state_dict

    state_dict = read_state_dict(path)
    scores = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    if "num_classes" not in kwargs and scores is not None:
        kwargs["num_classes"] = int(np.shape(scores)[0]) - 1
    return load_torchvision_mask_rcnn(TorchvisionMaskRCNN((*image_size, 3), **kwargs), state_dict)


def _delta_rows(groups, first):
    """Source rows of a regressor's outputs: for group g = first .. first + groups - 1 (anchors
    or classes), its four deltas in kseg's order from torchvision's."""
    return np.asarray([4 * g + k for g in range(first, first + groups) for k in _DELTA_ORDER])


def _source_rows(rows, count):
    """How many outputs the torchvision tensor has when `rows` of them make kseg's `count`."""
    return int(np.max(rows)) + 1 if len(rows) == count else count
