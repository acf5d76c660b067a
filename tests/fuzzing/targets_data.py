"""Fuzz targets of the data readers: images and masks, label maps, COCO instances and panoptic.

Seeds are small valid files made here (every Pillow mode and format kseg documents), plus
the real files of ../shared/data when it is there. `seeds` runs in the worker; `make_case`
in the parent, writing one mutated input into its folder.
"""

import io
import json
from pathlib import Path

import numpy as np

from tests.fuzzing.engine import ROOT, Target
from tests.fuzzing.mutators import mutate_bytes, mutate_json_text, odd_png

SHARED_DATA = ROOT.parent / "shared" / "data"
SIZE = (24, 32)  # (H, W) of the synthetic images and masks, so that pairs match


# ----------------------------------------------------------------------------- image files


def _encode(array, fmt, mode=None, **options):
    from PIL import Image

    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def image_seeds(folder=None, real=True):
    """Valid image files of every kind kseg reads (`real`: and real data set files): [(extension, bytes)]."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    palette = Image.fromarray(rgb).quantize(8)
    out = io.BytesIO()
    palette.save(out, format="PNG", transparency=0)
    gif = io.BytesIO()
    Image.fromarray(rgb).save(gif, format="GIF", save_all=True, append_images=[Image.fromarray(rgb[::-1])])
    seeds = [
        (".png", _encode(rgb, "PNG")), (".png", _encode(grey, "PNG")), (".png", _encode(rgb, "PNG", "RGBA")),
        (".png", _encode(rgb, "PNG", "LA")), (".png", out.getvalue()), (".png", _encode(grey, "PNG", "1")),
        (".png", _encode(grey.astype(np.uint16) * 257, "PNG")), (".jpg", _encode(rgb, "JPEG", quality=90)),
        (".jpg", _encode(grey, "JPEG")), (".jpg", _encode(rgb, "JPEG", progressive=True)),
        (".jpg", _encode(rgb, "JPEG", "CMYK")), (".bmp", _encode(rgb, "BMP")), (".gif", gif.getvalue()),
        (".tif", _encode(grey, "TIFF")),
    ]
    files = [ROOT / "kseg/data/samples/isbi2012/image/0.png",
             *sorted((SHARED_DATA / "person-segmentation/val/images").glob("*.jpg"))[:1],
             *sorted((SHARED_DATA / "camvid/val").glob("*.png"))[:1]]
    return seeds + [(p.suffix, p.read_bytes()) for p in files if real and p.exists()]


def mask_seeds(folder=None, real=True):
    """Valid mask files (one class id per pixel) of every mode kseg reads: [(extension, bytes)]."""
    from PIL import Image

    rng = np.random.default_rng(1)
    ids = rng.integers(0, 3, SIZE, dtype=np.uint8)
    ids[:4] = 255  # an ignore band
    palette = Image.fromarray(ids, "L").convert("P")
    out = io.BytesIO()
    palette.save(out, format="PNG")
    seeds = [(".png", _encode(ids, "PNG")), (".png", out.getvalue()), (".png", _encode(ids * 255, "PNG", "1")),
             (".png", _encode(ids.astype(np.uint16) * 300, "PNG")), (".tif", _encode(ids, "TIFF"))]
    files = [ROOT / "kseg/data/samples/isbi2012/label/0.png",
             *sorted((SHARED_DATA / "camvid/valannot").glob("*.png"))[:1]]
    return seeds + [(p.suffix, p.read_bytes()) for p in files if real and p.exists()]


def mutated_file(rng, seeds, folder, stem):
    """Writes one image input: an odd PNG (a quarter), a seed (1 in 30) or a mutated seed."""
    roll = rng.random()
    if roll < 0.25:
        suffix, data = ".png", odd_png(rng)
    else:
        suffix, data = rng.choice(seeds)
        if roll > 1 / 30 + 0.25:
            data = mutate_bytes(rng, data, others=[s[1] for s in seeds])
    path = Path(folder) / f"{stem}{suffix}"
    path.write_bytes(data)
    return str(path)


def _image_case(rng, seeds, folder):
    path = mutated_file(rng, seeds, folder, "image")
    return {"path": path, "channels": rng.choice((1, 3)), "names": [path]}


def _parse_image(case):
    from kseg.data import read_image

    image = read_image(case["path"], channels=case["channels"])
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == case["channels"], \
        f"read_image returned {image.dtype} {image.shape}"
    assert image.size and 0 <= image.min() and image.max() <= 255, "pixel values outside [0, 255]"


def _mask_case(rng, seeds, folder):
    path = mutated_file(rng, seeds, folder, "mask")
    return {"path": path, "names": [path]}


def _parse_mask(case):
    from kseg.data import read_mask

    mask = read_mask(case["path"])
    assert mask.dtype == np.int32 and mask.ndim == 2 and mask.size, f"read_mask returned {mask.dtype} {mask.shape}"


def _pair_seeds(folder):
    return {"images": image_seeds(real=False), "masks": mask_seeds(real=False)}  # all of one size: pairs match


def _pair_case(rng, seeds, folder):
    which = rng.choice(("image", "mask", "both"))
    paths = []
    for kind, stem in (("images", "image"), ("masks", "mask")):
        if which in (stem, "both"):
            paths.append(mutated_file(rng, seeds[kind], folder, stem))
        else:
            suffix, data = rng.choice([s for s in seeds[kind] if s[0] != ".tif"])
            paths.append(str(Path(folder) / f"{stem}{suffix}"))
            Path(paths[-1]).write_bytes(data)
    return {"image": paths[0], "mask": paths[1], "channels": rng.choice((1, 3)), "num_classes": rng.choice((3, 256)),
            "ignore_class": rng.choice((None, 255)), "remap": rng.choice((None, {255: 2})), "names": paths}


def _parse_pair(case):
    """validate_pairs, and when it accepts the pair, the tf.data reader must read it too."""
    from kseg.data import folder_dataset, validate_pairs
    from kseg.data.folder import _op_message

    pairs = [(case["image"], case["mask"])]
    settings = {k: case[k] for k in ("ignore_class", "remap", "channels")}
    validate_pairs(pairs, case["num_classes"], **settings)
    try:
        (image, mask), = folder_dataset(pairs, cache=False, **settings).take(1)
    except Exception as err:
        raise AssertionError(f"validate_pairs accepted the pair, folder_dataset then failed: {type(err).__name__}: "
                             f"{_op_message(err)[:200]}") from None
    assert image.shape[-1] == case["channels"] and image.shape[1:3] == mask.shape[1:3], "pipeline shapes differ"


# ----------------------------------------------------------------------------- label maps, edge images


def _label_seeds(folder):
    rng = np.random.default_rng(2)
    labels = np.zeros(SIZE, np.uint16)
    for k in range(1, 6):
        y, x = rng.integers(0, SIZE[0] - 6), rng.integers(0, SIZE[1] - 6)
        labels[y:y + 5, x:x + 6] = k * 1000
    seeds = {"labels": [(".png", _encode(labels, "PNG")), (".png", _encode((labels // 1000).astype(np.uint8), "PNG")),
                        (".tif", _encode(labels.astype(np.int32), "TIFF"))],
             "images": [s for s in image_seeds() if s[1].__len__() < 100000]}
    stardist = SHARED_DATA / "stardist-nuclei"
    if (stardist / "instances.png").exists():
        seeds["labels"].append((".png", (stardist / "instances.png").read_bytes()))
        seeds["images"].append((".png", (stardist / "image.png").read_bytes()))
    return seeds


def _label_case(rng, seeds, folder):
    label = mutated_file(rng, seeds["labels"], folder, "labels")
    image = None
    if rng.random() < 0.7:
        image = mutated_file(rng, seeds["images"], folder, "image") if rng.random() < 0.4 else None
        if image is None:
            suffix, data = rng.choice(seeds["images"])
            image = str(Path(folder) / f"image{suffix}")
            Path(image).write_bytes(data)
    return {"label": label, "image": image, "names": [label] + ([image] if image else [])}


def _parse_label(case):
    from kseg.data import read_instance_label_map

    example = read_instance_label_map(case["label"], case["image"])
    n, (h, w) = len(example["classes"]), example["image"].shape[:2]
    assert example["image"].dtype == np.uint8 and example["image"].shape == (h, w, 3), "bad image"
    assert example["masks"].shape == (n, h, w) and example["boxes"].shape == (n, 4), "bad masks or boxes"


def _parse_edge_image(case):
    """export.frames.load_image (kseg bench --image, demo-video), then the model-input conversion."""
    from export import frames

    image = frames.load_image(case["path"])
    for c, dtype in ((1, "float32"), (3, "uint8"), (4, "float32")):
        x = frames.prepare_image(image, {"shape": (1, 16, 16, c), "dtype": dtype, "quantization": (0.0, 0)})
        assert x.shape == (1, 16, 16, c) and x.dtype == np.dtype(dtype), f"prepare_image gave {x.shape} {x.dtype}"


# ----------------------------------------------------------------------------- COCO instances


def _coco_seeds(folder):
    """[(tree, {file name: bytes} of the image folder, real image folder or None)]."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    blob = np.zeros((20, 30), np.uint8)
    blob[3:9, 4:12] = 1
    compressed = mask_utils.encode(np.asfortranarray(blob))["counts"].decode("ascii")
    tree = {
        "images": [{"id": 7, "file_name": "a.png", "height": 20, "width": 30},
                   {"id": "b", "file_name": "b.jpg", "height": 16, "width": 16}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]],
             "bbox": [2, 2, 10, 8], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 9, "segmentation": {"size": [20, 30], "counts": compressed}},
            {"id": 3, "image_id": "b", "category_id": 5, "segmentation": {"size": [16, 16], "counts": [40, 20, 196]},
             "iscrowd": 1},
            {"id": 4, "image_id": "b", "category_id": 9, "bbox": [1, 1, 4, 4]},
        ],
    }
    seeds = [(tree, {"a.png": _encode(a, "PNG"), "b.jpg": _encode(b, "JPEG")}, None)]
    real = SHARED_DATA / "coco-panoptic-sample"
    if (real / "panoptic_coco_detection_format.json").exists():
        tree = json.loads((real / "panoptic_coco_detection_format.json").read_text())
        tree["annotations"] = tree["annotations"][:12]
        seeds.append((tree, {}, str(real / "input_images")))
    return seeds


def _image_folder(rng, files, real, folder, name):
    """The case's image folder: the seed's files, one of them mutated a third of the time."""
    if real and not files:
        return real
    images = Path(folder) / name
    images.mkdir()
    mutate = rng.choice(sorted(files)) if rng.random() < 0.33 else None
    for file_name, data in files.items():
        if file_name == mutate:
            data = odd_png(rng) if rng.random() < 0.3 else mutate_bytes(rng, data)
        (images / file_name).write_bytes(data)
    return str(images)


def _coco_case(rng, seeds, folder):
    tree, files, real = rng.choice(seeds)
    images = _image_folder(rng, files, real, folder, "images")
    path = Path(folder) / "instances.json"
    mutate = images == real or rng.random() < 0.75
    path.write_bytes(mutate_json_text(rng, tree) if mutate else json.dumps(tree).encode())
    return {"json": str(path), "images": images, "crowd": rng.random() < 0.5, "names": [str(path), images]}


def _parse_coco(case):
    from kseg.data import pad_instances, read_coco_instances

    examples, categories = read_coco_instances(case["json"], case["images"], include_crowd=case["crowd"])
    for example in examples:
        pad_instances(example, 4)  # checks the example contract (shapes, class ids)
        assert example["image"].dtype == np.uint8, "image is not uint8"
        assert max(example["classes"], default=1) <= len(categories), "class id past the categories"


# ----------------------------------------------------------------------------- COCO panoptic


def _panoptic_seeds(folder):
    """[(tree, {png name: bytes}, {image name: bytes}, real png folder, real image folder)]."""
    from kseg.data import write_coco_panoptic

    panoptic = np.zeros((6, 8), np.int32)
    panoptic[:3], panoptic[3:, :4] = 300000, 26
    example = {"image_id": 3, "file_name": "3.png", "image_file_name": "3.jpg", "panoptic": panoptic,
               "segments": {300000: {"category_id": 7}, 26: {"category_id": 1, "iscrowd": 0}}}
    categories = [{"id": 1, "name": "person", "isthing": 1}, {"id": 7, "name": "sky", "isthing": 0}]
    tree = write_coco_panoptic([example], Path(folder) / "p.json", Path(folder) / "png", categories=categories)
    pngs = {"3.png": (Path(folder) / "png" / "3.png").read_bytes()}
    images = {"3.jpg": _encode(np.full((6, 8, 3), 90, np.uint8), "JPEG")}
    seeds = [(tree, pngs, images, None, None)]
    real = SHARED_DATA / "coco-panoptic-sample"
    if (real / "panoptic_examples.json").exists():
        tree = json.loads((real / "panoptic_examples.json").read_text())
        seeds.append((tree, {}, {}, str(real / "panoptic_examples"), str(real / "input_images")))
    return seeds


def _panoptic_case(rng, seeds, folder):
    tree, pngs, images, real_pngs, real_images = rng.choice(seeds)
    png_dir = _image_folder(rng, pngs, real_pngs, folder, "png")
    image_dir = _image_folder(rng, images, real_images, folder, "images")
    path = Path(folder) / "panoptic.json"
    mutate = real_pngs or rng.random() < 0.7
    path.write_bytes(mutate_json_text(rng, tree) if mutate else json.dumps(tree).encode())
    with_images = rng.random() < 0.8
    return {"json": str(path), "pngs": png_dir, "images": image_dir if with_images else None,
            "names": [str(path), png_dir, image_dir]}


def _parse_panoptic(case):
    from kseg.data import read_coco_panoptic
    from kseg.data.panoptic_training import panoptic_training_example, training_categories

    examples, categories = read_coco_panoptic(case["json"], case["pngs"], case["images"])
    kseg_categories = training_categories(categories) if categories and case["images"] else None
    for example in examples:
        assert example["panoptic"].ndim == 2, "panoptic map is not [H, W]"
        if kseg_categories:
            trainable = panoptic_training_example(example, kseg_categories)
            assert trainable["semantic"].shape == trainable["panoptic"].shape, "semantic map of another size"


TARGETS = {
    "image": Target("image", "kseg.data.read_image: PNG/JPEG/BMP/GIF/TIFF bytes mutated, odd PNG headers",
                    image_seeds, _image_case, _parse_image),
    "mask": Target("mask", "kseg.data.read_mask: mask files mutated, odd PNG headers", mask_seeds, _mask_case,
                   _parse_mask),
    "image_mask_pair": Target("image_mask_pair", "kseg.data.validate_pairs, then folder_dataset on what it accepts",
                              _pair_seeds, _pair_case, _parse_pair),
    "label_map": Target("label_map", "kseg.data.read_instance_label_map: label map and image mutated",
                        _label_seeds, _label_case, _parse_label),
    "edge_image": Target("edge_image", "export.frames.load_image + prepare_image (kseg bench --image)",
                         image_seeds, _image_case, _parse_edge_image),
    "coco_instances": Target("coco_instances", "kseg.data.read_coco_instances: JSON and images mutated, every "
                             "example decoded", _coco_seeds, _coco_case, _parse_coco),
    "coco_panoptic": Target("coco_panoptic", "kseg.data.read_coco_panoptic: JSON, PNGs and images mutated, every "
                            "example decoded and made a training example", _panoptic_seeds, _panoptic_case,
                            _parse_panoptic),
}



# ----------------------------------------------------------------------------- YOLO


_YOLO_TOKENS = ("nan", "inf", "-inf", "1e309", "-0", "0.5", "1.0001", "2", "-1", "0x10", "1_0", "\u0663", "", "a",
                "3.0", "99999999999999999999", "1e-320")


def _yolo_seeds(folder):
    """{relative path: bytes} of a small YOLO data set: 3 images, their labels, data.yaml; and
    the same for the first 3 images of coco128-seg when ../shared/data has it."""
    rng = np.random.default_rng(5)
    files = {"data.yaml": b"path: .\ntrain: images/train\nval: images/train\nnames:\n  0: cat\n  1: dog\n  2: bird\n"}
    for i, (fmt, ext) in enumerate((("PNG", ".png"), ("JPEG", ".jpg"), ("PNG", ".png"))):
        files[f"images/train/{i}{ext}"] = _encode(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), fmt)
        files[f"labels/train/{i}.txt"] = (f"{i} 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6\n"
                                          f"{(i + 1) % 3} 0.6 0.2 0.9 0.2 0.75 0.9\n").encode()
    seeds = [files]
    real = SHARED_DATA / "coco128-seg"
    if (real / "data.yaml").exists():
        files = {"data.yaml": (real / "data.yaml").read_bytes()}
        for image in sorted((real / "images/train2017").glob("*.jpg"))[:3]:
            files[f"images/train2017/{image.name}"] = image.read_bytes()
            label = real / "labels/train2017" / f"{image.stem}.txt"
            if label.exists():
                files[f"labels/train2017/{label.name}"] = label.read_bytes()
        seeds.append(files)
    return seeds


def _yolo_label(rng, data):
    """A label file with one token replaced, a line dropped or doubled, or bytes mutated."""
    lines = data.decode("utf-8", "replace").splitlines()
    roll = rng.random()
    if roll < 0.5 and lines:
        i = rng.randrange(len(lines))
        tokens = lines[i].split(" ")
        tokens[rng.randrange(len(tokens))] = rng.choice(_YOLO_TOKENS)
        lines[i] = " ".join(tokens)
    elif roll < 0.65 and lines:
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i] * rng.choice((1, 2)) if rng.random() < 0.5 else lines[i][: len(lines[i]) // 2])
    else:
        return mutate_bytes(rng, data)
    return "\n".join(lines).encode("utf-8")


def _yolo_case(rng, seeds, folder):
    files = dict(rng.choice(seeds))
    for _ in range(rng.randint(1, 2)):
        name = rng.choice(sorted(files))
        if name == "data.yaml":
            files[name] = mutate_bytes(rng, files[name]) if rng.random() < 0.4 else _yaml_tree_mutated(rng, files[name])
        elif name.endswith(".txt"):
            files[name] = _yolo_label(rng, files[name])
        else:
            files[name] = odd_png(rng) if rng.random() < 0.3 else mutate_bytes(rng, files[name])
    for name, data in files.items():
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {"yaml": str(Path(folder) / "data.yaml"), "split": rng.choice(("train", "val")), "names": [str(folder)]}


def _yaml_tree_mutated(rng, text):
    """The yaml parsed, mutated as a tree and written back as JSON (which YAML reads)."""
    import yaml

    from tests.fuzzing.mutators import mutate_tree

    try:
        tree = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):  # already mutated as bytes in this case
        return mutate_bytes(rng, text)
    return json.dumps(mutate_tree(rng, tree), allow_nan=True).encode("utf-8")


def _parse_yolo(case):
    from kseg.data import pad_instances
    from kseg.data.yolo import read_yolo_data

    examples, categories = read_yolo_data(case["yaml"], case["split"])
    for example in examples:
        pad_instances(example, 4)  # checks the example contract (shapes, class ids)
        assert max(example["classes"], default=1) <= len(categories), "class id past the categories"


TARGETS["yolo"] = Target("yolo", "kseg.data.yolo.read_yolo_data: data.yaml, label lines and images mutated, every "
                         "example decoded", _yolo_seeds, _yolo_case, _parse_yolo)
