"""Old import path of the instance-segmentation pieces, kept while its last users switch.

The code lives in `kseg.training.detection_spec` (InstanceDataSpec), `detection_data` (splits),
`detection_models` (presets), `detection_eval`, `detection_callbacks`, `detection_loop`,
`detection_runs`, `detection_predict` and `examples`; the task itself is `kseg.tasks.InstanceTask`.
"""

import types

from kseg.training.detection_data import label_map_examples, load_instance_splits, load_yolo_splits
from kseg.training.detection_eval import evaluate_instance_model, format_ap_table
from kseg.training.detection_models import build_mask_rcnn
from kseg.training.detection_predict import forward_one_image, predict_image, predict_instances
from kseg.training.detection_runs import default_model_path, load_instance_model, load_instance_run
from kseg.training.detection_spec import DEFAULT_SHAPES, InstanceDataSpec
from kseg.training.examples import LazyExamples, resize_example, resized, subset

# The three calls export/run.py and benchmarks/detector_variants.py make of the old task object.
INSTANCE_TASK = types.SimpleNamespace(load=load_instance_model, load_splits=load_instance_splits,
                                      load_run=load_instance_run)

__all__ = [
    "DEFAULT_SHAPES",
    "INSTANCE_TASK",
    "InstanceDataSpec",
    "LazyExamples",
    "build_mask_rcnn",
    "default_model_path",
    "evaluate_instance_model",
    "format_ap_table",
    "forward_one_image",
    "label_map_examples",
    "load_instance_model",
    "load_instance_run",
    "load_instance_splits",
    "load_yolo_splits",
    "predict_image",
    "predict_instances",
    "resize_example",
    "resized",
    "subset",
]
