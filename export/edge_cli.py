"""What the edge tools' command lines share: exit codes, common flags and checks, the `kseg` subcommands.

    kseg bench ...        = python -m export.bench ...
    kseg demo-video ...   = python -m export.video ...

Each tool module has `add_arguments(parser)` (its flags) and `run(args)` (returns an exit
code); `kseg` (kseg.cli) and `python -m` both build their parsers from those two functions
here. Like the tools, this imports no TensorFlow or Keras.
"""

import argparse
import importlib
import sys
from pathlib import Path

from export.frames import InputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

# kseg subcommand -> (the tool's module, the one-line help of `kseg --help`)
COMMANDS = {
    "bench": ("export.bench", "benchmark .tflite files with LiteRT (CPU threads, GPU); needs no TensorFlow"),
    "demo-video": ("export.video", "a .tflite segmenter on a video or webcam with an AR effect; needs no TensorFlow"),
}


def add_commands(subparsers):
    """Adds every edge tool (`COMMANDS`) as a subcommand of the `kseg` parser.

    Args:
        subparsers: what `parser.add_subparsers()` returned.
    """
    for command, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        parser = subparsers.add_parser(command, help=help_text, description=module.__doc__.split("\n\n")[0])
        module.add_arguments(parser)


def run_command(args):
    """Runs the edge tool named by `args.command` (a `COMMANDS` key) with its parsed flags.

    Args:
        args: the namespace the `kseg` parser returned.

    Returns:
        The tool's exit code.
    """
    module_name, _ = COMMANDS[args.command]
    return importlib.import_module(module_name).run(args)


def main(module_name, doc, add_arguments, run, argv=None):
    """`python -m MODULE`: parses `argv` with the tool's flags and runs it.

    Args:
        module_name: the tool's module, e.g. "export.bench" (the parser's prog).
        doc: the module docstring; its first line describes the command.
        add_arguments: the tool's function that adds its flags to a parser.
        run: the tool's function that runs parsed flags and returns an exit code.
        argv: the arguments; None reads sys.argv[1:].

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {module_name}", description=doc.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_runtime_flag(parser):
    """Adds --runtime: LiteRT's Interpreter (XNNPACK, the default) or CompiledModel."""
    parser.add_argument("--runtime", choices=("interpreter", "compiled"), default="interpreter",
                        help="CPU path: LiteRT's Interpreter (XNNPACK) or CompiledModel (what LiteRT's own benchmark uses)")


def check_counts(counts):
    """InputError unless each flag's integer is None or at least its minimum.

    Args:
        counts: (flag, value, minimum) triples, e.g. ("--runs", 0, 1).
    """
    for flag, value, low in counts:
        if value is not None and value < low:
            raise InputError(f"{flag} {value}: expected an integer >= {low}")


def check_output_files(outputs):
    """InputError for an output flag that names a directory (checked before anything runs).

    Args:
        outputs: (flag, value) pairs, e.g. ("--json", "out.json"); None values are skipped.
    """
    for flag, value in outputs:
        if value and Path(value).is_dir():
            raise InputError(f"{flag} {value}: is a directory; expected a file name")


def bad_input(error):
    """Prints `error` as the one line a bad input gets; returns EXIT_BAD_INPUT."""
    print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT
