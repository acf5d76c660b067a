"""Mask R-CNN: instance segmentation (He et al. 2017) with an FPN backbone."""

from kseg.models.mask_rcnn.heads import BoxHead, MaskHead, RPNHead
from kseg.models.mask_rcnn.mask_rcnn import LOSSES, SMALL_CONFIG, MaskRCNN
from kseg.models.mask_rcnn.torchvision_mask_rcnn import TorchvisionMaskRCNN

__all__ = ["LOSSES", "SMALL_CONFIG", "BoxHead", "MaskHead", "MaskRCNN", "RPNHead", "TorchvisionMaskRCNN"]
