"""Cross-entropy plus Dice, the usual combined segmentation loss.

Shape shorthand: y_true int [B, H, W] (or [B, H, W, 1]); y_pred float [B, H, W, K];
returns float32 [B].
"""

import keras

from kseg.losses import _common
from kseg.losses.cross_entropy import sparse_cross_entropy
from kseg.losses.dice import _check_smooth
from kseg.losses.dice import dice


def ce_dice(
    y_true,
    y_pred,
    *,
    ce_weight=1.0,
    dice_weight=1.0,
    smooth=1.0,
    from_logits=True,
    ignore_class=None,
):
    """`ce_weight * sparse_cross_entropy + dice_weight * dice`, per sample.

    The combination used by nnU-Net (Isensee et al., Nature Methods 2021): CE gives
    well-behaved pixel-wise gradients, Dice counters class imbalance. Both terms
    skip the same pixels (`ignore_class` and labels outside `[0, K)`).

    Args:
        y_true: int `[B, H, W]` or `[B, H, W, 1]` class ids.
        y_pred: float `[B, H, W, K]` logits, or probabilities if `from_logits=False`.
        ce_weight: float weight of the cross-entropy term. Defaults to 1.0.
        dice_weight: float weight of the Dice term. Defaults to 1.0.
        smooth: Dice smoothing, see `dice`. Defaults to 1.0.
        from_logits: bool, defaults to True.
        ignore_class: optional int label to leave out.

    Returns:
        float `[B]`, per-sample loss.
    """
    ce = sparse_cross_entropy(y_true, y_pred, from_logits=from_logits, ignore_class=ignore_class)
    dice_loss = dice(
        y_true, y_pred, smooth=smooth, from_logits=from_logits, ignore_class=ignore_class
    )
    return float(ce_weight) * ce + float(dice_weight) * dice_loss


@keras.saving.register_keras_serializable(package="kseg")
class CEDice(_common.SegmentationLoss):
    """Cross-entropy plus soft Dice with an ignore label; see `ce_dice`.

    Args:
        ce_weight: float, defaults to 1.0.
        dice_weight: float, defaults to 1.0.
        smooth: float >= 0, Dice smoothing. Defaults to 1.0.
        from_logits: bool, whether `y_pred` are logits. Defaults to True.
        ignore_class: optional int label that counts in no loss.
        reduction: Keras reduction over the per-sample losses `[B]`.
        name: loss name.
        dtype: loss dtype, defaults to `keras.backend.floatx()`.
    """

    fn = staticmethod(ce_dice)

    def __init__(
        self,
        ce_weight=1.0,
        dice_weight=1.0,
        smooth=1.0,
        from_logits=True,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name="ce_dice",
        dtype=None,
    ):
        super().__init__(
            name=name,
            reduction=reduction,
            dtype=dtype,
            ce_weight=float(ce_weight),
            dice_weight=float(dice_weight),
            smooth=_check_smooth(smooth),
            from_logits=bool(from_logits),
            ignore_class=_common.check_ignore_class(ignore_class),
        )
