"""Writes tests/fixtures/segformer_*: tiny random SegFormers as each source saves them, and
transformers' logits for them.

Run with the reference packages installed (no TensorFlow needed):

    pip install torch transformers safetensors pillow numpy    # CPU wheels are enough
    python tests/reference/make_segformer_fixtures.py
    python tests/reference/make_segformer_fixtures.py --full b2 --output DIR   # a full-size live case

`--full VARIANT` writes, instead of the fixtures, a random full-size model (DIR/model.safetensors
and config.json, as save_pretrained does) and DIR/reference.npz: the real test images it used
(two CamVid validation photos cropped to 352 x 480, one person-segmentation photo resized to
352 x 480) and transformers' logits for them. tests/weights/test_weights_segformer.py runs it live.

Files (a few hundred KB in all):
    segformer_tiny_hf5.safetensors   SegformerForSemanticSegmentation.save_pretrained (transformers 5.x names)
    segformer_tiny_hf4.bin           the same weights under transformers 4.x names (torch.save), which
                                     transformers 5.x itself loads to the same logits (checked here)
    segformer_tiny_nvlabs.pth        the same weights under NVlabs/mmseg 0.x names (fused attn.kv,
                                     decode_head.linear_c1.., an unused decode_head.conv_seg), wrapped
                                     as mmseg saves them: {"state_dict": ..., "meta": ...}
    segformer_tiny_mit_hf.safetensors    an encoder-only SegformerForImageClassification (4.x names)
    segformer_tiny_mit_nvlabs.pth        its encoder under NVlabs ImageNet names (patch_embed1.., head.*)
    segformer_reader_cases.pth       tensors a reader must rebuild (strided views, float16, bfloat16,
                                     int64, bool, 0-d, a Parameter) next to pickled metadata objects;
    segformer_reader_cases.npz       the same tensors as NumPy arrays (bfloat16 widened to float32)
    segformer_tiny_reference.npz     logits [N, K, H/4, W/4] and their bilinear upsampling to [N, K, H, W]
                                     for the test images; the logits with NVlabs' LayerNorm epsilons
                                     (transformers' model with 1e-6 where NVlabs has it); the
                                     encoder-only model's four stage outputs

The test images are two CamVid validation photos (read from ../shared/data at test time, never
copied: their licence forbids it), downsampled by 4 by slicing and cropped to 64 x 96, and one
synthetic image from a seeded NumPy generator (`synthetic_image`, repeated in the tests).
Every parameter and BatchNorm statistic is drawn at random (LayerNorm and BatchNorm scales
small, so that an epsilon off by 10x moves the logits far beyond the tests' 1e-5).
"""

import argparse
import collections
import datetime
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import SegformerConfig, SegformerForImageClassification, SegformerForSemanticSegmentation

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CAMVID = ROOT.parent / "shared" / "data" / "camvid" / "val"
CAMVID_IMAGES = ("0016E5_07959.png", "0016E5_08085.png")
IMAGE_SIZE = (64, 96)
MEAN, STD = np.array([0.485, 0.456, 0.406], "float32"), np.array([0.229, 0.224, 0.225], "float32")
TINY = dict(hidden_sizes=[8, 16, 20, 32], depths=[2, 1, 1, 2], decoder_hidden_size=16, num_labels=5)


def tiny_config(**overrides):
    return SegformerConfig(num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], **{**TINY, **overrides})


def camvid_image(name):
    """A CamVid photo downsampled by 4 (every 4th pixel) and cropped to IMAGE_SIZE, uint8 [H, W, 3]."""
    image = np.asarray(Image.open(CAMVID / name).convert("RGB"))[::4, ::4]
    top, left = (image.shape[0] - IMAGE_SIZE[0]) // 2, (image.shape[1] - IMAGE_SIZE[1]) // 2
    return image[top:top + IMAGE_SIZE[0], left:left + IMAGE_SIZE[1]]


def synthetic_image(seed=7):
    """Smooth random colours: a 4 x 6 grid of random pixels repeated 16 x 16, plus noise; uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(IMAGE_SIZE[0] // 16, IMAGE_SIZE[1] // 16, 3))
    noise = rng.integers(-20, 21, size=IMAGE_SIZE + (3,))
    return np.clip(coarse.repeat(16, 0).repeat(16, 1) + noise, 0, 255).astype("uint8")


def pixel_values(images):
    """What SegformerImageProcessor gives (without its resize): (x / 255 - mean) / std, NCHW float32."""
    x = (np.asarray(images, "float32") / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def randomize(model, seed):
    """Every parameter and buffer at random; norm scales small so epsilons matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.01 + 1e-3)
            elif tensor.ndim == 1 and ("norm" in name or "batch_norm" in name) and name.endswith("weight"):
                tensor.copy_(0.02 * (1 + 0.2 * noise))
            elif tensor.ndim == 1:
                tensor.copy_(0.005 * noise)
            else:
                tensor.copy_(noise / np.sqrt(tensor[0].numel()))
    return model.eval()


def hf4_names(state_dict):
    """transformers 5.x names -> 4.x names (the inverse of 5.x's conversion_mapping for Segformer)."""
    rules = [
        (r"segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
        (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.", r"segformer.encoder.block.\1.\2."),
        (r"segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
        (r"attention\.q_proj\.", "attention.self.query."),
        (r"attention\.k_proj\.", "attention.self.key."),
        (r"attention\.v_proj\.", "attention.self.value."),
        (r"attention\.o_proj\.", "attention.output.dense."),
        (r"attention\.sequence_reduction\.sequence_reduction\.", "attention.self.sr."),
        (r"attention\.sequence_reduction\.layer_norm\.", "attention.self.layer_norm."),
        (r"\.layernorm_before\.", ".layer_norm_1."),
        (r"\.layernorm_after\.", ".layer_norm_2."),
        (r"\.mlp\.fc1\.", ".mlp.dense1."),
        (r"\.mlp\.fc2\.", ".mlp.dense2."),
        (r"decode_head\.linear_projections\.", "decode_head.linear_c."),
    ]
    import re

    out = collections.OrderedDict()
    for name, value in state_dict.items():
        for pattern, replacement in rules:
            name = re.sub(pattern, replacement, name)
        out[name] = value
    return out


def nvlabs_names(state_dict, num_classes):
    """transformers 5.x names -> NVlabs SegFormer (mmseg 0.x) names, k and v fused into attn.kv."""
    import re

    out, pending = collections.OrderedDict(), {}
    for name, value in state_dict.items():
        m = re.match(r"segformer\.stages\.(\d+)\.(.*)", name)
        if m:
            stage, rest = int(m.group(1)) + 1, m.group(2)
            rest = re.sub(r"^patch_embeddings\.layer_norm\.", f"patch_embed{stage}.norm.", rest)
            rest = re.sub(r"^patch_embeddings\.proj\.", f"patch_embed{stage}.proj.", rest)
            rest = re.sub(r"^layer_norm\.", f"norm{stage}.", rest)
            b = re.match(r"blocks\.(\d+)\.(.*)", rest)
            if b:
                part = b.group(2)
                for old, new in (("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                                 ("attention.q_proj", "attn.q"), ("attention.o_proj", "attn.proj"),
                                 ("attention.sequence_reduction.sequence_reduction", "attn.sr"),
                                 ("attention.sequence_reduction.layer_norm", "attn.norm")):
                    part = part.replace(old, new)
                kv = re.match(r"attention\.(k|v)_proj\.(weight|bias)", part)
                key = f"backbone.block{stage}.{b.group(1)}."
                if kv:
                    pending.setdefault(key + "attn.kv." + kv.group(2), {})[kv.group(1)] = value
                    if len(pending[key + "attn.kv." + kv.group(2)]) == 2:
                        parts = pending.pop(key + "attn.kv." + kv.group(2))
                        out[key + "attn.kv." + kv.group(2)] = torch.cat([parts["k"], parts["v"]], 0)
                    continue
                rest = key[len("backbone."):] + part
            out["backbone." + rest] = value
            continue
        m = re.match(r"decode_head\.linear_projections\.(\d+)\.proj\.(.*)", name)
        if m:
            out[f"decode_head.linear_c{int(m.group(1)) + 1}.proj.{m.group(2)}"] = value
            continue
        name = name.replace("decode_head.linear_fuse.", "decode_head.linear_fuse.conv.")
        name = name.replace("decode_head.batch_norm.", "decode_head.linear_fuse.bn.")
        name = name.replace("decode_head.classifier.", "decode_head.linear_pred.")
        out[name] = value
    # mmseg 0.x's BaseDecodeHead builds conv_seg (channels 128 -> classes), unused by SegFormerHead.
    out["decode_head.conv_seg.weight"] = torch.zeros(num_classes, 128, 1, 1)
    out["decode_head.conv_seg.bias"] = torch.zeros(num_classes)
    assert not pending, pending
    return out


def logits_of(model, images):
    with torch.no_grad():
        logits = model(pixel_values(images)).logits
        upsampled = torch.nn.functional.interpolate(logits, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    return logits.numpy(), upsampled.numpy()


def reader_cases():
    torch.manual_seed(3)
    base = torch.randn(4, 6)
    cases = collections.OrderedDict(
        plain=base, transposed=base.t(), strided=base[1:3, ::2], half=torch.randn(3, 2).half(),
        bfloat16=torch.randn(5).bfloat16(), int64=torch.arange(7), bool=torch.tensor([True, False]),
        scalar=torch.tensor(3.5), counter=torch.tensor(0), parameter=torch.nn.Parameter(torch.randn(2, 2)),
    )
    meta = {"time": datetime.datetime(2021, 6, 1), "epoch": np.int64(3), "score": np.float64(0.5),
            "history": np.arange(3), "classes": ("a", "b"), "hook": collections.Counter(a=1)}
    torch.save({"meta": meta, "state_dict": cases}, FIXTURES / "segformer_reader_cases.pth")
    np.savez(FIXTURES / "segformer_reader_cases.npz",
             **{k: (v.float() if v.dtype == torch.bfloat16 else v).detach().numpy() for k, v in cases.items()})


def full_size(variant, output, init):
    """A random full-size SegFormer and transformers' logits on real photos, into `output`."""
    from transformers import SegformerConfig

    sizes = {"b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256), "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768)}
    widths, depths, channels = sizes[variant]
    config = SegformerConfig(hidden_sizes=widths, depths=depths, decoder_hidden_size=channels, num_labels=150)
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(config).eval()
    if init == "random":
        randomize(model, seed=4)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    camvid = [np.asarray(Image.open(CAMVID / n).convert("RGB"))[4:356] for n in CAMVID_IMAGES]
    person = Image.open(ROOT.parent / "shared" / "data" / "person-segmentation" / "val" / "images" / "10.jpg")
    images = np.stack(camvid + [np.asarray(person.convert("RGB").resize((480, 352), Image.BILINEAR))])
    with torch.no_grad():
        logits = model(pixel_values(images)).logits
        upsampled = torch.nn.functional.interpolate(logits, size=images.shape[1:3], mode="bilinear", align_corners=False)
    np.savez(output / "reference.npz", images=images, logits=logits.numpy(), upsampled=upsampled.numpy())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", choices=("b0", "b2"), help="write a full-size live case instead of the fixtures")
    parser.add_argument("--init", choices=("random", "hf"), default="random",
                        help="--full weights: every tensor random (default) or transformers' own initialisation")
    parser.add_argument("--output", help="--full's output folder")
    args = parser.parse_args()
    if args.full:
        return full_size(args.full, args.output, args.init)
    FIXTURES.mkdir(exist_ok=True)
    reader_cases()
    images = np.stack([camvid_image(n) for n in CAMVID_IMAGES] + [synthetic_image()])
    torch.manual_seed(0)
    model = randomize(SegformerForSemanticSegmentation(tiny_config()), seed=1)
    logits, upsampled = logits_of(model, images)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, FIXTURES / "segformer_tiny_hf5.safetensors")

    # transformers 4.x names: saved with torch, then loaded back by transformers 5.x itself.
    hf4 = hf4_names(state)
    torch.save(hf4, FIXTURES / "segformer_tiny_hf4.bin")
    folder = FIXTURES.parent / "_hf4_check"
    folder.mkdir(exist_ok=True)
    model.config.save_pretrained(folder)
    torch.save(hf4, folder / "pytorch_model.bin")
    reloaded = SegformerForSemanticSegmentation.from_pretrained(folder).eval()
    np.testing.assert_array_equal(logits_of(reloaded, images)[0], logits)
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()

    meta = {"CLASSES": tuple(f"class{i}" for i in range(5)), "PALETTE": [[i, i, i] for i in range(5)],
            "mmseg_version": "0.11.0+fixture", "config": "model = dict(type='EncoderDecoder')"}
    torch.save({"meta": meta, "state_dict": nvlabs_names(state, 5)}, FIXTURES / "segformer_tiny_nvlabs.pth")
    # NVlabs' network is transformers' with LayerNorm(eps=1e-6) in the blocks and stage norms.
    for stage in model.segformer.stages:
        stage.layer_norm.eps = 1e-6
        for block in stage.blocks:
            block.layernorm_before.eps = block.layernorm_after.eps = 1e-6
    nvlabs_logits, nvlabs_upsampled = logits_of(model, images)

    # Encoder only: an ImageNet classifier, its stage outputs for the same images.
    mit = randomize(SegformerForImageClassification(tiny_config(num_labels=10)), seed=2)
    with torch.no_grad():
        hidden = mit.segformer(pixel_values(images), output_hidden_states=True).hidden_states
    mit_state = hf4_names({k: v.contiguous() for k, v in mit.state_dict().items()})
    save_file(dict(mit_state), FIXTURES / "segformer_tiny_mit_hf.safetensors")
    nvlabs_mit = {k[len("backbone."):]: v for k, v in nvlabs_names(mit.state_dict(), 10).items()
                  if k.startswith("backbone.")}
    nvlabs_mit.update({"head.weight": mit.state_dict()["classifier.weight"],
                       "head.bias": mit.state_dict()["classifier.bias"]})
    torch.save(nvlabs_mit, FIXTURES / "segformer_tiny_mit_nvlabs.pth")

    np.savez_compressed(
        FIXTURES / "segformer_tiny_reference.npz",
        logits=logits, upsampled=upsampled, nvlabs_logits=nvlabs_logits, camvid_images=np.array(CAMVID_IMAGES),
        synthetic=images[-1], **{f"mit_stage{i + 1}": h.numpy() for i, h in enumerate(hidden)},
    )
    sizes = {p.name: os.path.getsize(p) for p in sorted(FIXTURES.glob("segformer_*"))}
    print(sizes, sum(sizes.values()))


if __name__ == "__main__":
    main()
