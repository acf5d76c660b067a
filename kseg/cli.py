"""The `kseg` command: train, evaluate, predict, demo, export, bench and demo-video.

`kseg train` trains a semantic model on image/mask folders (`--task semantic`, the default),
Mask R-CNN on instance data (`--task instance`: COCO JSON, instance label maps or synthetic
shapes) or Panoptic FPN on panoptic data (`--task panoptic`: COCO panoptic or synthetic shapes
over stuff); `kseg evaluate` and `kseg predict` read the task from the run's run.json.

TensorFlow is imported inside the subcommands that need it, so `kseg --help` is instant and
TensorFlow-free subcommands (the edge benchmark) work where only LiteRT is installed.
"""

import argparse
import importlib.util
import os
import re
import sys

from kseg.cli_args import kseg_parser


def build_parser():
    """The parser of `kseg`: the TensorFlow subcommands (kseg.cli_args) and the edge tools."""
    parser, sub = kseg_parser()
    from export.edge_cli import add_commands

    add_commands(sub)  # bench, demo-video: the TensorFlow-free edge tools
    return parser


# Options of one task only: (attribute, flag, value when not given).
_SEMANTIC_ONLY = [("masks", "--masks", None), ("num_classes", "--num-classes", None),
                  ("val_masks", "--val-masks", None), ("ignore_class", "--ignore-class", None),
                  ("remap", "--remap", None), ("channels", "--channels", 3),
                  ("native_size", "--native-size", False), ("crop_size", "--crop-size", None),
                  ("model", "--model", None), ("loss", "--loss", None), ("class_weights", "--class-weights", None),
                  ("augment_settings", "--augment", [])]
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


def _reject_other_tasks(args):
    """Refuses the data and model options of another task than --task."""
    if args.task == "semantic":
        _reject(args, _INSTANCE_ONLY, "kseg train --task semantic (they need --task instance or panoptic)")
        _reject(args, _PANOPTIC_ONLY, "kseg train --task semantic (they need --task panoptic)")
    elif args.task == "instance":
        _reject(args, _SEMANTIC_ONLY, "kseg train --task instance")
        _reject(args, _PANOPTIC_ONLY, "kseg train --task instance (they need --task panoptic)")
    else:
        semantic_only = [o for o in _SEMANTIC_ONLY if o[0] != "model"]
        _reject(args, semantic_only + [o for o in _INSTANCE_ONLY if o not in _DETECTION] + [
            ("class_names", "--class-names", None)], "kseg train --task panoptic (categories come from the data)")


def augment_option(args):
    """`train`'s `augment` from --no-augment and --augment KEY=VALUE (semantic only)."""
    if args.augment_settings and args.no_augment:
        raise ValueError("--augment and --no-augment: expected one of them, not both")
    return dict(args.augment_settings) if args.augment_settings else not args.no_augment


def cmd_train(args):
    _reject_other_tasks(args)
    from kseg import tasks

    task = tasks.get_task(args.task)
    data = {name: getattr(args, name) for name in task.data_options if getattr(args, name, None) is not None}
    if args.class_names:
        data["class_names"] = args.class_names.split(",")
    if args.native_size:
        data["image_size"] = None
    result = tasks.train(
        args.output, task=args.task, model=args.model, preset=args.model_config, model_kwargs=dict(args.settings),
        init=args.init, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        learning_rate=args.lr, schedule=args.schedule, loss=args.loss, class_weights=args.class_weights,
        augment=augment_option(args), strategy=args.strategy, cpu_replicas=args.cpu_replicas,
        lr_reference_batch=args.lr_reference_batch, mixed_precision=args.mixed_precision,
        jit_compile=args.jit_compile, time_budget=args.time_budget, seed=args.seed, verbose=0 if args.quiet else 1,
        **data,
    )
    if result["metrics"] is None:  # a worker other than the chief writes nothing
        print(f"kseg train: worker done ({args.output} is written by the chief)")
        return
    print(task.format_report(result["metrics"]))
    print(f"run folder: {args.output} (best.keras, curves.png, history.csv, metrics.json)")


_EVALUATE_DATA = ("images", "masks", "coco_json", "label_maps", "yolo_data", "panoptic_json", "panoptic_pngs")


def cmd_evaluate(args):
    from kseg import tasks

    data = {name: getattr(args, name) for name in _EVALUATE_DATA if getattr(args, name) is not None}
    report = tasks.evaluate_run(args.run, model_path=args.model, output=args.output, batch_size=args.batch_size,
                                verbose=0 if args.quiet else 1, **data)
    print(tasks.task_of_run(args.run).format_report(report))
    print(f"report: {report['output']}")


def cmd_predict(args):
    from kseg import tasks

    written = tasks.predict_run(args.run, args.inputs, args.output, model_path=args.model,
                                score_threshold=args.score_threshold, verbose=0 if args.quiet else 1)
    task = tasks.task_of_run(args.run).name
    if task == "panoptic":
        print(f"wrote {len(written['pictures'])} panoptic pictures and {written['json']} to {args.output}")
    else:
        what = "instance overlays and JSON files" if task == "instance" else "masks and overlays"
        print(f"wrote {len(written)} {what} to {args.output}")


def cmd_demo(args):
    from export.demo import run, summary_text

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


NEEDS_TENSORFLOW = ("train", "evaluate", "predict", "export", "demo", "convert", "launch")
# Library errors name Python arguments in backquotes (`val_fraction`); the command's flag of each is
# --the-name-with-dashes, except for these.
ARGUMENT_FLAGS = {"learning_rate": "--lr", "model_kwargs": "--set", "overrides": "--set", "preset": "--model-config",
                  "augment": "--augment", "model_path": "--model", "output_dir": "--output", "run_dir": "--run",
                  "split_seed": "--seed", "val_*": "--val-*"}


def flag_message(message, parser, command):
    """`message` with each `argument` of the library named as the flag of `kseg COMMAND` (arguments
    without a flag keep their name)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {o for action in sub.choices[command]._actions for o in action.option_strings}

    def flag(match):
        name = match.group(1)
        option = ARGUMENT_FLAGS.get(name, "--" + name.replace("_", "-"))
        return option if option in flags or name in ARGUMENT_FLAGS else match.group(0)

    return re.sub(r"`(\w+\*?)`", flag, message)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in NEEDS_TENSORFLOW and importlib.util.find_spec("tensorflow") is None:
        print(f'kseg {args.command} needs TensorFlow, which this install lacks: pip install "kseg[train]"',
              file=sys.stderr)
        return 2
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
        print(f"kseg {args.command}: error: {flag_message(str(e), parser, args.command)}{hint}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
