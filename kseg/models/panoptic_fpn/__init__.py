"""Panoptic FPN: Mask R-CNN plus a semantic branch (Kirillov et al. 2019)."""

from kseg.models.panoptic_fpn.panoptic_fpn import IGNORE, PanopticFPN, panoptic_fpn_parts, semantic_cross_entropy
from kseg.models.panoptic_fpn.semantic_head import SemanticHead

__all__ = ["IGNORE", "PanopticFPN", "SemanticHead", "panoptic_fpn_parts", "semantic_cross_entropy"]
