"""keras-hub's SegFormer and MiT weights into kseg's `SegFormer` (keras-hub itself is not imported).

keras-hub (0.32) models, by the attributes read here:

    SegFormerImageSegmenter   .backbone (a SegFormerBackbone), .output_segmentation_head (1x1 Conv2D)
    SegFormerBackbone         .image_encoder (a MiTBackbone), .mlp_blocks (4 Dense),
                              .linear_fuse (Sequential: Conv2D without bias, BatchNormalization, ReLU)
    MiTBackbone               layers "patch_and_embed_{i}" (.proj, .norm), "hierarchical_encoder_{i}_{k}"
                              (.norm1, .attn.{q,k,v,proj,sr,norm}, .norm2, .mlp.{fc1,dwconv,fc2}) and,
                              in graph order, one LayerNormalization closing each stage

Both are Keras, so tensors keep their layout; only the names change (to kseg's canonical
names, `kseg.weights.segformer`). keras-hub's conventions that differ from NVlabs and Hugging
Face, carried into the kseg model so that it computes what the keras-hub model computes:

- Mix-FFN GELU: keras-hub calls `keras.ops.gelu` with its default tanh approximation; the
  reference uses the exact erf form (kseg `approximate_gelu=True` here).
- LayerNorm epsilons: 1e-6 in the blocks, 1e-5 in the stage norms, patch embeddings and
  sequence reductions (NVlabs: 1e-6 in the stage norms; Hugging Face: 1e-5 in the blocks).
- Input: keras-hub models take pixels already normalized by their preprocessor (the presets'
  ImageNet mean/std); kseg normalizes raw [0, 255] pixels inside the graph.
- keras-hub's MiT infers the token grid as sqrt(N) x sqrt(N), so it runs on square images only.
"""

import re

from kseg.models.segformer import SegFormer
from kseg.weights.segformer import architecture_of, assign

# keras-hub's MiT, as the kseg model must be built to compute the same.
KERAS_HUB_MODEL_KWARGS = {
    "layer_norm_epsilon": 1e-6,
    "stage_norm_epsilon": 1e-5,
    "conv_norm_epsilon": 1e-5,
    "batch_norm_epsilon": 1e-5,
    "approximate_gelu": True,
    "normalization": "imagenet",
}


def segformer_from_keras_hub(model, input_shape=None, num_classes=None, **model_kwargs):
    """A kseg `SegFormer` computing what a keras-hub SegFormer (or MiT encoder) computes.

    Args:
        model: a keras-hub `SegFormerImageSegmenter`, `SegFormerBackbone` or `MiTBackbone`.
        input_shape: (H, W, 3) of the kseg model; None takes the keras-hub model's input size.
        num_classes: K; None takes the segmenter's. Required for a backbone (whose classifier,
            and for a MiTBackbone the whole decoder, is left initialised).
        **model_kwargs: more `SegFormer` arguments; they override the ones inferred.

    Returns:
        The `SegFormer`; `model.checkpoint_report` lists the kseg weights left initialised. Feed
        it raw [0, 255] pixels where the keras-hub model takes its preprocessor's output.
    """
    tensors = canonical_tensors(model)
    if input_shape is None:
        input_shape = tuple(_encoder_of(model).input.shape[1:])
    if None in tuple(input_shape)[:2]:
        raise ValueError(f"the keras-hub model's input size is {tuple(input_shape)}; pass `input_shape` (H, W, 3)")
    if num_classes is None:
        if "decode.logits.kernel" not in tensors:
            raise ValueError(f"`num_classes` is needed for a {type(model).__name__}, which has no classifier; got None.")
        num_classes = int(tensors["decode.logits.kernel"].shape[-1])
    kwargs = {**architecture_of(tensors, type(model).__name__), **KERAS_HUB_MODEL_KWARGS, **model_kwargs}
    if "decode.linear1.kernel" not in tensors and kwargs.get("variant") is None and "decoder_channels" not in kwargs:
        raise ValueError("a MiTBackbone of custom widths needs `decoder_channels` for the kseg decoder.")
    kseg_model = SegFormer(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
    if "decode.linear1.kernel" not in tensors:
        skip = ("decode.",)
    elif "decode.logits.kernel" not in tensors:
        skip = ("decode.logits.",)
    else:
        skip = ()
    kseg_model.checkpoint_report = assign(kseg_model, tensors, skip=skip, origin=type(model).__name__)
    kseg_model.checkpoint_report["source"] = "keras_hub"
    return kseg_model


def canonical_tensors(model):
    """{canonical name: np.ndarray} of a keras-hub SegFormerImageSegmenter, SegFormerBackbone or MiTBackbone."""
    tensors = {}
    segmenter = model if hasattr(model, "output_segmentation_head") else None
    backbone = segmenter.backbone if segmenter is not None else model if hasattr(model, "image_encoder") else None
    encoder = _encoder_of(model)
    _add_encoder(tensors, encoder)
    if backbone is not None:
        for s, dense in enumerate(backbone.mlp_blocks, start=1):
            _add(tensors, f"decode.linear{s}", dense)
        conv, norm = backbone.linear_fuse.layers[:2]
        _add(tensors, "decode.fuse", conv)
        _add(tensors, "decode.fuse_bn", norm)
    if segmenter is not None:
        _add(tensors, "decode.logits", segmenter.output_segmentation_head)
    return tensors


def _encoder_of(model):
    if hasattr(model, "output_segmentation_head"):
        model = model.backbone
    if hasattr(model, "image_encoder"):
        model = model.image_encoder
    if not (hasattr(model, "hidden_dims") and hasattr(model, "layerwise_depths")):
        raise ValueError(f"expected a keras-hub SegFormerImageSegmenter, SegFormerBackbone or MiTBackbone; "
                         f"got a {type(model).__name__}")
    return model


def _add_encoder(tensors, encoder):
    layers = {layer.name: layer for layer in encoder.layers}
    stage_norms = [layer for layer in encoder.layers if type(layer).__name__ == "LayerNormalization"]
    if len(stage_norms) != len(encoder.hidden_dims):
        raise ValueError(f"keras-hub MiTBackbone {encoder.name}: {len(stage_norms)} stage LayerNorms for "
                         f"{len(encoder.hidden_dims)} stages")
    for i in range(len(encoder.hidden_dims)):
        s = i + 1
        embed = layers[f"patch_and_embed_{i}"]
        _add(tensors, f"stage{s}.patch_embed.proj", embed.proj)
        _add(tensors, f"stage{s}.patch_embed.norm", embed.norm)
        blocks = sorted(int(m.group(1)) for n in layers for m in [re.fullmatch(rf"hierarchical_encoder_{i}_(\d+)", n)] if m)
        for k in blocks:
            block, prefix = layers[f"hierarchical_encoder_{i}_{k}"], f"stage{s}.block{k + 1}"
            _add(tensors, f"{prefix}.norm1", block.norm1)
            _add(tensors, f"{prefix}.norm2", block.norm2)
            for theirs, ours in (("q", "query"), ("k", "key"), ("v", "value"), ("proj", "proj"),
                                 ("sr", "reduce"), ("norm", "reduce_norm")):
                if hasattr(block.attn, theirs):
                    _add(tensors, f"{prefix}.attention.{ours}", getattr(block.attn, theirs))
            for part in ("fc1", "dwconv", "fc2"):
                _add(tensors, f"{prefix}.ffn.{part}", getattr(block.mlp, part))
        _add(tensors, f"stage{s}.norm", stage_norms[i])


def _add(tensors, prefix, layer):
    for variable in layer.weights:
        tensors[f"{prefix}.{variable.name}"] = variable.numpy()
