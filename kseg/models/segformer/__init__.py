"""SegFormer: the Mix Transformer encoder (MiT-B0..B5) and the All-MLP decoder."""

from kseg.backbones.mix_transformer import MIT_CONFIGS, mix_transformer
from kseg.models.segformer.segformer import SegFormer

__all__ = ["MIT_CONFIGS", "SegFormer", "mix_transformer"]
