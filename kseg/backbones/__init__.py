"""Feature-pyramid backbones: an image in, {"P2": stride 4, ..., "P5": stride 32} out."""

from kseg.backbones.pyramid import (
    BACKBONES,
    backbone_config,
    backbone_from_config,
    build_backbone,
    check_backbone,
    tap_strides,
)
from kseg.backbones.torchvision_resnet import torchvision_resnet50

__all__ = [
    "BACKBONES",
    "backbone_config",
    "backbone_from_config",
    "build_backbone",
    "check_backbone",
    "tap_strides",
    "torchvision_resnet50",
]
