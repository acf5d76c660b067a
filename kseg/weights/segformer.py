"""Published SegFormer / MiT checkpoints into kseg's `SegFormer`.

Every source is first renamed to one canonical naming, in kseg's own terms and Keras layout
(stages and blocks counted from 1), then assigned tensor by tensor:

    stage{s}.patch_embed.proj.{kernel,bias}        stage{s}.patch_embed.norm.{gamma,beta}
    stage{s}.block{b}.norm1.{gamma,beta}           stage{s}.block{b}.attention.{query,key,value,proj}.{kernel,bias}
    stage{s}.block{b}.attention.reduce.{kernel,bias}   stage{s}.block{b}.attention.reduce_norm.{gamma,beta}
    stage{s}.block{b}.norm2.{gamma,beta}           stage{s}.block{b}.ffn.{fc1,dwconv,fc2}.{kernel,bias}
    stage{s}.norm.{gamma,beta}
    decode.linear{s}.{kernel,bias}   decode.fuse.kernel   decode.fuse_bn.{gamma,beta,moving_mean,moving_variance}
    decode.logits.{kernel,bias}

Checkpoint names, per source (HF = Hugging Face `SegformerForSemanticSegmentation`; `i`, `j`
count from 0 in HF, NVlabs counts stages from 1):

    canonical                 HF transformers 4.x                HF transformers 5.x                        NVlabs / mmseg 0.x
    stage{s}.patch_embed      encoder.patch_embeddings.i.        stages.i.patch_embeddings.                 patch_embed{s}.
                              {proj,layer_norm}                  {proj,layer_norm}                          {proj,norm}
    block: norm1              encoder.block.i.j.layer_norm_1     stages.i.blocks.j.layernorm_before         block{s}.j.norm1
    attention.query           .attention.self.query              .attention.q_proj                          .attn.q
    attention.key, .value     .attention.self.key, .value        .attention.k_proj, .v_proj                 .attn.kv (fused: rows [k; v])
    attention.proj            .attention.output.dense            .attention.o_proj                          .attn.proj
    attention.reduce          .attention.self.sr                 .attention.sequence_reduction.sequence_reduction   .attn.sr
    attention.reduce_norm     .attention.self.layer_norm         .attention.sequence_reduction.layer_norm   .attn.norm
    norm2                     .layer_norm_2                      .layernorm_after                           .norm2
    ffn.fc1, dwconv, fc2      .mlp.dense1, .mlp.dwconv.dwconv,   .mlp.fc1, .mlp.dwconv.dwconv, .mlp.fc2     .mlp.fc1, .mlp.dwconv.dwconv, .mlp.fc2
                              .mlp.dense2
    stage{s}.norm             encoder.layer_norm.i               stages.i.layer_norm                        norm{s}
    decode.linear{s}          decode_head.linear_c.i.proj        decode_head.linear_projections.i.proj      decode_head.linear_c{s}.proj
    decode.fuse, fuse_bn      decode_head.linear_fuse, .batch_norm (both versions)                          decode_head.linear_fuse.{conv,bn}
    decode.logits             decode_head.classifier (both versions)                                        decode_head.linear_pred

HF encoders carry a "segformer." prefix, NVlabs segmentation encoders "backbone."; either may be
absent. Dropped on purpose, and only these: BatchNorm's `num_batches_tracked`, the ImageNet
classifier of encoder-only checkpoints (HF `classifier.*`, NVlabs `head.*`) and mmseg 0.x's
unused `decode_head.conv_seg.*` (NVlabs' head classifies with `linear_pred`). Any other tensor
left over, any tensor missing and any of the wrong shape stops the load, naming it.
"""

import os
import re
from collections.abc import Mapping

import numpy as np

from kseg.models.segformer import MIT_CONFIGS, SegFormer
from kseg.backbones.mix_transformer import REDUCTION_RATIOS
from kseg.weights.reading import read_state_dict

HF4_BLOCK = {
    "layer_norm_1": "norm1", "attention.self.query": "attention.query", "attention.self.key": "attention.key",
    "attention.self.value": "attention.value", "attention.output.dense": "attention.proj",
    "attention.self.sr": "attention.reduce", "attention.self.layer_norm": "attention.reduce_norm",
    "layer_norm_2": "norm2", "mlp.dense1": "ffn.fc1", "mlp.dwconv.dwconv": "ffn.dwconv", "mlp.dense2": "ffn.fc2",
}
HF5_BLOCK = {
    "layernorm_before": "norm1", "attention.q_proj": "attention.query", "attention.k_proj": "attention.key",
    "attention.v_proj": "attention.value", "attention.o_proj": "attention.proj",
    "attention.sequence_reduction.sequence_reduction": "attention.reduce",
    "attention.sequence_reduction.layer_norm": "attention.reduce_norm",
    "layernorm_after": "norm2", "mlp.fc1": "ffn.fc1", "mlp.dwconv.dwconv": "ffn.dwconv", "mlp.fc2": "ffn.fc2",
}
NVLABS_BLOCK = {
    "norm1": "norm1", "attn.q": "attention.query", "attn.kv": "attention.kv", "attn.proj": "attention.proj",
    "attn.sr": "attention.reduce", "attn.norm": "attention.reduce_norm", "norm2": "norm2",
    "mlp.fc1": "ffn.fc1", "mlp.dwconv.dwconv": "ffn.dwconv", "mlp.fc2": "ffn.fc2",
}
HF_EMBED = {"proj": "proj", "layer_norm": "norm"}
NVLABS_EMBED = {"proj": "proj", "norm": "norm"}

# (pattern over the name less its prefix and parameter, canonical module, module map or None).
# {s}, {b}: stage and block numbers; {m}: a module path looked up in the map.
SOURCES = {
    "huggingface": {
        "prefixes": ("segformer.",),
        "stage_base": 0,
        "rules": [
            (r"encoder\.patch_embeddings\.{s}\.{m}", "stage{s}.patch_embed.{m}", HF_EMBED),
            (r"stages\.{s}\.patch_embeddings\.{m}", "stage{s}.patch_embed.{m}", HF_EMBED),
            (r"encoder\.block\.{s}\.{b}\.{m}", "stage{s}.block{b}.{m}", HF4_BLOCK),
            (r"stages\.{s}\.blocks\.{b}\.{m}", "stage{s}.block{b}.{m}", HF5_BLOCK),
            (r"encoder\.layer_norm\.{s}", "stage{s}.norm", None),
            (r"stages\.{s}\.layer_norm", "stage{s}.norm", None),
            (r"decode_head\.linear_c\.{s}\.proj", "decode.linear{s}", None),
            (r"decode_head\.linear_projections\.{s}\.proj", "decode.linear{s}", None),
            (r"decode_head\.linear_fuse", "decode.fuse", None),
            (r"decode_head\.batch_norm", "decode.fuse_bn", None),
            (r"decode_head\.classifier", "decode.logits", None),
        ],
        "dropped": (r"classifier\.(weight|bias)", r".*\.num_batches_tracked"),
        # transformers' SegFormer: nn.LayerNorm's default everywhere.
        "model_kwargs": {"layer_norm_epsilon": 1e-5, "stage_norm_epsilon": 1e-5, "conv_norm_epsilon": 1e-5},
    },
    "nvlabs": {
        "prefixes": ("backbone.",),
        "stage_base": 1,
        "rules": [
            (r"patch_embed{s}\.{m}", "stage{s}.patch_embed.{m}", NVLABS_EMBED),
            (r"block{s}\.{b}\.{m}", "stage{s}.block{b}.{m}", NVLABS_BLOCK),
            (r"norm{s}", "stage{s}.norm", None),
            (r"decode_head\.linear_c{s}\.proj", "decode.linear{s}", None),
            (r"decode_head\.linear_fuse\.conv", "decode.fuse", None),
            (r"decode_head\.linear_fuse\.bn", "decode.fuse_bn", None),
            (r"decode_head\.linear_pred", "decode.logits", None),
        ],
        "dropped": (r"head\.(weight|bias)", r"decode_head\.conv_seg\.(weight|bias)", r".*\.num_batches_tracked"),
        # NVlabs' mix_transformer.py: LayerNorm(eps=1e-6) in blocks and stage norms, the
        # default 1e-5 in the patch embeddings and the sequence reductions.
        "model_kwargs": {"layer_norm_epsilon": 1e-6, "stage_norm_epsilon": 1e-6, "conv_norm_epsilon": 1e-5},
    },
}
# Names that identify a source when they occur (after prefix removal) in a checkpoint.
SIGNATURES = {
    "huggingface": re.compile(r"^(encoder\.patch_embeddings|stages)\.0\."),
    "nvlabs": re.compile(r"^patch_embed1\."),
}
MMSEG1_SIGNATURE = re.compile(r"^(backbone\.)?layers\.0\.0\.projection\.")
PARAMETER = r"\.(?P<p>weight|bias|running_mean|running_var)"
NORM_PARAMETERS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def load_segformer(path, input_shape=(512, 512, 3), num_classes=None, reset_classifier=False, **model_kwargs):
    """A kseg `SegFormer` holding a published checkpoint's weights.

    The variant (widths and depths), decoder width and class count come from the tensors'
    shapes; LayerNorm epsilons from the source (Hugging Face: 1e-5 everywhere; NVlabs: 1e-6 in
    blocks and stage norms, 1e-5 after strided convs); normalization is ImageNet mean/std.
    Attention heads are the paper's 1, 2, 5, 8 (shapes cannot tell; every release uses them).

    Args:
        path: a checkpoint file (.safetensors, .bin, .pth, .npz), a Hugging Face model folder
            holding model.safetensors or pytorch_model.bin, or a {name: np.ndarray} state dict.
        input_shape: (H, W, 3) of the kseg model, H and W divisible by 32.
        num_classes: K; None takes the checkpoint's. Required for an encoder-only checkpoint
            (its decoder is left initialised). A K unlike the checkpoint's needs `reset_classifier`.
        reset_classifier: leave the final 1x1 classifier initialised (fine-tuning to new classes);
            the rest of the decoder still loads.
        **model_kwargs: more `SegFormer` arguments (dropout, drop_path_rate, decoder_channels for
            an encoder-only checkpoint of custom widths, ...); they override the inferred ones.

    Returns:
        The `SegFormer`, in inference mode's weights; `model.checkpoint_report` says the source,
        the tensors dropped on purpose and the kseg weights left initialised.
    """
    if isinstance(path, Mapping):
        state_dict, path = path, "state dict"
    else:
        state_dict = read_state_dict(checkpoint_file(path))
    tensors, source = canonical_tensors(state_dict, path)
    kwargs = {**architecture_of(tensors, path), **SOURCES[source]["model_kwargs"]}
    has_decoder = "decode.linear1.kernel" in tensors
    logits = tensors.get("decode.logits.kernel")
    if num_classes is None:
        if logits is None:
            raise ValueError(f"{path}: an encoder-only checkpoint (no decoder tensors) needs `num_classes`; got None.")
        num_classes = int(logits.shape[-1])
    elif logits is not None and logits.shape[-1] != num_classes and not reset_classifier:
        raise ValueError(f"{path}: the checkpoint classifies {logits.shape[-1]} classes but num_classes={num_classes}; "
                         "pass reset_classifier=True to leave the classifier initialised for the new classes.")
    if not has_decoder and "decoder_channels" not in model_kwargs and kwargs.get("variant") is None:
        raise ValueError(f"{path}: an encoder-only checkpoint of custom widths needs `decoder_channels`.")
    kwargs.update(model_kwargs)
    model = SegFormer(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
    skip = ("decode.",) if not has_decoder else ("decode.logits.",) if reset_classifier else ()
    model.checkpoint_report = assign(model, tensors, skip=skip, origin=str(path))
    model.checkpoint_report["source"] = source
    return model


def checkpoint_file(path):
    """The weights file of `path`: itself, or a Hugging Face folder's model.safetensors / pytorch_model.bin."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f"{path}: a folder without model.safetensors or pytorch_model.bin")
    return path


def canonical_tensors(state_dict, origin="checkpoint"):
    """Renames a SegFormer/MiT state dict (HF 4.x/5.x or NVlabs) to kseg's names and Keras layout.

    Args:
        state_dict: {name: np.ndarray} as `read_state_dict` returns it.
        origin: the file, for error messages.

    Returns:
        ({canonical name: np.ndarray in Keras layout}, source) with source "huggingface" or "nvlabs".
    """
    source = detect_source(state_dict, origin)
    spec = SOURCES[source]
    rules = [(re.compile("^" + pattern.format(s=r"(?P<s>\d+)", b=r"(?P<b>\d+)", m=r"(?P<m>[\w.]+?)") + PARAMETER + "$"),
              target, modules) for pattern, target, modules in spec["rules"]]
    dropped = [re.compile(f"^{pattern}$") for pattern in spec["dropped"]]
    tensors, unknown = {}, []
    for name, value in state_dict.items():
        short = _strip(name, spec["prefixes"])
        canonical = _rename(short, rules, spec["stage_base"])
        if canonical is None:
            if not any(p.match(short) for p in dropped):
                unknown.append(name)
            continue
        if canonical.endswith(("attention.kv.weight", "attention.kv.bias")):
            if value.shape[0] % 2:
                raise ValueError(f"{origin}: fused tensor {name!r} has shape {value.shape}; expected an even first "
                                 "dimension (keys then values)")
            half = value.shape[0] // 2
            for part, piece in (("key", value[:half]), ("value", value[half:])):
                _put(tensors, canonical.replace("attention.kv", f"attention.{part}"), piece, f"{name}[{part}]", origin)
            continue
        _put(tensors, canonical, value, name, origin)
    if unknown:
        raise ValueError(f"{origin}: {len(unknown)} tensor(s) of a {source} SegFormer checkpoint that kseg's SegFormer "
                         f"has no place for: {unknown[:10]}")
    return tensors, source


def detect_source(state_dict, origin="checkpoint"):
    """"huggingface" or "nvlabs", from the names; raises naming a few of them otherwise."""
    names = list(state_dict)
    for source, signature in SIGNATURES.items():
        if any(signature.match(_strip(n, SOURCES[source]["prefixes"])) for n in names):
            return source
    if any(MMSEG1_SIGNATURE.match(n) for n in names):
        raise ValueError(
            f"{origin}: an mmsegmentation 1.x checkpoint (names like 'backbone.layers.0.0.projection.weight'). Its "
            "SegformerHead adds a BatchNorm and ReLU to each stage's projection, which SegFormer's All-MLP decoder "
            "(NVlabs, Hugging Face, kseg) does not have; load NVlabs or Hugging Face checkpoints instead.")
    raise ValueError(f"{origin}: not a SegFormer/MiT checkpoint kseg knows; first names {names[:5]}, expected Hugging "
                     "Face ('segformer.encoder.patch_embeddings.0...' or 'segformer.stages.0...') or NVlabs "
                     "('backbone.patch_embed1...' / 'patch_embed1...') names")


def architecture_of(tensors, origin="checkpoint"):
    """SegFormer arguments read from canonical tensors' shapes: variant or widths/depths, decoder width.

    Args:
        tensors: canonical {name: array} (Keras layout).
        origin: the file, for error messages.

    Returns:
        dict of `SegFormer` keyword arguments (variant, widths, depths, decoder_channels).
    """
    widths, depths = [], []
    for s in range(1, 5):
        kernel = tensors.get(f"stage{s}.patch_embed.proj.kernel")
        if kernel is None:
            raise ValueError(f"{origin}: no patch embedding for stage {s}; a MiT encoder has four stages")
        widths.append(int(kernel.shape[-1]))
        blocks = sorted({int(m.group(1)) for n in tensors for m in [re.match(rf"stage{s}\.block(\d+)\.", n)] if m})
        if blocks != list(range(1, len(blocks) + 1)) or not blocks:
            raise ValueError(f"{origin}: stage {s} has blocks {blocks}; expected 1..n without gaps")
        depths.append(len(blocks))
        reduce = tensors.get(f"stage{s}.block1.attention.reduce.kernel")
        ratio = 1 if reduce is None else int(reduce.shape[0])
        if ratio != REDUCTION_RATIOS[s - 1]:
            raise ValueError(f"{origin}: stage {s} reduces keys by {ratio}; MiT's reduction ratios are {REDUCTION_RATIOS}")
    in_channels = tensors["stage1.patch_embed.proj.kernel"].shape[2]
    if in_channels != 3:
        raise ValueError(f"{origin}: the first patch embedding takes {in_channels} channels; kseg's SegFormer takes 3")
    variant = next((v for v, c in MIT_CONFIGS.items()
                    if tuple(c["widths"]) == tuple(widths) and tuple(c["depths"]) == tuple(depths)), None)
    kwargs = {"variant": variant} if variant else {"variant": None, "widths": widths, "depths": depths}
    if "decode.linear1.kernel" in tensors:
        channels = int(tensors["decode.linear1.kernel"].shape[-1])
        if variant is None or channels != MIT_CONFIGS[variant]["decoder_channels"]:
            kwargs["decoder_channels"] = channels
    return kwargs


def assign(model, tensors, skip=(), origin="checkpoint"):
    """Assigns canonical tensors to a kseg `SegFormer`'s variables, all or nothing.

    Args:
        model: a `SegFormer`.
        tensors: canonical {name: array} in Keras layout (`canonical_tensors`, `keras_hub.canonical_tensors`).
        skip: canonical name prefixes left initialised (an encoder-only checkpoint's decoder).
        origin: the source, for error messages.

    Returns:
        dict with "left_initialised": the kseg weights not loaded (those under `skip`).
    """
    targets = segformer_variables(model)
    wanted = {n: v for n, v in targets.items() if not n.startswith(tuple(skip))}
    missing = sorted(set(wanted) - set(tensors))
    extra = sorted(n for n in set(tensors) - set(wanted) if not n.startswith(tuple(skip)))
    if missing:
        raise ValueError(f"{origin}: the checkpoint lacks {len(missing)} tensor(s) kseg's {model.name} needs: {missing[:10]}")
    if extra:
        raise ValueError(f"{origin}: {len(extra)} tensor(s) have no place in kseg's {model.name}: {extra[:10]}")
    for name, variable in wanted.items():
        value = tensors[name]
        if tuple(value.shape) != tuple(variable.shape):
            source = getattr(value, "source_name", name)
            raise ValueError(f"{origin}: tensor {source!r} ({name}) has shape {tuple(value.shape)} in Keras layout; "
                             f"kseg's {variable.path} is {tuple(variable.shape)}")
    for name, variable in wanted.items():
        variable.assign(np.asarray(tensors[name], dtype=variable.dtype))
    return {"left_initialised": sorted(set(targets) - set(wanted))}


def segformer_variables(model):
    """{canonical name: variable} of a kseg `SegFormer` (see the module docstring)."""
    encoder, out = model.encoder, {}

    def add(prefix, layer):
        for variable in layer.weights:
            out[f"{prefix}.{variable.name}"] = variable

    for s in range(1, 5):
        embed = encoder.get_layer(f"stage{s}_patch_embed")
        add(f"stage{s}.patch_embed.proj", embed.proj)
        add(f"stage{s}.patch_embed.norm", embed.norm)
        b = 1
        while any(layer.name == f"stage{s}_block{b}" for layer in encoder.layers):
            block, prefix = encoder.get_layer(f"stage{s}_block{b}"), f"stage{s}.block{b}"
            add(f"{prefix}.norm1", block.norm1)
            add(f"{prefix}.norm2", block.norm2)
            for part in ("query", "key", "value", "proj", "reduce", "reduce_norm"):
                if hasattr(block.attention, part):
                    add(f"{prefix}.attention.{part}", getattr(block.attention, part))
            for part in ("fc1", "dwconv", "fc2"):
                add(f"{prefix}.ffn.{part}", getattr(block.ffn, part))
            b += 1
        add(f"stage{s}.norm", encoder.get_layer(f"stage{s}_norm"))
        add(f"decode.linear{s}", model.get_layer(f"decode_linear{s}"))
    add("decode.fuse", model.get_layer("decode_fuse"))
    add("decode.fuse_bn", model.get_layer("decode_fuse_bn"))
    add("decode.logits", model.get_layer("decode_logits"))
    return out


class _Named(np.ndarray):
    """An array that remembers the checkpoint name it came from (for error messages)."""


def _put(tensors, canonical, value, source_name, origin):
    module, parameter = canonical.rsplit(".", 1)
    value = np.asarray(value)
    is_norm = module.endswith(("norm", "norm1", "norm2", "fuse_bn"))
    if is_norm:
        name, array = NORM_PARAMETERS[parameter], value
    elif parameter == "bias":
        name, array = "bias", value
    elif parameter != "weight":
        raise ValueError(f"{origin}: tensor {source_name!r} is a {parameter!r}; only norms have one")
    elif module.endswith("ffn.dwconv") and value.ndim == 4:
        name, array = "kernel", value.transpose(2, 3, 0, 1)  # [C, 1, kh, kw] -> [kh, kw, C, 1]
    elif value.ndim == 4:
        name, array = "kernel", value.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
    elif value.ndim == 2:
        name, array = "kernel", value.T  # Linear [out, in] -> Dense [in, out]
    else:
        raise ValueError(f"{origin}: tensor {source_name!r} has shape {value.shape}; expected a Linear (2-D) or "
                         "Conv2d (4-D) weight")
    key = f"{module}.{name}"
    if key in tensors:
        raise ValueError(f"{origin}: tensors {tensors[key].source_name!r} and {source_name!r} both map to {key}")
    named = np.ascontiguousarray(array).view(_Named)
    named.source_name = source_name
    tensors[key] = named


def _strip(name, prefixes):
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _rename(name, rules, stage_base):
    for pattern, target, modules in rules:
        match = pattern.match(name)
        if match is None:
            continue
        groups = match.groupdict()
        module = groups.get("m")
        if modules is not None and module not in modules:
            continue
        fields = {"s": int(groups["s"]) + 1 - stage_base if groups.get("s") else None,
                  "b": int(groups["b"]) + 1 if groups.get("b") else None,
                  "m": modules[module] if modules is not None else None}
        return target.format(**fields) + "." + groups["p"]
    return None
