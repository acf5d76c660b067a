"""tf.data readers for segmentation data sets and joint image + mask augmentation.

    pairs = find_pairs("camvid/train", "camvid/trainannot")
    summary = validate_pairs(pairs, num_classes=11, ignore_class=11)
    train, val = split_pairs(pairs, val_fraction=0.2, seed=0)
    ds = folder_dataset(train, image_size=(360, 480), batch_size=8, shuffle=True, seed=0,
                        augment=Augment(rot90=False, ignore_class=11), ignore_class=11)
"""

from kseg.data.augment import Augment
from kseg.data.errors import DataError
from kseg.data.folder import apply_remap, folder_dataset, remap_table, validate_pairs
from kseg.data.image_files import read_image, read_mask, resize_image
from kseg.data.split import find_pairs, split_pairs

__all__ = [
    "Augment",
    "DataError",
    "apply_remap",
    "find_pairs",
    "folder_dataset",
    "read_image",
    "read_mask",
    "remap_table",
    "resize_image",
    "split_pairs",
    "validate_pairs",
]

# Instance segmentation (Mask R-CNN): COCO JSON / label-map readers, padding, tf.data, synthetic shapes.
from kseg.data.instance_pipeline import instance_dataset, pad_instances  # noqa: E402
from kseg.data.instances import (  # noqa: E402
    CocoInstances,
    masks_to_boxes,
    read_coco_instances,
    read_instance_label_map,
)
from kseg.data.shapes import SHAPE_CATEGORIES, shapes_dataset_examples, shapes_example  # noqa: E402

__all__ += [
    "CocoInstances",
    "SHAPE_CATEGORIES",
    "instance_dataset",
    "masks_to_boxes",
    "pad_instances",
    "read_coco_instances",
    "read_instance_label_map",
    "shapes_dataset_examples",
    "shapes_example",
]

# COCO panoptic format: id = R + 256 G + 256^2 B PNGs + a JSON of segments_info.
from kseg.data.panoptic import (  # noqa: E402
    CocoPanoptic,
    check_panoptic,
    id_to_rgb,
    read_coco_panoptic,
    rgb_to_id,
    segment_stats,
    write_coco_panoptic,
)

__all__ += [
    "CocoPanoptic",
    "check_panoptic",
    "id_to_rgb",
    "read_coco_panoptic",
    "rgb_to_id",
    "segment_stats",
    "write_coco_panoptic",
]
