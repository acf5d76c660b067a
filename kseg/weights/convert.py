"""A published checkpoint -> a kseg .keras model (`kseg convert SOURCE --output model.keras`).

`convert` tells the checkpoint's kind from its files and tensor names, hands it to the loader
of that kind, and writes the model atomically (a killed conversion never leaves a partial
file under the output's name). The .keras file then trains (`kseg train --init`), evaluates
and exports (`kseg export --model`) like any kseg model.

    kind                    source                                          loader
    segformer               Hugging Face folder (config.json model_type     kseg.weights.segformer.load_segformer
                            "segformer") or file (.safetensors, .bin) of
                            SegformerForSemanticSegmentation / MiT
                            (`segformer.encoder...`, `segformer.stages...`),
                            NVlabs / mmseg 0.x .pth (`backbone.patch_embed1...`)
    mask_rcnn_torchvision   torchvision maskrcnn_resnet50_fpn state dict    kseg.weights.mask_rcnn_torchvision
                            (`backbone.body...`, `roi_heads...`)                .mask_rcnn_from_torchvision
    keras_hub_segformer     a keras-hub SegFormer / MiT preset folder       kseg.weights.segformer_keras_hub
                            (needs keras-hub installed)                         .segformer_from_keras_hub
"""

import json
import os

from kseg.utils import atomic_path

KINDS = ("segformer", "mask_rcnn_torchvision", "keras_hub_segformer")
DEFAULT_IMAGE_SIZE = (512, 512)
_SHOW = 5


def convert(source, output, kind=None, image_size=None, num_classes=None, reset_classifier=False, **options):
    """Converts a checkpoint into a kseg model and saves it as `output` (.keras, atomically).

    Args:
        source: a checkpoint file (.safetensors, .pth, .pt, .bin, .npz) or folder (Hugging
            Face model folder, keras-hub preset).
        output: the .keras file to write.
        kind: one of `KINDS`; None tells it from the source (`detect_kind`).
        image_size: (H, W) the kseg model takes (default 512 x 512; torchvision's Mask R-CNN
            still resizes inside the model as torchvision does).
        num_classes: K; None keeps the checkpoint's. SegFormer: another K needs
            `reset_classifier` (the classifier is then left initialised).
        reset_classifier: SegFormer only, see `num_classes`.
        **options: more constructor arguments of the kseg model.

    Returns:
        {"output", "kind", "model" (class name), "num_classes", "image_size", "report" (the
        loader's `checkpoint_report`, or None)}.

    Raises:
        ValueError: an unknown kind, a source of no known kind, an output not ending in
            .keras, or the loader's errors (they name the tensor missing, extra or of the
            wrong shape); FileNotFoundError: no source.

    Example:
        >>> convert("segformer-b0-finetuned-ade-512-512", "segformer_b0_ade.keras")  # doctest: +SKIP
        {'output': 'segformer_b0_ade.keras', 'kind': 'segformer', 'model': 'SegFormer', ...}
    """
    source, output = os.fspath(source), os.fspath(output)
    if not output.endswith(".keras"):
        raise ValueError(f"--output {output!r}: expected a file name ending in .keras")
    if not os.path.exists(source):
        raise FileNotFoundError(f"{source}: no such checkpoint file or folder")
    if kind is None:
        kind = detect_kind(source)
    elif kind not in KINDS:
        raise ValueError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    size = tuple(int(v) for v in (image_size or DEFAULT_IMAGE_SIZE))
    if kind == "mask_rcnn_torchvision" and reset_classifier:
        raise ValueError("--reset-classifier is for SegFormer checkpoints; a torchvision Mask R-CNN keeps its classes "
                         "(kseg train --init leaves another class count's classifier initialised)")
    model = _LOADERS[kind](source, size, num_classes, reset_classifier, options)
    with atomic_path(output) as tmp:
        model.save(tmp)
    return {"output": output, "kind": kind, "model": type(model).__name__, "num_classes": int(model.num_classes),
            "image_size": list(size), "report": getattr(model, "checkpoint_report", None)}


def detect_kind(source):
    """The kind (`KINDS`) of a checkpoint, from its folder's config or its tensor names.

    Raises:
        ValueError: naming the source and a few of its tensor names when no kind fits.
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        config = _json(os.path.join(source, "config.json"))
        if config.get("model_type") == "segformer":
            return "segformer"
        if str(config.get("registered_name", "")).startswith("keras_hub") or os.path.isfile(
                os.path.join(source, "metadata.json")):
            return "keras_hub_segformer"
        from kseg.weights.segformer import checkpoint_file

        try:
            source = checkpoint_file(source)
        except FileNotFoundError:
            raise ValueError(f"{source}: a folder that is neither a Hugging Face model (config.json with model_type "
                             "'segformer', model.safetensors or pytorch_model.bin) nor a keras-hub preset "
                             "(metadata.json)") from None
    from kseg.weights import read_state_dict
    from kseg.weights.segformer import detect_source

    names = list(read_state_dict(source))
    try:
        detect_source(dict.fromkeys(names), source)
        return "segformer"
    except ValueError as err:
        if "mmsegmentation 1.x" in str(err):
            raise
    if any(n.startswith("roi_heads.") for n in names) and any(n.startswith("backbone.body.") for n in names):
        return "mask_rcnn_torchvision"
    raise ValueError(f"{source}: cannot tell which model this checkpoint holds (first tensor names {names[:_SHOW]}); "
                     "expected SegFormer/MiT (Hugging Face 'segformer.encoder...', NVlabs 'backbone.patch_embed1...') "
                     "or torchvision Mask R-CNN ('backbone.body...', 'roi_heads...') names, or pass kind= one of "
                     f"{', '.join(KINDS)}")


def _json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _segformer(source, size, num_classes, reset_classifier, options):
    from kseg.weights.segformer import load_segformer

    return load_segformer(source, input_shape=size + (3,), num_classes=num_classes, reset_classifier=reset_classifier,
                          **options)


def _mask_rcnn_torchvision(source, size, num_classes, reset_classifier, options):
    from kseg.weights.mask_rcnn_torchvision import mask_rcnn_from_torchvision

    if num_classes is not None:
        options = {**options, "num_classes": int(num_classes)}
    return mask_rcnn_from_torchvision(source, size, **options)


def _keras_hub_segformer(source, size, num_classes, reset_classifier, options):
    try:
        import keras_hub
    except ImportError:
        raise ValueError(f"{source}: a keras-hub preset; converting it needs keras-hub "
                         "(pip install keras-hub)") from None
    from kseg.weights.segformer_keras_hub import segformer_from_keras_hub

    try:
        hub_model = keras_hub.models.SegFormerImageSegmenter.from_preset(source)
    except (ValueError, TypeError):  # a backbone preset: MiT or SegFormer backbone without the segmenter
        hub_model = keras_hub.models.Backbone.from_preset(source)
    return segformer_from_keras_hub(hub_model, input_shape=size + (3,), num_classes=num_classes, **options)


_LOADERS = {"segformer": _segformer, "mask_rcnn_torchvision": _mask_rcnn_torchvision,
            "keras_hub_segformer": _keras_hub_segformer}
