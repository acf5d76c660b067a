"""Reading the data of an instance or panoptic spec: (train examples, val examples, categories).

Examples follow the `kseg.training.examples` contract, read when indexed. Instance
categories are [K] dicts {"id": 1..K, "name", "coco_id"}; panoptic ones are kseg's panoptic
ids (`kseg.data.panoptic_training.training_categories`): things 1..K, stuff K+1..K+S.
"""

from kseg import data as kdata
from kseg.data.instances import read_coco_instances, read_instance_label_map
from kseg.data.panoptic import read_coco_panoptic
from kseg.data.panoptic_training import panoptic_training_example, training_categories
from kseg.data.panoptic_shapes import PANOPTIC_SHAPE_CATEGORIES, panoptic_shapes_examples
from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples
from kseg.data.yolo import read_yolo_data, read_yolo_yaml
from kseg.training.examples import LazyExamples, held_out_split


def label_map_examples(images, label_maps):
    """(pairs, examples) of an image folder and an instance label-map folder paired by stem (class 1)."""
    pairs = kdata.find_pairs(images, label_maps, (".png", ".jpg", ".jpeg", ".tif", ".tiff"), (".png", ".tif", ".tiff"))
    return pairs, LazyExamples(len(pairs), lambda i: read_instance_label_map(pairs[i][1], pairs[i][0], image_id=i))


def _shapes(make, spec):
    """The synthetic examples of a "shapes" spec and their names."""
    size = spec.image_size
    examples = make(spec.shapes, seed=spec.split_seed, image_size=size, max_instances=min(6, spec.max_instances),
                    min_size=max(4, min(size) // 8))
    return examples, [f"shapes_{i:06d}" for i in range(len(examples))]


def load_instance_splits(spec):
    """Reads and checks the data of an `InstanceDataSpec`: (train examples, val examples, categories).

    Examples are sequences of example dicts at their file size (read when indexed). Without a
    separate validation set, `kseg.data.split_pairs` holds out images by a hash of their file names.

    Raises:
        DataError (a ValueError) naming the file, the value seen and the value expected.
    """
    held_out = not (spec.val_coco_json or spec.val_label_maps)
    if spec.source == "yolo":
        return load_yolo_splits(spec)
    if spec.source == "shapes":
        (examples, names), val = _shapes(shapes_dataset_examples, spec), None
        categories = [dict(c) for c in SHAPE_CATEGORIES]
    elif spec.source == "coco":
        examples, categories = read_coco_instances(spec.coco_json, spec.images, category_names=spec.class_names,
                                                   include_crowd=True)
        names = examples.paths
        if not len(examples):
            raise kdata.DataError(f"{spec.coco_json} lists no images; expected at least 2 (training and held-out) "
                                  "images with their annotations")
        val = None if held_out else read_coco_instances(
            spec.val_coco_json, spec.val_images or spec.images, category_names=[c["name"] for c in categories],
            include_crowd=True)[0]
    else:
        categories = [{"id": 1, "name": spec.class_names[0] if spec.class_names else "object", "coco_id": None}]
        pairs, examples = label_map_examples(spec.images, spec.label_maps)
        names = [image for image, _ in pairs]
        val = None if held_out else label_map_examples(spec.val_images, spec.val_label_maps)[1]
    if val is not None:
        return examples, val, categories
    return (*held_out_split(examples, names, spec), categories)


def load_yolo_splits(spec):
    """(train, val, categories) of a YOLO data.yaml: its val split, or held-out train images when
    the yaml's val lists the train images (a model is never scored on what it trained on)."""
    config = read_yolo_yaml(spec.yolo_data)
    examples, categories = read_yolo_data(spec.yolo_data, "train")
    if config["val"] != config["train"]:
        return examples, read_yolo_data(spec.yolo_data, "val")[0], categories
    return (*held_out_split(examples, examples.paths, spec), categories)


def load_panoptic_splits(spec):
    """Reads the data of a `PanopticDataSpec`: (train examples, val examples, categories).

    Without a separate validation set, `kseg.data.split_pairs` holds out images by a hash of
    their PNG names.
    """
    if spec.source == "shapes":
        (examples, names), val = _shapes(panoptic_shapes_examples, spec), None
        categories = [dict(c) for c in PANOPTIC_SHAPE_CATEGORIES]
    else:
        examples, categories = coco_panoptic_examples(spec.panoptic_json, spec.panoptic_pngs, spec.images)
        names = examples.paths
        val = None
        if spec.val_panoptic_json:
            val, _ = coco_panoptic_examples(spec.val_panoptic_json, spec.val_panoptic_pngs, spec.val_images,
                                            categories)
    if val is not None:
        return examples, val, categories
    return (*held_out_split(examples, names, spec), categories)


def coco_panoptic_examples(json_path, png_dir, image_dir, categories=None):
    """(examples, categories) of a COCO panoptic set, read when indexed.

    Args:
        json_path, png_dir, image_dir: the JSON, its PNG folder and the image folder.
        categories: kseg categories to use (another file's); default those of this JSON.

    Raises:
        DataError: a JSON without "categories" (and no `categories` given), and everything
            `read_coco_panoptic` checks.
    """
    coco, file_categories = read_coco_panoptic(json_path, png_dir, image_dir)
    if categories is None:
        if not file_categories:
            raise kdata.DataError(f"{json_path}: no 'categories' list, expected the categories (id, name, isthing) "
                                  "of the panoptic set")
        categories = training_categories(file_categories)
    examples = LazyExamples(len(coco), lambda i: panoptic_training_example(coco[i], categories))
    examples.paths = coco.paths
    return examples, categories
