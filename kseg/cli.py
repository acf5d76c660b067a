"""The `kseg` command: train, evaluate, predict, demo, export, bench and demo-video.

`kseg train` trains a semantic model on image/mask folders (`--task semantic`, the default),
Mask R-CNN on instance data (`--task instance`: COCO JSON, instance label maps or synthetic
shapes) or Panoptic FPN on panoptic data (`--task panoptic`: COCO panoptic or synthetic shapes
over stuff); `kseg evaluate` and `kseg predict` read the task from the run's run.json.

TensorFlow is imported inside the subcommands that need it, so `kseg --help` is instant and
TensorFlow-free subcommands (the edge benchmark) work where only LiteRT is installed.
"""

import argparse
import ast
import json
import os
import sys


MAX_SIZE = 16384  # pixels per side: larger inputs are typos (an image of 100000^2 needs 120 GB of floats)


def _size(text):
    """"256", "256x320" or "256,320" -> (H, W)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {text!r}: expected H or HxW, e.g. 256 or 256x320") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1 or max(values) > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"image size {text!r}: expected H or HxW with ints from 1 to {MAX_SIZE}")
    return values


def _remap(text):
    """"255:1,0:0" -> {255: 1, 0: 0}."""
    try:
        return {int(k): int(v) for k, v in (item.split(":") for item in text.split(",") if item)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--remap {text!r}: expected SOURCE:TARGET pairs, e.g. 255:1,0:0") from None


def _setting(text):
    """"key=value" with a Python literal value (ints, floats, bools, lists, strings)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE, e.g. filters=32")
    key, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = {"true": True, "false": False, "none": None}.get(value.lower(), value)
    return key.strip(), parsed


def _class_weights(text):
    if text == "median_frequency":
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--class-weights {text!r}: expected median_frequency or comma-separated floats"
        ) from None


def build_parser():
    parser = argparse.ArgumentParser(prog="kseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model on image/mask folders (or instance data with --task instance)")
    t.add_argument("--task", choices=TASKS, default="semantic",
                   help="semantic (default): class masks; instance: Mask R-CNN on COCO JSON / label maps / shapes; "
                        "panoptic: Panoptic FPN on COCO panoptic / synthetic shapes over stuff")
    data = t.add_argument_group("data")
    data.add_argument("--images", help="folder of training images (semantic: required)")
    data.add_argument("--masks", help="folder of training masks, paired by file stem (semantic: required)")
    data.add_argument("--val-images", help="folder of validation images (default: hold out --val-fraction)")
    data.add_argument("--val-masks", help="folder of validation masks")
    data.add_argument("--val-fraction", type=float, default=0.2)
    data.add_argument("--num-classes", type=int, help="semantic: required")
    data.add_argument("--ignore-class", type=int, help="mask id that counts in no loss or metric (e.g. 11, 255)")
    data.add_argument("--remap", type=_remap, help="mask id remapping SOURCE:TARGET,..., e.g. 0:0,255:1")
    data.add_argument("--channels", type=int, choices=(1, 3), default=3)
    data.add_argument("--image-size", type=_size, default=(256, 256), help="H or HxW (default 256)")
    data.add_argument("--native-size", action="store_true", help="keep file sizes (no resize; use with --crop-size)")
    data.add_argument("--crop-size", type=_size, help="random training windows H or HxW, cut after resizing")
    data.add_argument("--class-names", help="comma-separated class names for reports (instance: COCO categories "
                                            "to keep, or the label maps' one class name)")
    inst = t.add_argument_group("instance data (--task instance; default: --shapes 200)")
    inst.add_argument("--coco-json", help="COCO instances JSON of the training images (with --images)")
    inst.add_argument("--val-coco-json", help="COCO instances JSON of the validation images (with --val-images)")
    inst.add_argument("--label-maps", help="folder of instance label-map PNGs, paired by stem with --images")
    inst.add_argument("--val-label-maps", help="validation label maps (with --val-images)")
    inst.add_argument("--yolo-data", help="Ultralytics YOLO segmentation data.yaml (images/, labels/*.txt polygons); "
                                          "its val split validates, or --val-fraction when val lists the train images")
    inst.add_argument("--shapes", type=int, help="N synthetic images of circles, squares, triangles (no download)")
    inst.add_argument("--max-instances", type=int, help="ground-truth instances per image (default 32)")
    inst.add_argument("--model-config", choices=("small", "mobilenet", "resnet50"),
                      help="Mask R-CNN backbone and head sizes (default small; --set overrides MaskRCNN arguments)")
    pan = t.add_argument_group("panoptic data (--task panoptic; default: --shapes 200 over sky/grass/road; "
                               "--shapes, --max-instances, --model-config and --images as above)")
    pan.add_argument("--panoptic-json", help="COCO panoptic JSON of the training images (with --panoptic-pngs, "
                                             "--images)")
    pan.add_argument("--panoptic-pngs", help="folder of its id PNGs")
    pan.add_argument("--val-panoptic-json", help="COCO panoptic JSON of the validation images (with "
                                                 "--val-panoptic-pngs, --val-images)")
    pan.add_argument("--val-panoptic-pngs", help="folder of its id PNGs")
    model = t.add_argument_group("model")
    model.add_argument("--model", default="unet", help="unet, attention_unet, residual_unet, dense_unet, mobile_unet, "
                                                       "segformer_b0..b5 (--task panoptic: panoptic_fpn, maskformer)")
    model.add_argument("--init", metavar="MODEL.keras",
                       help="fine-tune: start from this model's architecture and weights (kseg train or kseg convert "
                            "wrote it); the run's classes and size replace its own, a classifier of another class "
                            "count is left initialised")
    model.add_argument("--set", dest="settings", type=_setting, action="append", default=[],
                       metavar="KEY=VALUE", help="model constructor argument, e.g. --set filters=32 (repeatable)")
    fit = t.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=50)
    fit.add_argument("--steps-per-epoch", type=int)
    fit.add_argument("--batch-size", type=int, default=4)
    fit.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=1e-3,
                     help="peak learning rate of Adam (global batch)")
    fit.add_argument("--schedule", choices=("constant", "cosine", "poly"), default="cosine")
    fit.add_argument("--loss", choices=("ce", "weighted_ce", "dice", "ce_dice", "focal"), default="ce")
    fit.add_argument("--class-weights", type=_class_weights, help="median_frequency or w0,w1,... (weighted_ce)")
    fit.add_argument("--no-augment", action="store_true", help="(instance: no random flips)")
    fit.add_argument("--strategy", choices=("default", "mirrored", "multi-worker"), default="default",
                     help="tf.distribute: one device; mirrored: all local devices; multi-worker: the workers of "
                          "TF_CONFIG (see kseg launch). --batch-size is the global batch")
    fit.add_argument("--cpu-replicas", type=int, help="with --strategy mirrored on CPU: logical devices")
    fit.add_argument("--lr-reference-batch", type=int, metavar="N",
                     help="--lr is the rate of a global batch of N, scaled linearly to --batch-size")
    fit.add_argument("--mixed-precision", action="store_true", help="mixed_float16 compute")
    fit.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")
    fit.add_argument("--time-budget", type=float, help="stop after the epoch that ends past this many seconds")
    fit.add_argument("--seed", type=int, default=0)
    t.add_argument("--output", default="runs/latest", help="run folder (rerun the same command to resume)")
    t.add_argument("--quiet", action="store_true")

    e = sub.add_parser("evaluate", help="per-class IoU (semantic) or COCO AP (instance) of a trained run on its "
                                        "validation data (or other data)")
    e.add_argument("--run", required=True, help="run folder written by kseg train")
    e.add_argument("--model", help="model file (default: RUN/best.keras)")
    e.add_argument("--images", help="image folder (default: the run's validation data)")
    e.add_argument("--masks", help="mask folder")
    e.add_argument("--coco-json", help="instance runs: COCO instances JSON of --images")
    e.add_argument("--label-maps", help="instance runs: instance label maps paired with --images")
    e.add_argument("--yolo-data", help="instance runs: the val split of this YOLO data.yaml")
    e.add_argument("--panoptic-json", help="panoptic runs: COCO panoptic JSON of --images (with --panoptic-pngs)")
    e.add_argument("--panoptic-pngs", help="panoptic runs: folder of its id PNGs")
    e.add_argument("--output", help="JSON report (default: RUN/evaluation.json)")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--quiet", action="store_true")

    p = sub.add_parser("predict", help="write mask PNGs and colour overlays (instance runs: overlays and "
                                       "<stem>_instances.json) for images")
    p.add_argument("--run", required=True, help="run folder written by kseg train")
    p.add_argument("--model", help="model file (default: RUN/best.keras)")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--output", required=True, help="folder for <stem>_mask.png and <stem>_overlay.png (instance "
                                                   "runs: <stem>_instances.png and <stem>_instances.json)")
    p.add_argument("--score-threshold", type=float, help="instance runs: detections kept (default 0.5)")
    p.add_argument("--quiet", action="store_true")

    d = sub.add_parser("demo", help="the product on the embedded ISBI 2012 sample (no download): train a small "
                                    "U-Net, evaluate, export fp32/int8 with parity, benchmark, draw")
    d.add_argument("--output", default="kseg-demo", help="folder for the run, overlay, exports, benchmark and charts")
    d.add_argument("--epochs", type=int, default=12, help="epochs of training (default 12)")
    d.add_argument("--steps-per-epoch", type=int, default=10, help="steps per epoch, batch 4 (default 10)")
    d.add_argument("--seed", type=int, default=0, help="seeds the weights and the data order")
    d.add_argument("--threads", type=int, default=2, help="CPU threads of the benchmark (default 2)")
    d.add_argument("--quiet", action="store_true")

    x = sub.add_parser("export", help="TFLite variants (fp32/fp16/dynamic/int8) with a parity and GPU report",
                       description="Exports a trained model to TFLite and checks every variant against it on real "
                                   "images. Exit status 1 when a variant misses its parity tolerance.")
    x.add_argument("--run", help="run folder written by kseg train (gives the model, data, labels and size)")
    x.add_argument("--model", help="model file (default: RUN/best.keras)")
    x.add_argument("--output", help="folder for the .tflite files and export_report.{json,md} (default: RUN/export)")
    x.add_argument("--variants", nargs="+", default=["fp32", "fp16", "dynamic", "int8"],
                   choices=["fp32", "fp16", "dynamic", "int8"])
    x.add_argument("--image-size", type=_size, help="H or HxW of the exported input (default: the run's size)")
    x.add_argument("--images", help="parity images (default: the run's validation images)")
    x.add_argument("--masks", help="their masks, for mIoU per variant (default: the run's validation masks)")
    x.add_argument("--calibration", help="int8 calibration images (default: the run's training images, else --images)")
    x.add_argument("--num-images", type=int, default=16, help="parity images used (default 16)")
    x.add_argument("--num-calibration", type=int, default=100, help="calibration images used (default 100)")
    x.add_argument("--channels", type=int, choices=(1, 3), help="model input channels (default: the run's / model's)")
    x.add_argument("--remap", type=_remap, help="mask values to class ids (default: the run's)")
    x.add_argument("--ignore-class", type=int, help="ground-truth label the mIoU ignores (default: the run's)")
    x.add_argument("--labels", help="comma-separated class names (default: the run's)")
    x.add_argument("--input-type", choices=("uint8", "float32"), default="uint8",
                   help="uint8: the phone feeds camera pixels as they are (default); float32: raw pixels as floats")
    x.add_argument("--head", choices=("logits", "probabilities", "class_map"), default="logits",
                   help="graph outputs: logits (default; MediaPipe applies softmax), probabilities, or "
                        "class_map (class map + confidence map, computed in the graph)")
    x.add_argument("--rgb-input", action="store_true", help="a grey model takes RGB frames (converted in the graph)")
    x.add_argument("--int8-io", choices=("uint8", "float32"), default="uint8", help="int8 variant input/output type")
    x.add_argument("--allow-flex", action="store_true", help="allow select-TF (Flex) ops (phones then need the Flex library)")
    x.add_argument("--no-metadata", action="store_true", help="do not embed TFLite metadata")
    x.add_argument("--no-gpu", action="store_true", help="skip the run on LiteRT's GPU accelerator")
    x.add_argument("--name", help="model name in file names and metadata (default: the model's)")
    x.add_argument("--version", default="1", help="model version in the metadata")
    x.add_argument("--tolerance", action="append", default=[], metavar="VARIANT:KEY=VALUE",
                   help="override a parity tolerance, e.g. int8:min_agreement=0.97 (keys: max_abs_error, min_agreement; "
                        "instance and panoptic runs: max_accuracy_drop (points of mask AP / PQ), max_box_error, "
                        "min_mask_iou, min_panoptic_agreement)")
    x.add_argument("--quiet", action="store_true")

    c = sub.add_parser("convert", help="a published checkpoint (Hugging Face / NVlabs SegFormer, torchvision Mask "
                                       "R-CNN, keras-hub preset) -> a kseg .keras model",
                       description="Converts a checkpoint into a kseg .keras model, which kseg train --init fine-tunes "
                                   "and kseg export --model exports. The kind is told from the files and tensor names.")
    c.add_argument("source", help="checkpoint file (.safetensors, .pth, .bin, .npz) or folder (Hugging Face model, "
                                  "keras-hub preset)")
    c.add_argument("--output", required=True, help="the .keras file to write")
    c.add_argument("--kind", choices=("segformer", "mask_rcnn_torchvision", "keras_hub_segformer"),
                   help="the checkpoint's kind (default: told from the source)")
    c.add_argument("--image-size", type=_size, help="H or HxW the model takes (default 512)")
    c.add_argument("--num-classes", type=int, help="classes of the model (default: the checkpoint's)")
    c.add_argument("--reset-classifier", action="store_true",
                   help="SegFormer: leave the classifier initialised (with --num-classes unlike the checkpoint's)")
    c.add_argument("--set", dest="settings", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="more constructor arguments of the kseg model, e.g. --set decoder_channels=256 (repeatable)")

    la = sub.add_parser("launch", help="train on N local workers with MultiWorkerMirroredStrategy (TF_CONFIG set "
                                       "per worker), e.g. kseg launch -n 2 -- train --task instance",
                        description=launch_doc())
    la.add_argument("-n", "--num-workers", type=int, default=2, help="workers to start (default 2)")
    la.add_argument("--log-dir", default="kseg-launch-logs", help="logs of workers 1..N-1")
    la.add_argument("worker_command", nargs=argparse.REMAINDER, metavar="-- train ARGS",
                    help="the kseg train command every worker runs")

    from export.edge_cli import add_commands

    add_commands(sub)  # bench, demo-video: the TensorFlow-free edge tools
    return parser


def _version():
    from kseg import __version__

    return f"kseg {__version__}"


TASKS = ("semantic", "instance", "panoptic")

# Options of one task only: (attribute, flag, value when not given).
_SEMANTIC_ONLY = [("masks", "--masks", None), ("num_classes", "--num-classes", None),
                  ("val_masks", "--val-masks", None), ("ignore_class", "--ignore-class", None),
                  ("remap", "--remap", None), ("channels", "--channels", 3),
                  ("native_size", "--native-size", False), ("crop_size", "--crop-size", None),
                  ("model", "--model", "unet"), ("loss", "--loss", "ce"), ("class_weights", "--class-weights", None)]
_INSTANCE_ONLY = [("coco_json", "--coco-json", None), ("val_coco_json", "--val-coco-json", None),
                  ("label_maps", "--label-maps", None), ("val_label_maps", "--val-label-maps", None),
                  ("yolo_data", "--yolo-data", None), ("shapes", "--shapes", None),
                  ("max_instances", "--max-instances", None),
                  ("model_config", "--model-config", None)]
_PANOPTIC_ONLY = [("panoptic_json", "--panoptic-json", None), ("panoptic_pngs", "--panoptic-pngs", None),
                  ("val_panoptic_json", "--val-panoptic-json", None), ("val_panoptic_pngs", "--val-panoptic-pngs", None)]
_DETECTION = [("shapes", "--shapes", None), ("max_instances", "--max-instances", None),
              ("model_config", "--model-config", None)]


def _reject(args, options, what):
    given = [flag for attr, flag, unset in options if getattr(args, attr, unset) != unset]
    if given:
        raise ValueError(f"{', '.join(given)}: not an option of {what}")


def _run_task(run_dir):
    """The task a run folder was trained for: run.json's "task" ("semantic" when absent or unreadable:
    the semantic loader then names the missing or broken file)."""
    from kseg.training.spec import run_task

    return run_task(run_dir, TASKS)


def cmd_train(args):
    if args.task == "instance":
        return cmd_train_instance(args)
    if args.task == "panoptic":
        return cmd_train_panoptic(args)
    _reject(args, _INSTANCE_ONLY, "kseg train --task semantic (they need --task instance or panoptic)")
    _reject(args, _PANOPTIC_ONLY, "kseg train --task semantic (they need --task panoptic)")
    from kseg.training import DataSpec, format_table, train

    spec = DataSpec(
        images=args.images, masks=args.masks, val_images=args.val_images, val_masks=args.val_masks,
        val_fraction=args.val_fraction, num_classes=args.num_classes, ignore_class=args.ignore_class,
        remap=args.remap, channels=args.channels, image_size=None if args.native_size else args.image_size,
        crop_size=args.crop_size,
        class_names=args.class_names.split(",") if args.class_names else None, split_seed=args.seed,
    )
    result = train(
        spec, args.output, model=None if args.init and args.model == "unet" else args.model, init=args.init,
        model_kwargs=dict(args.settings), epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, learning_rate=args.lr,
        schedule=args.schedule, loss=args.loss, class_weights=args.class_weights, augment=not args.no_augment,
        time_budget=args.time_budget, seed=args.seed, verbose=0 if args.quiet else 1, **_distribution_settings(args),
    )
    _report_run(args, result, format_table)


def _report_run(args, result, format_report):
    """The metrics table of a finished run; a worker other than the chief writes nothing."""
    if result["metrics"] is None:
        print(f"kseg train: worker done ({args.output} is written by the chief)")
        return
    print(format_report(result["metrics"]))
    print(f"run folder: {args.output} (best.keras, curves.png, history.csv, metrics.json)")


def cmd_train_instance(args):
    _reject(args, _SEMANTIC_ONLY, "kseg train --task instance")
    _reject(args, _PANOPTIC_ONLY, "kseg train --task instance (they need --task panoptic)")
    from kseg.training.instance import DEFAULT_SHAPES, InstanceDataSpec, format_ap_table, train_instances

    sources = [flag for attr, flag in (("shapes", "--shapes"), ("coco_json", "--coco-json"),
                                       ("label_maps", "--label-maps"), ("yolo_data", "--yolo-data"))
               if getattr(args, attr) is not None]
    if len(sources) > 1:
        raise ValueError(f"{' and '.join(sources)}: expected one instance data source")
    source = {"--coco-json": "coco", "--label-maps": "label_maps", "--yolo-data": "yolo"}.get(
        sources[0] if sources else "", "shapes")
    if source == "shapes" and args.images:
        raise ValueError("--images needs --coco-json or --label-maps (the annotations of the images)")
    spec = InstanceDataSpec(
        source=source, image_size=args.image_size,
        max_instances=32 if args.max_instances is None else args.max_instances,
        shapes=(DEFAULT_SHAPES if args.shapes is None else args.shapes) if source == "shapes" else None,
        coco_json=args.coco_json, images=args.images, label_maps=args.label_maps, val_coco_json=args.val_coco_json,
        val_images=args.val_images, val_label_maps=args.val_label_maps, val_fraction=args.val_fraction,
        split_seed=args.seed, class_names=args.class_names.split(",") if args.class_names else None,
        yolo_data=args.yolo_data,
    )
    result = train_instances(spec, args.output, **_detection_settings(args))
    _report_run(args, result, format_ap_table)


def _detection_settings(args):
    """The training arguments `train_instances` and `train_panoptic` share, from the command line."""
    return dict(model_config=args.model_config, init=args.init, model_kwargs=dict(args.settings), epochs=args.epochs,
                steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, learning_rate=args.lr,
                schedule=args.schedule, augment=not args.no_augment, time_budget=args.time_budget, seed=args.seed,
                verbose=0 if args.quiet else 1, **_distribution_settings(args))


def _distribution_settings(args):
    """The strategy, precision and XLA arguments every training task takes."""
    return dict(strategy=args.strategy, cpu_replicas=args.cpu_replicas, mixed_precision=args.mixed_precision,
                jit_compile=args.jit_compile, lr_reference_batch=args.lr_reference_batch)


def cmd_train_panoptic(args):
    semantic_only = [o for o in _SEMANTIC_ONLY if o[0] != "model"]
    _reject(args, semantic_only + [o for o in _INSTANCE_ONLY if o not in _DETECTION] + [
        ("class_names", "--class-names", None)], "kseg train --task panoptic (categories come from the data)")
    from kseg.training.panoptic import DEFAULT_SHAPES, PanopticDataSpec, format_pq_table, train_panoptic

    files = args.panoptic_json or args.panoptic_pngs or args.images
    if files and args.shapes is not None:
        raise ValueError("--shapes and --panoptic-json/--panoptic-pngs/--images: expected one panoptic data source")
    spec = PanopticDataSpec(
        source="coco_panoptic" if files else "shapes", image_size=args.image_size,
        max_instances=32 if args.max_instances is None else args.max_instances,
        shapes=None if files else (DEFAULT_SHAPES if args.shapes is None else args.shapes),
        panoptic_json=args.panoptic_json, panoptic_pngs=args.panoptic_pngs, images=args.images,
        val_panoptic_json=args.val_panoptic_json, val_panoptic_pngs=args.val_panoptic_pngs,
        val_images=args.val_images, val_fraction=args.val_fraction, split_seed=args.seed,
    )
    model = "panoptic_fpn" if args.model == "unet" else args.model  # --model's default is the semantic one
    result = train_panoptic(spec, args.output, model=model, **_detection_settings(args))
    _report_run(args, result, format_pq_table)


def _load_model(args, run_dir):
    import keras

    import kseg.losses  # noqa: F401  (registers the serializable classes a .keras file names)
    import kseg.metrics  # noqa: F401
    import kseg.models  # noqa: F401

    path = args.model or os.path.join(run_dir, "best.keras")
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path} not found: expected a .keras file written by kseg train.")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as e:
        raise ValueError(f"cannot load model {path}: {e}; expected a .keras file written by kseg.") from e


def cmd_evaluate(args):
    task = _run_task(args.run)
    if task == "instance":
        return cmd_evaluate_instance(args)
    if task == "panoptic":
        return cmd_evaluate_panoptic(args)
    _reject(args, [("coco_json", "--coco-json", None), ("label_maps", "--label-maps", None),
                   ("yolo_data", "--yolo-data", None),
                   ("panoptic_json", "--panoptic-json", None), ("panoptic_pngs", "--panoptic-pngs", None)],
            "kseg evaluate on a semantic run")
    from kseg import data as kdata
    from kseg.training import evaluate_model, format_table, load_run
    from kseg.training.trainer import split, val_dataset, validate
    from kseg.utils import write_json

    run = load_run(args.run)
    spec = run["data"]
    model = _load_model(args, args.run)
    if args.images:
        pairs = kdata.find_pairs(args.images, args.masks or args.images)
    else:
        _, pairs = split(spec)  # the run's validation pairs
    validate(spec, pairs, "evaluation")
    dataset = val_dataset(spec, pairs, args.batch_size)
    summary = evaluate_model(model, dataset, spec.num_classes, spec.ignore_class, spec.class_names,
                             verbose=0 if args.quiet else 1)
    output = args.output or os.path.join(args.run, "evaluation.json")
    write_json(output, summary)
    print(format_table(summary))
    print(f"report: {output}")


def cmd_evaluate_instance(args):
    _reject(args, [("masks", "--masks", None), ("panoptic_json", "--panoptic-json", None),
                   ("panoptic_pngs", "--panoptic-pngs", None)],
            "kseg evaluate on an instance run (use --coco-json, --label-maps or --yolo-data)")
    from kseg.training.instance import evaluate_instance_run, format_ap_table

    report = evaluate_instance_run(args.run, model_path=args.model, coco_json=args.coco_json, images=args.images,
                                   label_maps=args.label_maps, yolo_data=args.yolo_data, output=args.output,
                                   batch_size=args.batch_size, verbose=0 if args.quiet else 1)
    print(format_ap_table(report))
    print(f"report: {report['output']}")


def cmd_evaluate_panoptic(args):
    _reject(args, [("masks", "--masks", None), ("coco_json", "--coco-json", None), ("label_maps", "--label-maps", None),
                   ("yolo_data", "--yolo-data", None)],
            "kseg evaluate on a panoptic run (use --panoptic-json, --panoptic-pngs and --images)")
    from kseg.training.panoptic import evaluate_panoptic_run, format_pq_table

    report = evaluate_panoptic_run(args.run, model_path=args.model, panoptic_json=args.panoptic_json,
                                   panoptic_pngs=args.panoptic_pngs, images=args.images, output=args.output,
                                   batch_size=args.batch_size, verbose=0 if args.quiet else 1)
    print(format_pq_table(report))
    print(f"report: {report['output']}")


def _image_files(inputs):
    exts = (".png", ".jpg", ".jpeg", ".bmp")
    files = []
    for item in inputs:
        if os.path.isdir(item):
            files += sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(exts))
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"input {item!r} is neither an image file nor a folder.")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(exts)}) in {inputs}.")
    return files


def cmd_predict(args):
    task = _run_task(args.run)
    if task == "panoptic":
        _reject(args, [("score_threshold", "--score-threshold", None)],
                "kseg predict on a panoptic run (the model's fusion thresholds apply)")
        from kseg.training.panoptic import predict_panoptic

        written = predict_panoptic(args.run, _image_files(args.inputs), args.output, model_path=args.model,
                                   verbose=0 if args.quiet else 1)
        print(f"wrote {len(written['pictures'])} panoptic pictures and {written['json']} to {args.output}")
        return
    if task == "instance":
        from kseg.training.instance import predict_instances

        threshold = 0.5 if args.score_threshold is None else args.score_threshold
        written = predict_instances(args.run, _image_files(args.inputs), args.output, score_threshold=threshold,
                                    model_path=args.model, verbose=0 if args.quiet else 1)
        print(f"wrote {len(written)} instance overlays and JSON files to {args.output}")
        return
    _reject(args, [("score_threshold", "--score-threshold", None)], "kseg predict on a semantic run")
    from kseg.training import load_run, predict_files

    run = load_run(args.run)
    spec = run["data"]
    model = _load_model(args, args.run)
    written = predict_files(
        model, _image_files(args.inputs), args.output, image_size=spec.image_size, channels=spec.channels,
        num_classes=spec.num_classes, ignore_class=spec.ignore_class, verbose=0 if args.quiet else 1,
    )
    print(f"wrote {len(written)} masks and overlays to {args.output}")


def cmd_demo(args):
    from export.demo import run, summary_text

    for flag, value in (("--epochs", args.epochs), ("--steps-per-epoch", args.steps_per_epoch),
                        ("--threads", args.threads)):
        if value < 1:
            raise ValueError(f"{flag} {value}: expected an int >= 1")
    summary = run(args.output, threads=args.threads, verbose=0 if args.quiet else 1, epochs=args.epochs,
                  steps_per_epoch=args.steps_per_epoch, seed=args.seed)
    print(summary_text(summary))


def _tolerances(items):
    """["int8:min_agreement=0.97", ...] -> {"int8": {"min_agreement": 0.97}} (export_run checks the keys)."""
    tolerances = {}
    for item in items:
        try:
            variant, rest = item.split(":", 1)
            key, value = rest.split("=", 1)
            tolerances.setdefault(variant, {})[key] = float(value)
        except ValueError:
            raise ValueError(f"--tolerance {item!r}: expected VARIANT:KEY=VALUE, e.g. int8:min_agreement=0.97") from None
    return tolerances


def cmd_export(args):
    from export.run import default_output_dir, export_run, markdown

    if not args.run and not args.model:
        raise ValueError("kseg export needs --run RUN (a folder written by kseg train) or --model FILE.keras.")
    report = export_run(
        args.run, args.output, variants=args.variants, model_path=args.model, image_size=args.image_size,
        images=args.images, masks=args.masks, calibration=args.calibration, num_images=args.num_images,
        num_calibration=args.num_calibration, channels=args.channels, remap=args.remap,
        ignore_class=args.ignore_class, labels=args.labels.split(",") if args.labels else None,
        input_type=args.input_type, head=args.head, rgb_input=args.rgb_input, int8_io=args.int8_io,
        allow_flex=args.allow_flex, metadata=not args.no_metadata, gpu=not args.no_gpu, name=args.name,
        version=args.version, tolerances=_tolerances(args.tolerance), check=False, verbose=not args.quiet,
    )
    print(markdown(report))
    print(f"files and report: {args.output or default_output_dir(args.run)}")
    return 0 if report["passed"] else 1


def cmd_convert(args):
    from kseg.weights.convert import convert

    result = convert(args.source, args.output, kind=args.kind, image_size=args.image_size,
                     num_classes=args.num_classes, reset_classifier=args.reset_classifier, **dict(args.settings))
    report = result["report"] or {}
    left = report.get("left_initialised") or report.get("initialised") or []
    print(f"{result['output']}: a {result['model']} ({result['num_classes']} classes, "
          f"{'x'.join(map(str, result['image_size']))}) from the {result['kind']} checkpoint {args.source}"
          + (f"; left initialised: {', '.join(map(str, left[:8]))}" if left else ""))


def launch_doc():
    from kseg import launch

    return launch.__doc__.split("\n\n")[0]


def cmd_launch(args):
    from kseg.launch import launch

    return launch(args.num_workers, args.worker_command, log_dir=args.log_dir)


def cmd_edge_tool(args):
    """`kseg bench` and `kseg demo-video`: the edge tools (export.edge_cli), which need no TensorFlow."""
    from export.edge_cli import run_command

    return run_command(args)


COMMANDS = {
    "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo,
    "export": cmd_export, "convert": cmd_convert, "bench": cmd_edge_tool, "demo-video": cmd_edge_tool,
    "launch": cmd_launch,
}


def _run_writer(args):
    """The lock of --run while evaluate, predict or export write into it (their default outputs
    do; `kseg.utils.run_lock`). train and demo take theirs in the library; a busy run folder
    is refused here first, before TensorFlow loads (seconds), except by a multi-worker worker
    (its chief checks and holds the lock)."""
    from kseg.utils.run_lock import check_run_folder_free, lock_if_inside

    if args.command == "train" and args.strategy != "multi-worker":
        check_run_folder_free(args.output)
    if args.command == "demo":
        check_run_folder_free(os.path.join(args.output, "run"))
    outputs = {"evaluate": lambda: args.output or os.path.join(args.run, "evaluation.json"),
               "predict": lambda: args.output,
               "export": lambda: args.output or (args.run and os.path.join(args.run, "export"))}
    output = outputs[args.command]() if args.command in outputs else None
    return lock_if_inside(getattr(args, "run", None), output)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.task == "semantic":
        missing = [flag for flag, value in (("--images", args.images), ("--masks", args.masks),
                                            ("--num-classes", args.num_classes)) if value is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)} (or pass --task instance "
                         "or --task panoptic)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kseg.utils.run_lock import RunFolderBusy

    try:
        with _run_writer(args):
            status = COMMANDS[args.command](args)
    except (ValueError, OSError) as e:
        # Bad input (or an unusable path): a one-paragraph message naming what was wrong, no traceback.
        hint = (" (Or pass --output outside the run folder: reading a run beside its training takes no lock.)"
                if isinstance(e, RunFolderBusy) and args.command in ("evaluate", "predict", "export") else "")
        print(f"kseg {args.command}: error: {e}{hint}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
