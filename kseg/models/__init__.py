"""kseg models, one folder per architecture. Constructors take plain values and objects;
`build_model` maps a name (and a preset) to one of them (kseg.models.factory)."""

from kseg.models.factory import MODEL_NAMES, build_model, model_arguments, model_class, model_presets
from kseg.models.mask_rcnn import MaskRCNN, TorchvisionMaskRCNN
from kseg.models.maskformer import MaskFormer
from kseg.models.panoptic_fpn import PanopticFPN
from kseg.models.segformer import SegFormer
from kseg.models.unet import MobileUNet, UNet, valid_output_size

__all__ = [
    "MODEL_NAMES",
    "MaskFormer",
    "MaskRCNN",
    "MobileUNet",
    "PanopticFPN",
    "SegFormer",
    "TorchvisionMaskRCNN",
    "UNet",
    "build_model",
    "model_arguments",
    "model_class",
    "model_presets",
    "valid_output_size",
]
