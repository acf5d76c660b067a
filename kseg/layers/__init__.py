"""Thin Keras layers over kseg.ops."""

from kseg.layers.fpn import FPN
from kseg.layers.resize import NearestUpsampling2D
from kseg.layers.roi_align import ROIAlign
from kseg.layers.panoptic_fusion import PanopticFusion
from kseg.layers.mix_transformer import (
    DropPath,
    EfficientSelfAttention,
    MixFFN,
    MixTransformerBlock,
    OverlapPatchEmbed,
)

__all__ = [
    "FPN",
    "NearestUpsampling2D",
    "ROIAlign",
    "PanopticFusion",
    "DropPath",
    "EfficientSelfAttention",
    "MixFFN",
    "MixTransformerBlock",
    "OverlapPatchEmbed",
]
