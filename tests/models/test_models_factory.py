"""The one model table (kseg.models.factory): every name builds with every preset, bad names,
presets and arguments fail naming them, and detectors take `input_shape` (and their old
`image_size` argument and saved configs)."""

import keras
import pytest

import kseg
from kseg.models import (
    MODEL_NAMES,
    MaskFormer,
    MaskRCNN,
    MobileUNet,
    PanopticFPN,
    SegFormer,
    TorchvisionMaskRCNN,
    UNet,
    build_model,
    model_class,
    model_presets,
)

SHAPE = (64, 64, 3)
CLASSES = {"mask_rcnn": MaskRCNN, "panoptic_fpn": PanopticFPN, "maskformer": MaskFormer, "mobile_unet": MobileUNet,
           **{n: UNet for n in ("unet", "attention_unet", "residual_unet", "dense_unet")},
           **{f"segformer_b{i}": SegFormer for i in range(6)}}
DETECTOR_ARGUMENTS = {"mask_rcnn": {"num_classes": 2}, "panoptic_fpn": {"num_classes": 2, "num_stuff_classes": 2},
                      "maskformer": {"num_classes": 2, "num_stuff_classes": 2}}
# The sizes that keep the big presets quick to build at 64 x 64.
LIGHT = {"mask_rcnn": {"rpn_pre_nms_topk": (100, 50), "rpn_post_nms_topk": (50, 20)},
         "panoptic_fpn": {"rpn_pre_nms_topk": (100, 50), "rpn_post_nms_topk": (50, 20)}, "maskformer": {}}
CASES = [(name, preset) for name in MODEL_NAMES for preset in (model_presets(name) or [None])]


def test_every_family_is_in_the_table():
    assert set(MODEL_NAMES) == set(CLASSES)
    assert {model_class(name) for name in MODEL_NAMES} | {TorchvisionMaskRCNN} == set(CLASSES.values()) | {
        TorchvisionMaskRCNN}
    assert set(model_presets("mask_rcnn")) == {"small", "mobilenet", "resnet50"}
    # Panoptic FPN's presets are Mask R-CNN's; the small one's semantic branch is as wide as its FPN.
    semantic = {"small": {"semantic_channels": 64}}
    assert model_presets("panoptic_fpn") == {name: {**preset, **semantic.get(name, {})}
                                             for name, preset in model_presets("mask_rcnn").items()}
    assert set(model_presets("maskformer")) == {"small", "resnet50"}
    assert model_presets("unet") == {}


def test_the_package_exposes_every_family_and_its_submodules():
    assert kseg.layers.ROIAlign.__name__ == "ROIAlign"
    assert kseg.backbones.build_backbone.__name__ == "build_backbone"
    assert kseg.models.PanopticFPN is PanopticFPN


def test_model_presets_returns_a_copy():
    model_presets("mask_rcnn")["small"]["fpn_channels"] = 1
    assert model_presets("mask_rcnn")["small"]["fpn_channels"] == 64


@pytest.mark.parametrize("name,preset", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_every_name_builds_with_every_preset(name, preset):
    kwargs = {"input_shape": SHAPE, **DETECTOR_ARGUMENTS.get(name, {"num_classes": 3}), **LIGHT.get(name, {})}
    model = build_model(name, preset, **kwargs)
    assert type(model) is CLASSES[name]
    config = model.get_config()
    assert tuple(config["input_shape"]) == SHAPE
    for key, value in (model_presets(name).get(preset) or {}).items():
        if key not in kwargs:
            assert config[key] == (list(value) if isinstance(value, tuple) else value), key
    if name.startswith("segformer_"):
        assert config["variant"] == name[-2:]


def test_user_arguments_override_the_preset():
    model = build_model("mask_rcnn", "small", num_classes=2, input_shape=SHAPE, max_detections=7)
    assert model.max_detections == 7
    assert model.fpn_channels == model_presets("mask_rcnn")["small"]["fpn_channels"]
    assert build_model("attention_unet", num_classes=2, input_shape=SHAPE, filters=8, depth=2).attention


@pytest.mark.parametrize("call,named", [
    (lambda: build_model("mask_rnn", num_classes=2), "'mask_rnn'"),
    (lambda: build_model("mask_rcnn", "tiny", num_classes=2), "'tiny'"),
    (lambda: build_model("unet", "small", num_classes=2), "'small'"),
    (lambda: build_model("mask_rcnn", "small", num_classes=2, input_shape=SHAPE, fpn_width=8), "fpn_width"),
    (lambda: model_presets("segformer"), "'segformer'"),
])
def test_a_bad_name_preset_or_argument_raises_naming_it(call, named):
    with pytest.raises(ValueError, match=named) as err:
        call()
    assert "expected" in str(err.value) or "rejected" in str(err.value)


def test_a_detector_takes_input_shape_only_and_loads_an_old_image_size_config():
    from kseg.backbones import build_backbone

    new = build_model("mask_rcnn", "small", num_classes=2, input_shape=SHAPE)
    assert new.image_size == (64, 64)
    legacy = {k: v for k, v in new.get_config().items() if k != "input_shape"}
    reloaded = MaskRCNN.from_config({**legacy, "image_size": [64, 64]})
    assert reloaded.get_config() == {**new.get_config(), "name": reloaded.name}
    small = {**model_presets("mask_rcnn")["small"], "backbone": build_backbone("small", SHAPE)}
    with pytest.raises(TypeError, match="image_size"):
        MaskRCNN(num_classes=2, image_size=SHAPE[:2], **small)
    with pytest.raises(ValueError, match="`image_size`: model 'mask_rcnn' takes input_shape"):
        build_model("mask_rcnn", "small", num_classes=2, image_size=SHAPE[:2])
    with pytest.raises(ValueError, match="input_shape"):
        MaskFormer(num_classes=2, input_shape=(64, 64), **model_presets("maskformer")["small"])
    keras.backend.clear_session()


def test_constructors_take_a_backbone_object_and_build_model_resolves_names():
    from kseg.backbones import build_backbone

    small = {k: v for k, v in model_presets("mask_rcnn")["small"].items() if k != "backbone"}
    backbone = build_backbone("small", SHAPE)
    model = MaskRCNN(num_classes=2, input_shape=SHAPE, backbone=backbone, **small)
    assert model.backbone is backbone and model.get_config()["backbone"] == "small"
    named = build_model("mask_rcnn", "small", num_classes=2, input_shape=SHAPE)
    assert isinstance(named.backbone, keras.Model) and named.backbone.kind == "small"
    with pytest.raises(ValueError, match="`backbone`.*expected \\(64, 64, 3\\) images"):
        MaskRCNN(num_classes=2, input_shape=SHAPE, backbone=build_backbone("small", (96, 96, 3)), **small)
    with pytest.raises(TypeError, match="backbone_weights"):
        MaskRCNN(num_classes=2, input_shape=SHAPE, backbone=backbone, backbone_weights="imagenet", **small)
    for name in ("small", None):
        with pytest.raises(ValueError, match="`backbone` .*kseg.models.build_model.*kseg.backbones.build_backbone"):
            MaskRCNN(num_classes=2, input_shape=SHAPE, backbone=name, **small)
    keras.backend.clear_session()


def test_a_detector_config_rebuilds_its_named_backbone_at_another_size():
    config = build_model("maskformer", "small", num_classes=2, num_stuff_classes=1, input_shape=SHAPE).get_config()
    bigger = MaskFormer.from_config({**config, "input_shape": [96, 96, 3]})
    assert tuple(bigger.backbone.input.shape[1:]) == (96, 96, 3)
    keras.backend.clear_session()


def test_panoptic_fpn_is_composed_from_a_detector_a_semantic_head_and_the_fusion():
    from kseg.layers import PanopticFusion
    from kseg.models.panoptic_fpn import SemanticHead, panoptic_fpn_parts

    detector, head, fusion = panoptic_fpn_parts(num_classes=2, num_stuff_classes=3, input_shape=SHAPE,
                                                **{**model_presets("panoptic_fpn")["small"], "semantic_channels": 16})
    assert (type(detector), type(head), type(fusion)) == (MaskRCNN, SemanticHead, PanopticFusion)
    model = PanopticFPN(detector, head, fusion)
    assert model.detector is detector and model.semantic_head is head and model.fusion is fusion
    assert {layer.name for layer in detector.layers} - {"image"} <= {layer.name for layer in model.layers}
    assert fusion.stuff_categories == [3, 4, 5] and model.num_stuff_classes == 3
    flat = PanopticFPN.from_config(model.get_config())
    assert flat.get_config() == model.get_config()
    with pytest.raises(ValueError, match="`semantic_head` has 4 classes; expected the 2 stuff categories"):
        PanopticFPN(detector, head, PanopticFusion([3, 4], thing_class=0))
    keras.backend.clear_session()
