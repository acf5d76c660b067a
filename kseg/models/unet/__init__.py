"""The U-Net family: classic, attention, residual, dense and mobile variants."""

from kseg.models.unet.mobile_unet import MobileUNet
from kseg.models.unet.unet import UNet, valid_output_size

__all__ = ["MobileUNet", "UNet", "valid_output_size"]
