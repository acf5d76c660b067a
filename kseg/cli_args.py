"""The command line of `kseg`: the subcommands, their flags and the parsing of flag values.

kseg.cli builds on it (adding the TensorFlow-free edge tools) and calls kseg's Python API with
the parsed values; nothing here imports TensorFlow.
"""

import argparse
import ast

DESCRIPTION = "The `kseg` command: train, evaluate, predict, demo, export, bench and demo-video."
TASKS = ("semantic", "instance", "panoptic")

MAX_SIZE = 16384  # pixels per side: larger inputs are typos (an image of 100000^2 needs 120 GB of floats)


def parse_size(text):
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


def parse_remap(text):
    """"255:1,0:0" -> {255: 1, 0: 0}."""
    try:
        return {int(k): int(v) for k, v in (item.split(":") for item in text.split(",") if item)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--remap {text!r}: expected SOURCE:TARGET pairs, e.g. 255:1,0:0") from None


def parse_setting(text):
    """"key=value" with a Python literal value (ints, floats, bools, lists, strings)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE, e.g. filters=32")
    key, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = {"true": True, "false": False, "none": None}.get(value.lower(), value)
    return key.strip(), parsed


def parse_class_weights(text):
    if text == "median_frequency":
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--class-weights {text!r}: expected median_frequency or comma-separated floats"
        ) from None


def kseg_parser():
    """The parser of `kseg` and its TensorFlow subcommands: (parser, its subparsers), to which
    kseg.cli adds the edge tools."""
    parser = argparse.ArgumentParser(prog="kseg", description=DESCRIPTION)
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
    data.add_argument("--remap", type=parse_remap, help="mask id remapping SOURCE:TARGET,..., e.g. 0:0,255:1")
    data.add_argument("--channels", type=int, choices=(1, 3), default=3)
    data.add_argument("--image-size", type=parse_size, default=(256, 256), help="H or HxW (default 256)")
    data.add_argument("--native-size", action="store_true", help="keep file sizes (no resize; use with --crop-size)")
    data.add_argument("--crop-size", type=parse_size, help="random training windows H or HxW, cut after resizing")
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
    model.add_argument("--model", help="unet (default), attention_unet, residual_unet, dense_unet, mobile_unet, "
                                       "segformer_b0..b5 (--task panoptic: panoptic_fpn (default), maskformer)")
    model.add_argument("--init", metavar="MODEL.keras",
                       help="fine-tune: start from this model's architecture and weights (kseg train or kseg convert "
                            "wrote it); the run's classes and size replace its own, a classifier of another class "
                            "count is left initialised")
    model.add_argument("--set", dest="settings", type=parse_setting, action="append", default=[],
                       metavar="KEY=VALUE", help="model constructor argument, e.g. --set filters=32 (repeatable)")
    fit = t.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=50)
    fit.add_argument("--steps-per-epoch", type=int)
    fit.add_argument("--batch-size", type=int, default=4)
    fit.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=1e-3,
                     help="peak learning rate of Adam (global batch)")
    fit.add_argument("--schedule", choices=("constant", "cosine", "poly"), default="cosine")
    fit.add_argument("--loss", choices=("ce", "weighted_ce", "dice", "ce_dice", "focal"), help="default ce")
    fit.add_argument("--class-weights", type=parse_class_weights, help="median_frequency or w0,w1,... (weighted_ce)")
    fit.add_argument("--no-augment", action="store_true", help="(instance: no random flips)")
    fit.add_argument("--augment", dest="augment_settings", type=parse_setting, action="append", default=[],
                     metavar="KEY=VALUE", help="semantic: an argument of kseg.data.Augment replacing its default, e.g. "
                                               "--augment rot90=False --augment elastic_prob=0 for upright photos "
                                               "(repeatable)")
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
    x.add_argument("--image-size", type=parse_size, help="H or HxW of the exported input (default: the run's size)")
    x.add_argument("--images", help="parity images (default: the run's validation images)")
    x.add_argument("--masks", help="their masks, for mIoU per variant (default: the run's validation masks)")
    x.add_argument("--calibration", help="int8 calibration images (default: the run's training images, else --images)")
    x.add_argument("--num-images", type=int, default=16, help="parity images used (default 16)")
    x.add_argument("--num-calibration", type=int, default=100, help="calibration images used (default 100)")
    x.add_argument("--channels", type=int, choices=(1, 3), help="model input channels (default: the run's / model's)")
    x.add_argument("--remap", type=parse_remap, help="mask values to class ids (default: the run's)")
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
    c.add_argument("--image-size", type=parse_size, help="H or HxW the model takes (default 512)")
    c.add_argument("--num-classes", type=int, help="classes of the model (default: the checkpoint's)")
    c.add_argument("--reset-classifier", action="store_true",
                   help="SegFormer: leave the classifier initialised (with --num-classes unlike the checkpoint's)")
    c.add_argument("--set", dest="settings", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="more constructor arguments of the kseg model, e.g. --set decoder_channels=256 (repeatable)")

    la = sub.add_parser("launch", help="train on N local workers with MultiWorkerMirroredStrategy (TF_CONFIG set "
                                       "per worker), e.g. kseg launch -n 2 -- train --task instance",
                        description=_launch_doc())
    la.add_argument("-n", "--num-workers", type=int, default=2, help="workers to start (default 2)")
    la.add_argument("--log-dir", default="kseg-launch-logs", help="logs of workers 1..N-1")
    la.add_argument("worker_command", nargs=argparse.REMAINDER, metavar="-- train ARGS",
                    help="the kseg train command every worker runs")

    return parser, sub


def _version():
    from kseg import __version__

    return f"kseg {__version__}"



def _launch_doc():
    from kseg import launch

    return launch.__doc__.split("\n\n")[0]
