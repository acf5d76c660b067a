"""MaskFormer (Cheng et al. 2021, "Per-Pixel Classification is Not All You Need").

    image          [B, H, W, 3]   raw pixels [0, 255]; H, W divisible by 32
    P2..P5         backbone levels, strides 4..32
    pixel_embed    [B, H/4, W/4, E]   the pixel decoder's per-pixel embeddings
    queries        [B, N, D]          the transformer decoder's output, after every layer
    outputs        "class_probs" [B, N, K + 1] (the last class is "no object"), "mask_logits"
                   [B, N, H/4, W/4], "semantic" [B, H, W, K] (sum over queries of class
                   probability x mask probability; channel k is category k + 1), and the
                   panoptic result in kseg.ops.panoptic_fusion's format: "panoptic" [B, H, W]
                   int32 (0 void, segments 1..), "segment_category", "segment_is_thing",
                   "segment_area", "segment_score" [B, N] and "num_segments" [B]
    batch          instance_dataset(..., semantic=True) dicts (kseg.models.maskformer.losses)

Categories: things 1..num_classes, stuff num_classes + 1 .. num_classes + num_stuff_classes
(the layout of kseg.data.panoptic and kseg.data.panoptic_shapes). The functional graph is the
inference path that export converts (builtin TFLite ops at batch 1); `train_step` runs the same
layers on every decoder layer's output and adds the Hungarian-matched set-prediction losses, so
plain `model.fit(dataset)` trains it.
"""

import keras
import tensorflow as tf

from kseg.backbones import backbone_config
from kseg.models.base import (
    LossDictTraining,
    SegmentationModel,
    check_detector_backbone,
    check_kwargs,
    detector_config_objects,
    detector_input_shape,
    dtype_policy_scope,
)
from kseg.models.maskformer.heads import MaskClassificationInference, PixelDecoder, PredictionHeads, TransformerDecoder
from kseg.models.maskformer.losses import panoptic_targets, set_prediction_losses

LOSS_TERMS = ("class", "mask", "dice")
PANOPTIC_KEYS = {"panoptic": "panoptic", "category": "segment_category", "is_thing": "segment_is_thing",
                 "area": "segment_area", "score": "segment_score", "num_segments": "num_segments"}


@keras.saving.register_keras_serializable(package="kseg")
class MaskFormer(LossDictTraining, SegmentationModel):
    """MaskFormer: backbone, pixel decoder, transformer decoder, mask classification.

    Args:
        num_classes: K_things, the thing categories 1..K_things.
        num_stuff_classes: S stuff categories K_things + 1 .. K_things + S (0: things only).
            K = K_things + S classes are predicted, plus "no object".
        input_shape: (H, W, 3), static; H and W divisible by 32 (default (512, 512, 3)).
        backbone: a keras.Model from input_shape images to {"P2": ..., "P5": ...}
            (`kseg.backbones.build_backbone`); required, as in keras-hub's task models. Names
            ("resnet50", "small", ...) and `backbone_weights` go to `kseg.models.build_model`.
        num_queries: N (100).
        hidden_dim: D, the transformer width (256).
        num_layers: transformer decoder layers (6).
        num_heads: attention heads (8).
        ffn_dim: the transformer FFN width (2048).
        dropout: transformer dropout (0.1).
        pixel_decoder_channels: width of the pixel decoder (256).
        mask_dim: E, the per-pixel and per-query mask embedding size (256).
        class_weight, mask_weight, dice_weight: loss and matching-cost weights (1, 20, 1).
        no_object_weight: classification weight of unmatched queries (0.1).
        deep_supervision: the loss after every decoder layer (True) or after the last only.
        object_threshold, overlap_threshold, mask_threshold, min_area: panoptic inference
            (0.8, 0.8, 0.5, 0 pixels; `mask_classification_panoptic`).

    Example:
        >>> from kseg.backbones import build_backbone
        >>> config = {**SMALL_CONFIG, "backbone": build_backbone("small", (64, 64, 3))}
        >>> model = MaskFormer(num_classes=3, num_stuff_classes=2, input_shape=(64, 64, 3), **config)
        >>> tuple(model.output["class_probs"].shape), tuple(model.output["mask_logits"].shape)
        ((None, 10, 6), (None, 10, 16, 16))
    """

    def __init__(
        self,
        num_classes,
        num_stuff_classes=0,
        input_shape=None,
        backbone=None,
        num_queries=100,
        hidden_dim=256,
        num_layers=6,
        num_heads=8,
        ffn_dim=2048,
        dropout=0.1,
        pixel_decoder_channels=256,
        mask_dim=256,
        class_weight=1.0,
        mask_weight=20.0,
        dice_weight=1.0,
        no_object_weight=0.1,
        deep_supervision=True,
        object_threshold=0.8,
        overlap_threshold=0.8,
        mask_threshold=0.5,
        min_area=0,
        name="maskformer",
        **kwargs,
    ):
        check_kwargs(type(self).__name__, kwargs)
        for arg, value, low in (("num_classes", num_classes, 0), ("num_stuff_classes", num_stuff_classes, 0),
                                ("num_queries", num_queries, 1), ("num_layers", num_layers, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"`{arg}` must be an int >= {low}; got {value!r}.")
        if num_classes + num_stuff_classes < 1:
            raise ValueError("MaskFormer needs at least one class: num_classes + num_stuff_classes is 0.")
        input_shape = detector_input_shape(input_shape, default=(512, 512, 3))
        image_size = input_shape[:2]
        with dtype_policy_scope(kwargs.get("dtype")):
            check_detector_backbone(backbone, input_shape)
            pixel_decoder = PixelDecoder(pixel_decoder_channels, mask_dim, name="pixel_decoder")
            transformer_decoder = TransformerDecoder(num_queries, hidden_dim, num_layers, num_heads, ffn_dim, dropout,
                                                     name="transformer_decoder")
            heads = PredictionHeads(num_classes + num_stuff_classes + 1, hidden_dim, mask_dim, name="heads")
            inference = MaskClassificationInference(image_size, num_classes, object_threshold, overlap_threshold,
                                                    mask_threshold, min_area, name="inference")

            image = keras.Input(input_shape, name="image")
            features = backbone(image)
            pixel_embed = pixel_decoder(features)
            queries = transformer_decoder(features["P5"])
            class_logits, mask_logits = heads(queries[-1], pixel_embed)
            result = inference(class_logits, mask_logits)
            grid = keras.ops.reshape(mask_logits, (-1, image_size[0] // 4, image_size[1] // 4, num_queries))
            mask_logits = keras.ops.cast(keras.ops.transpose(grid, (0, 3, 1, 2)), "float32")  # also under mixed_float16
            outputs = {"class_probs": result["class_probs"], "mask_logits": mask_logits,
                       "semantic": result["semantic"], **{v: result[k] for k, v in PANOPTIC_KEYS.items()}}
        super().__init__(inputs=image, outputs=outputs, name=name, **kwargs)

        self.num_classes = num_classes
        self.num_stuff_classes = num_stuff_classes
        self.image_shape = input_shape  # keras.Model's `input_shape` is the graph's, with the batch
        self.image_size = image_size  # (H, W)
        self.backbone = backbone
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.pixel_decoder_channels = pixel_decoder_channels
        self.mask_dim = mask_dim
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.deep_supervision = deep_supervision
        self.object_threshold = object_threshold
        self.overlap_threshold = overlap_threshold
        self.mask_threshold = mask_threshold
        self.min_area = min_area

        # The pieces train_step runs (the same layer objects as in the graph above).
        self.pixel_decoder, self.transformer_decoder = pixel_decoder, transformer_decoder
        self.heads = heads
        self._init_loss_trackers()

    def loss_names(self):
        """("class", "mask", "dice") of the last decoder layer, then "aux{i}" (the three summed)
        for every earlier layer i when deep_supervision is on: one term per decoder layer."""
        aux = tuple(f"aux{i}" for i in range(self.num_layers - 1)) if self.deep_supervision else ()
        return LOSS_TERMS + aux

    # ------------------------------------------------------------------------- training

    def layer_predictions(self, images, training=True):
        """Images -> [(class_logits [B, N, K + 1], mask_logits [B, P, N]), ...], one pair per
        decoder layer (the last layer only without deep supervision), float32."""
        features = self.backbone(tf.cast(images, self.compute_dtype), training=training)
        pixel_embed = self.pixel_decoder(features, training=training)
        queries = self.transformer_decoder(features["P5"], training=training)
        if not self.deep_supervision:
            queries = queries[-1:]
        return [tuple(tf.cast(t, tf.float32) for t in self.heads(q, pixel_embed)) for q in queries]

    def match_and_losses(self, batch, training=True):
        """Per supervised decoder layer: ({"class", "mask", "dice"}, matched [B, T] query per target)."""
        targets = panoptic_targets(batch, self.num_classes, self.num_stuff_classes)
        return [set_prediction_losses(class_logits, mask_logits, targets, self.class_weight, self.mask_weight,
                                      self.dice_weight, self.no_object_weight)
                for class_logits, mask_logits in self.layer_predictions(batch["image"], training)]

    def compute_losses(self, batch, training=True):
        """The weighted losses on a panoptic batch: {name: scalar} for the names of `loss_names()`."""
        per_layer = self.match_and_losses(batch, training)
        losses = dict(per_layer[-1][0])
        for i, (terms, _) in enumerate(per_layer[:-1]):
            losses[f"aux{i}"] = tf.add_n(list(terms.values()))
        return losses


    # ------------------------------------------------------------------------- config

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "num_stuff_classes": self.num_stuff_classes,
            "input_shape": list(self.image_shape),
            "backbone": backbone_config(self.backbone),
            "num_queries": self.num_queries,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "ffn_dim": self.ffn_dim,
            "dropout": self.dropout,
            "pixel_decoder_channels": self.pixel_decoder_channels,
            "mask_dim": self.mask_dim,
            "class_weight": self.class_weight,
            "mask_weight": self.mask_weight,
            "dice_weight": self.dice_weight,
            "no_object_weight": self.no_object_weight,
            "deep_supervision": self.deep_supervision,
            "object_threshold": self.object_threshold,
            "overlap_threshold": self.overlap_threshold,
            "mask_threshold": self.mask_threshold,
            "min_area": self.min_area,
            **self.base_config(),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**detector_config_objects(config))


# A configuration for tests, demos and CPU training on 64-256 px images.
SMALL_CONFIG = {
    "backbone": "small",
    "num_queries": 10,
    "hidden_dim": 64,
    "num_layers": 2,
    "num_heads": 4,
    "ffn_dim": 128,
    "dropout": 0.0,
    "pixel_decoder_channels": 32,
    "mask_dim": 32,
}
