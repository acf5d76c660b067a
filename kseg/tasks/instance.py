"""The instance task: Mask R-CNN on COCO JSON, instance label maps, YOLO data or synthetic shapes.

Shape shorthand (the `kseg.data.instances` contract; D = the model's max_detections):

    example      image [H, W, 3], boxes float [N, 4] (y1, x1, y2, x2) px, classes int [N] 1..K,
                 masks uint8 [N, H, W], optional iscrowd [N], image_id
    model input  float32 [B, h, w, 3] raw pixels, (h, w) = the run's image_size
    model output boxes [B, D, 4] px, scores [B, D], classes [B, D] (0 pads), masks [B, D, h, w]
                 probabilities, num_detections [B]

Validation is scored at the model's input size: images and ground truth are resized to
`image_size` as in training; crowd regions stay in the ground truth (COCO ignores
detections on them). The score is COCO mask AP (best.keras follows val_segm_AP).
"""

from kseg.data.instances import read_coco_instances
from kseg.data.yolo import read_yolo_data
from kseg.models import model_presets
from kseg.models.mask_rcnn import MaskRCNN, TorchvisionMaskRCNN
from kseg.tasks.base import image_files
from kseg.tasks.detection import DetectionTask
from kseg.training.detection_data import label_map_examples, load_instance_splits
from kseg.training.detection_eval import ap_log_entries, evaluate_instance_model, format_ap_table
from kseg.training.detection_models import build_mask_rcnn
from kseg.training.detection_predict import predict_image, predict_instances
from kseg.training.detection_runs import load_instance_run
from kseg.training.detection_spec import InstanceDataSpec


class InstanceTask(DetectionTask):
    """Instance segmentation with Mask R-CNN: every object's class, box, mask and score."""

    name = "instance"
    spec_class = InstanceDataSpec
    models = ("mask_rcnn",)
    presets = {"mask_rcnn": model_presets("mask_rcnn")}
    builders = {"mask_rcnn": build_mask_rcnn}
    model_classes = ((MaskRCNN, TorchvisionMaskRCNN), "a MaskRCNN or TorchvisionMaskRCNN (an instance run's model)")
    monitor, score_key, score_name = "val_segm_AP", "_AP", "AP"
    data_options = ("shapes", "coco_json", "label_maps", "yolo_data", "images", "max_instances", "image_size",
                    "val_coco_json", "val_images", "val_label_maps", "val_fraction", "split_seed", "class_names")
    evaluate_options = ("images", "coco_json", "label_maps", "yolo_data")

    def make_spec(self, shapes=None, coco_json=None, label_maps=None, yolo_data=None, images=None,
                  max_instances=None, **data):
        """An `InstanceDataSpec` whose source is the one data option given (`shapes` by default:
        200 synthetic images)."""
        self.check_options(data, self.data_options, "the instance task's data")
        sources = [f"`{name}`" for name, value in (("shapes", shapes), ("coco_json", coco_json),
                                                   ("label_maps", label_maps), ("yolo_data", yolo_data))
                   if value is not None]
        if len(sources) > 1:
            raise ValueError(f"{' and '.join(sources)}: expected one instance data source")
        source = {"`coco_json`": "coco", "`label_maps`": "label_maps", "`yolo_data`": "yolo"}.get(
            sources[0] if sources else "", "shapes")
        if source == "shapes" and images:
            raise ValueError("`images` needs `coco_json` or `label_maps` (the annotations of the images)")
        return InstanceDataSpec(source=source, max_instances=32 if max_instances is None else max_instances,
                                shapes=self.shapes_or(source, shapes), coco_json=coco_json, images=images,
                                label_maps=label_maps, yolo_data=yolo_data, **data)

    def load_splits(self, spec):
        """(train examples, val examples, categories) of an `InstanceDataSpec`."""
        return load_instance_splits(spec)

    def evaluate(self, model, data, categories, batch_size=4, forward=None, verbose=0):
        """COCO mask and box AP, per class (`evaluate_instance_model`)."""
        return evaluate_instance_model(model, data, categories, batch_size, forward=forward, per_class=True,
                                       verbose=verbose)

    def log_entries(self, report):
        return ap_log_entries(report)

    def predict(self, model, image, forward=None):
        """{"boxes", "scores", "classes", "masks"} of one image in its own pixels (`predict_image`)."""
        return predict_image(model, image, forward)

    def load_run(self, run_dir):
        return load_instance_run(run_dir)

    def evaluation_examples(self, run, coco_json=None, images=None, label_maps=None, yolo_data=None):
        """The run's validation examples, or those of a COCO JSON, label maps or a YOLO data.yaml."""
        categories = run["categories"]
        if yolo_data and (coco_json or label_maps or images):
            raise ValueError("`yolo_data` names its own images and labels: expected no `images`, `coco_json` or "
                             "`label_maps`")
        if bool(coco_json or label_maps) != bool(images) or (coco_json and label_maps):
            raise ValueError("evaluating on other data needs `images` with one of `coco_json` or `label_maps`; got "
                             f"`images` {images}, `coco_json` {coco_json}, `label_maps` {label_maps}")
        if yolo_data:
            examples, found = read_yolo_data(yolo_data, "val")
            if [c["name"] for c in found] != [c["name"] for c in categories]:
                raise ValueError(f"{yolo_data}: names {[c['name'] for c in found][:8]} ({len(found)}), expected the "
                                 f"run's {len(categories)} classes in order: {[c['name'] for c in categories][:8]}")
            return examples
        if coco_json:
            return read_coco_instances(coco_json, images, category_names=[c["name"] for c in categories],
                                       include_crowd=True)[0]
        if label_maps:
            if len(categories) != 1:
                raise ValueError(f"`label_maps` hold one class; the run has {len(categories)} categories")
            return label_map_examples(images, label_maps)[1]
        return load_instance_splits(run["data"])[1]

    def predict_run(self, run_dir, images, output_dir, model_path=None, score_threshold=None, verbose=1):
        """`<stem>_instances.png` and `<stem>_instances.json` per image (`predict_instances`);
        `score_threshold` default 0.5."""
        return predict_instances(run_dir, image_files(images), output_dir,
                                 score_threshold=0.5 if score_threshold is None else score_threshold,
                                 model_path=model_path, verbose=verbose)

    def format_report(self, report):
        return format_ap_table(report)
