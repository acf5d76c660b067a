"""`kseg demo-video`: a `.tflite` segmenter or detector on every frame of a video, drawn as an AR-style effect.

    kseg demo-video --model unet.tflite --input clip.mp4 --output out.mp4 --effect blur
    kseg demo-video --model unet.tflite --input 0 --output webcam.y4m --max-frames 300
    kseg demo-video --model RUN/export/mask_rcnn_int8.tflite --input clip.mp4 --output out.mp4
    kseg demo-video --model RUN/export/mask_rcnn_fp16.gpu --gpu --input clip.mp4 --output out.mp4
    python -m export.video ...                         (the same flags)

LiteRT only, like export.bench: no TensorFlow, no Keras. YUV4MPEG2 (.y4m) files are read and
written natively; other files and webcams go through the `ffmpeg` binary in pipes (rawvideo
rgb24). The output appears atomically: frames go to a temporary file that is renamed when the
video is complete, so an error or Ctrl-C leaves no partial file and any previous output
untouched. From a webcam, Ctrl-C ends the recording instead, and the video so far is kept.

Frames are read and written by export.video_io; `write_y4m` and `open_writer` are importable
from here too. Effects (export.effects.apply_effect; the web demo draws the same ones in the
browser), with class 0 as the background: blur (the background blurred), replace (by a colour
or an image), classes (class colours over the frame), outlines (each region's outline and label).
A kseg detector (Mask R-CNN, Panoptic FPN, MaskFormer; any exported variant) is drawn by
export.video_detections instead: instances (each detection's mask in its own colour, with its
box and label; the default for Mask R-CNN) or panoptic (stuff by category, things by instance,
outlined; the default for Panoptic FPN and MaskFormer), with class names from --labels or the
run's categories beside the model. --model also takes a detector's GPU package (the
`NAME_VARIANT.gpu/` folder `kseg export` writes): its parts run in turn as one model, and with
--gpu its GPU parts run on LiteRT's GPU accelerator (SwiftShader where there is no GPU).

Exit codes: 0 done; 1 the --json file could not be written; 2 bad input (model, video,
flags), reported as one line; 130 interrupted (the output is not written).
"""

import array
import contextlib
import signal
import sys
import time
from pathlib import Path

import numpy as np

from export import runtime
from export.edge_cli import (
    EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, add_runtime_flag, bad_input, check_counts,
    check_output_files,
)
from export.edge_cli import main as tool_main
from export.effects import DEFAULT_BACKGROUND, EFFECTS, apply_effect, color_or_image
from export.frames import InputError, class_count, image_input, normalization, prepare_image, probabilities
from export.measure import describe_machine, summarize
from export.video_detections import (
    DETECTOR_EFFECTS, INSTANCE_OUTPUTS, PANOPTIC_OUTPUTS, SCORE_THRESHOLD, check_shapes, detector_effects,
    draw_instances, draw_panoptic, instances_at, named_outputs, object_count, panoptic_at, read_categories,
)
from export.video_io import X264_CONTAINERS, ffmpeg_binary, is_webcam, open_video, open_writer, write_y4m

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "STAGES", "add_arguments", "format_summary",
           "main", "open_writer", "run", "write_y4m"]

STAGES = ("decode", "preprocess", "inference", "postprocess", "effect", "encode")


def add_arguments(parser):
    """Adds demo-video's flags to an argparse parser (`python -m export.video`, `kseg demo-video`)."""
    parser.add_argument("--model", required=True, metavar="MODEL.tflite",
                        help="an exported kseg segmenter or detector (Mask R-CNN, Panoptic FPN, MaskFormer), or a "
                        "detector's GPU package folder (NAME.gpu)")
    parser.add_argument("--input", required=True, metavar="FILE|0",
                        help="a video file (.y4m natively, others with ffmpeg) or a webcam: 0, 1, ... or /dev/videoN")
    parser.add_argument("--output", required=True, metavar="OUT.y4m|OUT.mp4",
                        help="the video with the effect: .y4m natively, .mp4 (H.264) or any extension ffmpeg writes")
    parser.add_argument("--effect", choices=EFFECTS + DETECTOR_EFFECTS,
                        help="segmenters: blur (default for 2 classes), replace, classes (default), outlines; "
                        "detectors: instances (default for Mask R-CNN), panoptic (Panoptic FPN, MaskFormer)")
    parser.add_argument("--labels", metavar="NAMES|FILE.json",
                        help="detectors: class names for ids 1, 2, ... (circle,square) or a kseg run.json (default: "
                        "the categories of export_report.json or run.json beside the model, or run.json one folder up)")
    parser.add_argument("--score-threshold", type=float, metavar="S",
                        help=f"instances: detections scoring below S are not drawn (default {SCORE_THRESHOLD})")
    parser.add_argument("--background", metavar="COLOR|IMAGE",
                        help="for --effect replace: a colour (#00b140, 0,177,64, green) or an image file (default green)")
    parser.add_argument("--threads", type=int, default=2, metavar="N", help="CPU threads for LiteRT (default: 2)")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    parser.add_argument("--gpu", action="store_true",
                        help="run on LiteRT's GPU accelerator (a package: its GPU parts), with CPU fallback")
    add_runtime_flag(parser)
    parser.add_argument("--json", metavar="FILE", help="write the timings as JSON")
    parser.add_argument("--timings", metavar="FILE.csv",
                        help="write each frame's stage times (ms) as CSV, one line per frame as it goes")
    return parser


def main(argv=None):
    """`python -m export.video`: runs demo-video on `argv` (default: sys.argv[1:]); returns the exit code."""
    return tool_main("export.video", __doc__, add_arguments, run, argv)


def run(args):
    """Runs demo-video as parsed `args` describe; returns the exit code (0, 1, 2 or 130)."""
    from kseg.utils import write_json

    try:
        plan = _plan(args)
    except ValueError as e:  # InputError, runtime.ModelFileError, a model LiteRT cannot run
        return bad_input(e)
    try:
        with plan["reader"]:
            result = _process(plan, args)
    except InputError as e:  # a corrupt frame, an output ffmpeg cannot write
        return bad_input(e)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {args.output} was not written (a previous file of that name is untouched)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        plan["runner"].close()
    print(format_summary(result))
    if args.json:
        try:
            write_json(args.json, result)
        except (OSError, ValueError) as e:
            print(f"error: cannot write {args.json}: {e}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def _plan(args):
    """Validates the flags, reads the model and opens the input; InputError names what is wrong."""
    check_counts((("--threads", args.threads, 1), ("--max-frames", args.max_frames, 1)))
    check_output_files((("--output", args.output), ("--json", args.json), ("--timings", _timings_path(args))))
    if Path(args.output).suffix.lower() != ".y4m":
        try:
            ffmpeg_binary()
        except InputError as e:
            raise InputError(f"--output {args.output}: {e}") from None
    if not is_webcam(args.input) and Path(args.input).resolve() == Path(args.output).resolve():
        raise InputError(f"--output {args.output}: is the --input file; expected another file name")
    try:
        model = runtime.describe_path(args.model)
    except runtime.ModelFileError as e:
        raise InputError(f"--model {e}") from None
    detail, why = image_input(model)
    if detail is None:
        raise InputError(f"--model {args.model}: {why}; expected one image input [1, H, W, C]")
    metadata = model["metadata"] or {}
    detector = _detector_plan(args, model, detail)
    if detector is not None:
        effect, num_classes = detector["effect"], None
    else:
        _check_segmenter(args, model)
        num_classes = class_count(model)
        effect = args.effect or ("blur" if num_classes == 2 else "classes")
    background = DEFAULT_BACKGROUND
    if args.background is not None:
        if effect != "replace":
            raise InputError(f"--background {args.background}: only --effect replace uses it; the effect is {effect}")
        try:
            background = color_or_image(args.background)
        except InputError as e:
            raise InputError(f"--background {e}") from None
    try:
        reader = open_video(args.input)
    except InputError as e:
        raise InputError(f"--input {e}") from None
    try:
        if Path(args.output).suffix.lower() in (".y4m",) + X264_CONTAINERS and (reader.width % 2 or reader.height % 2):
            raise InputError(f"--input {args.input}: the frames are {reader.width}x{reader.height}; the output's "
                             "4:2:0 chroma needs an even width and height (crop or scale the video by one pixel)")
        if np.ndim(background) == 3:  # an image: resized to the frame once
            from PIL import Image

            background = np.asarray(Image.fromarray(background).resize((reader.width, reader.height), Image.BILINEAR))
        gpu = getattr(args, "gpu", False)  # a Namespace built without add_arguments may lack it
        if gpu:
            runtime.enable_gpu_emulation()
        runner = runtime.open_model(args.model, accelerator="gpu" if gpu else "cpu", num_threads=args.threads,
                                    runtime=args.runtime)
    except BaseException:
        reader.close()
        raise
    return {"model": model, "detail": detail, "metadata": metadata, "num_classes": num_classes, "effect": effect,
            "background": background, "reader": reader, "runner": runner, "detector": detector}


def _detector_plan(args, model, detail):
    """What drawing a kseg detector takes (its effect, output names, categories), or None for a segmenter."""
    if model["signatures"] > 1:
        raise InputError(f"--model {args.model}: {model['signatures']} signatures; expected one (a model exported "
                         "at batch 1)")
    indices = model["signature_outputs"]
    supported = detector_effects(indices, f"--model {args.model}")
    if not supported:
        return None
    if "panoptic" not in supported:
        kind = "Mask R-CNN"
    elif "instances" in supported:
        kind = "Panoptic FPN"
    else:
        kind = "MaskFormer" if "class_probs" in indices else "panoptic model"
    effect = args.effect or supported[-1]
    if effect not in supported:
        raise InputError(f"--effect {effect}: {args.model} is a {kind}; expected --effect {' or '.join(supported)}")
    given = getattr(args, "score_threshold", None)  # a Namespace built without add_arguments may lack it
    threshold = SCORE_THRESHOLD if given is None else given
    if given is not None and (effect != "instances" or not 0.0 <= threshold <= 1.0):
        raise InputError(f"--score-threshold {given}: expected a score in [0, 1] with --effect "
                         f"instances (the effect is {effect})")
    names = INSTANCE_OUTPUTS if effect == "instances" else PANOPTIC_OUTPUTS
    indices = {k: indices[k] for k in names}
    by_index = {int(d["index"]): d for d in model["outputs"]}
    check_shapes({k: by_index[i] for k, i in indices.items()}, detail["shape"][1:3], f"--model {args.model}")
    categories, source = read_categories(args.model, getattr(args, "labels", None))
    return {"effect": effect, "kind": kind, "outputs": indices, "categories": categories, "labels_from": source,
            "score_threshold": threshold}


def _check_segmenter(args, model):
    """InputError for a segmenter given detector flags, or with outputs that are no segmentation."""
    outputs = model["outputs"]
    shapes = [list(d["shape"]) for d in outputs]
    if len(outputs) > 2 or any(len(s) not in (3, 4) or s[0] != 1 for s in shapes):
        raise InputError(f"--model {args.model}: outputs of shapes {shapes}; expected a segmenter's scores "
                         "[1, H, W, K] or class map [1, H, W] (+ confidence), or a kseg detector's named outputs")
    for flag, value in (("--labels", getattr(args, "labels", None)),
                        ("--score-threshold", getattr(args, "score_threshold", None))):
        if value is not None:
            raise InputError(f"{flag} {value}: only detectors use it; {args.model} is a segmenter")
    if args.effect in DETECTOR_EFFECTS:
        raise InputError(f"--effect {args.effect}: {args.model} is a segmenter (outputs {shapes}); expected one of "
                         f"{', '.join(EFFECTS)}")


def _timings_path(args):
    return getattr(args, "timings", None)  # a Namespace built without add_arguments may lack it


@contextlib.contextmanager
def _timings_log(path):
    """Yields a function that writes a frame's index, its end (seconds since the epoch), the process's
    CPU time in it (all threads) and its stage seconds as a CSV line of ms; it does nothing without `path`."""
    if not path:
        yield lambda index, seconds, cpu: None
        return
    try:
        log = open(path, "w", encoding="utf-8")
    except OSError as e:
        raise InputError(f"--timings {path}: cannot write it: {e.strerror or e}") from None
    with log:
        log.write(",".join(("frame", "time_s", "cpu_ms", *(f"{stage}_ms" for stage in STAGES))) + "\n")
        yield lambda index, seconds, cpu: log.write(
            f"{index},{time.time():.6f},{cpu * 1000.0:.4f}," + ",".join(f"{s * 1000.0:.4f}" for s in seconds) + "\n")


@contextlib.contextmanager
def _ctrl_c_stops(live):
    """Yields a list that a first Ctrl-C appends to when `live` (a webcam: the recording ends
    after the current frame and is kept); a second Ctrl-C interrupts as usual."""
    stop, previous = [], signal.getsignal(signal.SIGINT)
    if not live:
        yield stop
        return

    def on_ctrl_c(*_):
        stop.append(True)
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, on_ctrl_c)
    print("recording from the webcam: Ctrl-C stops (the video so far is kept)", file=sys.stderr)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _process(plan, args):
    """Reads, segments, draws and writes every frame; returns the figures `format_summary` prints."""
    from PIL import Image

    from kseg.utils import ProgressBar, atomic_path

    reader, runner, detail, metadata = plan["reader"], plan["runner"], plan["detail"], plan["metadata"]
    limit = args.max_frames or float("inf")
    total = min(reader.frames, limit) if reader.frames is not None else args.max_frames
    labels, norm = metadata.get("labels") or None, normalization(metadata)
    activation = metadata.get("activation")
    detector, objects = plan["detector"], array.array("l")
    size = (reader.height, reader.width)
    if detector is None:
        def postprocess(outputs):
            return probabilities(outputs, runner.outputs, activation, plan["num_classes"])

        def draw(frame, scores):
            return apply_effect(frame, scores, plan["effect"], labels=labels, background=plan["background"])
    else:
        def postprocess(outputs):
            named = named_outputs(outputs, runner.outputs, detector["outputs"])
            if plan["effect"] == "instances":
                drawn = instances_at(named, size, detector["score_threshold"])
            else:
                drawn = panoptic_at(named, size)
            objects.append(object_count(drawn))
            return drawn

        def draw(frame, drawn):
            if plan["effect"] == "instances":
                return draw_instances(frame, drawn, detector["categories"])
            return draw_panoptic(frame, drawn, detector["categories"])
    seconds = {stage: array.array("d") for stage in STAGES}  # 8 bytes a frame and stage: a webcam runs for hours
    start = time.perf_counter()
    with atomic_path(args.output) as tmp, open_writer(tmp, reader.width, reader.height, reader.fps, args.output) as writer:
        with (ProgressBar(total, desc="demo-video") as bar, _ctrl_c_stops(reader.live) as stop,
              _timings_log(_timings_path(args)) as log_frame):
            decoded = iter(reader)
            while writer.count < limit and not stop:
                t0, cpu0 = time.perf_counter(), time.process_time()
                frame = next(decoded, None)
                if frame is None:
                    break
                t1 = time.perf_counter()
                x = prepare_image(Image.fromarray(frame), detail, norm)
                t2 = time.perf_counter()
                outputs = runner.run(x)
                t3 = time.perf_counter()
                scores = postprocess(outputs)
                t4 = time.perf_counter()
                picture = draw(frame, scores)
                t5 = time.perf_counter()
                writer.write(picture)
                t6 = time.perf_counter()
                frame_seconds = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)
                for stage, s in zip(STAGES, frame_seconds):
                    seconds[stage].append(s)
                log_frame(writer.count - 1, frame_seconds, time.process_time() - cpu0)
                bar.update()
        if writer.count == 0:
            raise InputError(f"--input {args.input}: no frames to read")
    wall = time.perf_counter() - start  # includes the encoder's flush and the rename
    stages = {stage: summarize(s) for stage, s in seconds.items()}
    n = writer.count
    result = {"tool": "export.video", "model": args.model, "input": args.input, "output": args.output,
            "effect": plan["effect"], "runtime": args.runtime, "threads": args.threads, "frames": n,
            "accelerator": runner.accelerator, "fully_accelerated": runner.fully_accelerated,
            "package": plan["model"]["package"],
            "video_size": [reader.width, reader.height], "video_fps": float(reader.fps),
            "model_input": {"shape": list(detail["shape"]), "dtype": detail["dtype"]},
            "inference_median_ms": stages["inference"]["p50_ms"], "inference_p90_ms": stages["inference"]["p90_ms"],
            "inference_fps": n / sum(seconds["inference"]), "end_to_end_fps": n / wall, "wall_s": wall,
            "stages_ms": stages, "machine": describe_machine()}
    if detector is not None:
        result["detector"] = {"model": detector["kind"], "labels_from": detector["labels_from"],
                              "score_threshold": detector["score_threshold"] if plan["effect"] == "instances" else None,
                              "objects_per_frame": {"median": float(np.median(objects)), "max": int(max(objects)),
                                                    "frames_with_objects": int(sum(n > 0 for n in objects))}}
    return result


def format_summary(result):
    """The human-readable summary printed on stdout."""
    _, h, w, c = result["model_input"]["shape"]
    width, height = result["video_size"]
    lines = [f"{result['frames']} frames of {width}x{height} from {result['input']} -> {result['output']} "
             f"(effect {result['effect']})",
             f"model {result['model']}: input {h}x{w}x{c} {result['model_input']['dtype']}, "
             f"cpu x{result['threads']} {result['runtime']}" + _accelerator_line(result),
             "stage        median ms  p90 ms"]
    lines += [f"{stage:<12} {s['p50_ms']:>9.2f}  {s['p90_ms']:>6.2f}" for stage, s in result["stages_ms"].items()]
    if "detector" in result:
        d = result["detector"]
        lines.append(f"{d['model']}: {d['objects_per_frame']['median']:g} {result['effect']} drawn per frame (median), "
                     f"class names from {d['labels_from']}")
    lines += [f"inference only: {result['inference_fps']:.1f} FPS (median {result['inference_median_ms']:.2f} ms, "
              f"p90 {result['inference_p90_ms']:.2f} ms)",
              f"end to end:     {result['end_to_end_fps']:.1f} FPS (decode + preprocess + inference + effect + "
              f"encode; {result['frames']} frames in {result['wall_s']:.2f} s)"]
    return "\n".join(lines)


def _accelerator_line(result):
    """", GPU package of N parts, GPU accelerator (every GPU op on it)" or "" for a CPU run of a file."""
    package = result.get("package")
    text = f", GPU package of {len(package['parts'])} parts ({package['crossings']} crossings)" if package else ""
    if result.get("accelerator") == "gpu":
        text += ", GPU accelerator (" + ("every op on it" if result["fully_accelerated"] else "some ops on the CPU") + ")"
    return text


if __name__ == "__main__":
    sys.exit(main())
