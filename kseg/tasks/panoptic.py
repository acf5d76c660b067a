"""The panoptic task: Panoptic FPN or MaskFormer on COCO panoptic data or synthetic shapes over stuff.

Categories use kseg's panoptic ids (`kseg.data.panoptic_training.training_categories`): things 1..K,
stuff K+1..K+S, each with its file id as "coco_id". Example contract (one image):

    image     [H, W, 3]; boxes, classes, masks, iscrowd: the thing segments
              (`kseg.data.instances`); semantic int32 [H, W] (0 thing, 1..S stuff, 255 void)
    panoptic  int32 [H, W] segment ids (0 void); segments {id: {"category_id", "iscrowd",
              "isthing"}}

Validation scores Panoptic Quality of the model's own fused output at its input size: ground
truth is resized nearest, and a segment that vanishes there is left out of it.
"""

from kseg.models import model_presets
from kseg.models.maskformer import MaskFormer
from kseg.models.panoptic_fpn import PanopticFPN
from kseg.tasks.base import image_files
from kseg.tasks.detection import DetectionTask
from kseg.training.detection_data import coco_panoptic_examples, load_panoptic_splits
from kseg.training.detection_eval import evaluate_panoptic_model, format_pq_table, pq_log_entries
from kseg.training.detection_models import build_maskformer, build_panoptic_fpn
from kseg.training.detection_predict import predict_panoptic, predict_panoptic_image
from kseg.training.detection_runs import load_panoptic_run
from kseg.training.detection_spec import PanopticDataSpec


class PanopticTask(DetectionTask):
    """Panoptic segmentation: a category per pixel and an id per thing (PQ, SQ, RQ)."""

    name = "panoptic"
    spec_class = PanopticDataSpec
    models = ("panoptic_fpn", "maskformer")
    presets = {name: model_presets(name) for name in ("panoptic_fpn", "maskformer")}
    builders = {"panoptic_fpn": build_panoptic_fpn, "maskformer": build_maskformer}
    model_classes = ((PanopticFPN, MaskFormer), "a panoptic run's model (PanopticFPN or MaskFormer)")
    monitor, score_key, score_name = "val_PQ", "val_PQ", "PQ"
    semantic = True
    data_options = ("shapes", "panoptic_json", "panoptic_pngs", "images", "max_instances", "image_size",
                    "val_panoptic_json", "val_panoptic_pngs", "val_images", "val_fraction", "split_seed")
    evaluate_options = ("panoptic_json", "panoptic_pngs", "images")

    def make_spec(self, shapes=None, panoptic_json=None, panoptic_pngs=None, images=None, max_instances=None,
                  **data):
        """A `PanopticDataSpec`: COCO panoptic files when given, else `shapes` synthetic images (200)."""
        self.check_options(data, self.data_options, "the panoptic task's data")
        files = panoptic_json or panoptic_pngs or images
        if files and shapes is not None:
            raise ValueError("`shapes` and `panoptic_json`/`panoptic_pngs`/`images`: expected one panoptic data "
                             "source")
        source = "coco_panoptic" if files else "shapes"
        return PanopticDataSpec(source=source, max_instances=32 if max_instances is None else max_instances,
                                shapes=self.shapes_or(source, shapes), panoptic_json=panoptic_json,
                                panoptic_pngs=panoptic_pngs, images=images, **data)

    def load_splits(self, spec):
        """(train examples, val examples, categories) of a `PanopticDataSpec`."""
        return load_panoptic_splits(spec)

    def init_expectation(self, model, preset):
        # Only Mask R-CNN runs check a preset against an --init file (as before the task interface).
        return None

    def evaluate(self, model, data, categories, batch_size=4, forward=None, verbose=0):
        """PQ, SQ and RQ (all, things, stuff, per class) of the fused output (`evaluate_panoptic_model`)."""
        return evaluate_panoptic_model(model, data, categories, batch_size, forward=forward, verbose=verbose)

    def log_entries(self, report):
        return pq_log_entries(report)

    def predict(self, model, image, forward=None):
        """(panoptic int32 [H, W], segments) of one image in its own pixels (`predict_panoptic_image`)."""
        return predict_panoptic_image(model, image, forward)

    def load_run(self, run_dir):
        return load_panoptic_run(run_dir)

    def evaluation_examples(self, run, panoptic_json=None, panoptic_pngs=None, images=None):
        """The run's validation examples, or those of another COCO panoptic set (matched by "coco_id")."""
        files = (panoptic_json, panoptic_pngs, images)
        if any(files) and not all(files):
            raise ValueError("evaluating on other data needs `panoptic_json`, `panoptic_pngs` and `images`; got "
                             f"{files}")
        if panoptic_json:
            return coco_panoptic_examples(panoptic_json, panoptic_pngs, images, run["categories"])[0]
        return load_panoptic_splits(run["data"])[1]

    def predict_run(self, run_dir, images, output_dir, model_path=None, score_threshold=None, verbose=1):
        """`<stem>_panoptic.png` per image and the COCO panoptic `panoptic.json` + PNGs (`predict_panoptic`)."""
        self.check_options({"score_threshold": score_threshold}, (),
                           "predicting with a panoptic run (the model's fusion thresholds apply)")
        return predict_panoptic(run_dir, image_files(images), output_dir, model_path=model_path, verbose=verbose)

    def format_report(self, report):
        return format_pq_table(report)
