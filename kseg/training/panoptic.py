"""Old import path of the panoptic-segmentation pieces, kept while its last users switch.

The code lives in `kseg.training.detection_spec` (PanopticDataSpec), `detection_data` (splits),
`detection_models` (presets), `detection_eval`, `detection_runs` and `detection_predict`; the
task itself is `kseg.tasks.PanopticTask`.
"""

import types

from kseg.training.detection_data import coco_panoptic_examples, load_panoptic_splits
from kseg.training.detection_eval import evaluate_panoptic_model, format_pq_table, predicted_segments
from kseg.models import model_presets
from kseg.training.detection_models import build_maskformer, build_panoptic_fpn
from kseg.training.detection_predict import predict_panoptic, predict_panoptic_image
from kseg.training.detection_runs import load_panoptic_model, load_panoptic_run
from kseg.training.detection_spec import DEFAULT_SHAPES, PanopticDataSpec

MASKFORMER_CONFIGS = model_presets("maskformer")  # (benchmarks/camvid_segformer.py)
# The three calls export/run.py and benchmarks/detector_variants.py make of the old task object.
PANOPTIC_TASK = types.SimpleNamespace(load=load_panoptic_model, load_splits=load_panoptic_splits,
                                      load_run=load_panoptic_run)

__all__ = [
    "DEFAULT_SHAPES",
    "MASKFORMER_CONFIGS",
    "PANOPTIC_TASK",
    "PanopticDataSpec",
    "build_maskformer",
    "build_panoptic_fpn",
    "coco_panoptic_examples",
    "evaluate_panoptic_model",
    "format_pq_table",
    "load_panoptic_model",
    "load_panoptic_run",
    "load_panoptic_splits",
    "predict_panoptic",
    "predict_panoptic_image",
    "predicted_segments",
]
