"""Measures kseg's SegFormer against transformers and keras-hub; prints one JSON line per case.

    KSEG_REFERENCE_PYTHON=/path/to/python-with-torch-transformers \\
        python tests/reference/measure_segformer_parity.py [--variants b0 b2] [--keras-hub]

For each variant and each initialisation ("random": every tensor random, norm scales small;
"hf": transformers' own initialisation) make_segformer_fixtures.py --full writes a random
full-size checkpoint and transformers' logits on real photos (352 x 480); this script loads it
with kseg.weights.load_segformer and reports max |kseg - ref| / max |ref| of the stride-4 and
the full-size logits, and the same for kseg's conventions before it loaded published weights
(x / 127.5 - 1, LayerNorm epsilon 1e-6 everywhere, BatchNorm epsilon 1e-3), and with the
old epsilons alone (ImageNet normalization kept). --keras-hub adds a
random keras-hub SegFormer-B0 (352 x 352, keras-hub's own initialisation, random BatchNorm
statistics) moved into kseg with segformer_from_keras_hub.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kseg.weights import load_segformer, segformer_from_keras_hub  # noqa: E402

SCRIPT = Path(__file__).with_name("make_segformer_fixtures.py")
OLD_CONVENTIONS = dict(normalization="symmetric", layer_norm_epsilon=1e-6, stage_norm_epsilon=1e-6,
                       conv_norm_epsilon=1e-6, batch_norm_epsilon=1e-3)


def relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def errors(model, data):
    pixels = data["images"].astype("float32")
    head = keras.Model(model.input, model.get_layer("decode_logits").output)
    stride4 = head.predict(pixels, verbose=0).transpose(0, 3, 1, 2)
    full = model.predict(pixels, verbose=0).transpose(0, 3, 1, 2)
    return relative_error(stride4, data["logits"]), relative_error(full, data["upsampled"])


def transformers_case(python, variant, init):
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([python, str(SCRIPT), "--full", variant, "--init", init, "--output", folder], check=True,
                       capture_output=True, timeout=1200)
        data = np.load(Path(folder) / "reference.npz")
        shape = data["images"].shape[1:]
        new = errors(load_segformer(folder, input_shape=shape), data)
        old = errors(load_segformer(folder, input_shape=shape, **OLD_CONVENTIONS), data)
        epsilons = {k: v for k, v in OLD_CONVENTIONS.items() if k != "normalization"}
        old_epsilons = errors(load_segformer(folder, input_shape=shape, **epsilons), data)
    return {"case": f"transformers {variant} init={init}", "images": int(data["images"].shape[0]),
            "size": list(shape[:2]), "stride4": new[0], "full": new[1], "old_stride4": old[0], "old_full": old[1],
            "old_epsilons_only_stride4": old_epsilons[0]}


def keras_hub_case():
    import keras_hub

    from kseg.models.segformer.segformer import IMAGENET_MEAN, IMAGENET_STD

    keras.utils.set_random_seed(0)
    mit = keras_hub.models.MiTBackbone(
        layerwise_depths=[2, 2, 2, 2], num_layers=4, layerwise_num_heads=[1, 2, 5, 8], layerwise_sr_ratios=[8, 4, 2, 1],
        max_drop_path_rate=0.1, layerwise_patch_sizes=[7, 3, 3, 3], layerwise_strides=[4, 2, 2, 2],
        image_shape=(352, 352, 3), hidden_dims=[32, 64, 160, 256])
    segmenter = keras_hub.models.SegFormerImageSegmenter(
        backbone=keras_hub.models.SegFormerBackbone(image_encoder=mit, projection_filters=256), num_classes=150)
    rng = np.random.default_rng(0)
    for v in segmenter.weights:
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape))
        elif "moving_mean" in v.path:
            v.assign(0.1 * rng.normal(size=v.shape))
    pixels = rng.uniform(0, 255, (2, 352, 352, 3)).astype("float32")
    from PIL import Image

    camvid = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid" / "val" / "0016E5_07959.png"
    if camvid.exists():
        pixels[0] = np.asarray(Image.open(camvid).convert("RGB"))[4:356, 64:416]
    expected = segmenter.predict((pixels / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD), verbose=0)
    model = segformer_from_keras_hub(segmenter)
    exact = segformer_from_keras_hub(segmenter, approximate_gelu=False, stage_norm_epsilon=1e-6)
    return {"case": "keras-hub b0 352x352", "full": relative_error(model.predict(pixels, verbose=0), expected),
            "with_nvlabs_gelu_and_epsilons": relative_error(exact.predict(pixels, verbose=0), expected)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=["b0", "b2"])
    parser.add_argument("--inits", nargs="*", default=["random", "hf"])
    parser.add_argument("--keras-hub", action="store_true")
    args = parser.parse_args()
    python = os.environ.get("KSEG_REFERENCE_PYTHON", sys.executable)
    for variant in args.variants:
        for init in args.inits:
            print(json.dumps(transformers_case(python, variant, init)), flush=True)
    if args.keras_hub:
        print(json.dumps(keras_hub_case()), flush=True)


if __name__ == "__main__":
    main()
