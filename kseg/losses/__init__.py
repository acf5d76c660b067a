"""Segmentation losses: a function holding the math and a Keras `Loss` wrapping it.

Every loss takes int class ids `y_true` [B, H, W] (or [B, H, W, 1]) and float
`y_pred` [B, H, W, K] (logits by default, `from_logits=True`), leaves out pixels
labelled `ignore_class` (and labels outside [0, K)), and returns the per-sample
loss [B]: the mean over that sample's counted pixels, 0 for a sample with none.
The classes reduce [B] with the usual Keras `reduction` (batch mean by default);
their `sample_weight` is one weight per sample.
"""

from kseg.losses.ce_dice import CEDice
from kseg.losses.ce_dice import ce_dice
from kseg.losses.class_weights import class_pixel_counts
from kseg.losses.class_weights import median_frequency_weights
from kseg.losses.class_weights import median_frequency_weights_from_counts
from kseg.losses.cross_entropy import SparseCrossEntropy
from kseg.losses.cross_entropy import WeightedCrossEntropy
from kseg.losses.cross_entropy import sparse_cross_entropy
from kseg.losses.cross_entropy import weighted_cross_entropy
from kseg.losses.dice import Dice
from kseg.losses.dice import dice
from kseg.losses.focal import Focal
from kseg.losses.focal import focal

__all__ = [
    "CEDice",
    "Dice",
    "Focal",
    "SparseCrossEntropy",
    "WeightedCrossEntropy",
    "ce_dice",
    "class_pixel_counts",
    "dice",
    "focal",
    "median_frequency_weights",
    "median_frequency_weights_from_counts",
    "sparse_cross_entropy",
    "weighted_cross_entropy",
]
