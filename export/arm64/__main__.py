"""`python -m export.arm64`: the ARM table of `.tflite` models on emulated ARM64 cores.

Exit codes: 0 every model ran on every core and agreed with x86; 1 a row failed or
disagreed; 2 bad input, a refused configuration or a host that cannot run the set-up.
"""

import argparse
import sys

from export.arm64 import cpus
from export.edge_cli import EXIT_FAILED, EXIT_OK, bad_input


def add_arguments(parser):
    """The command's flags on an argparse parser."""
    parser.add_argument("models", nargs="*", metavar="MODEL.tflite", help=".tflite files (none with --setup-only)")
    parser.add_argument("--cpu", nargs="+", default=list(cpus.DEFAULT_CPUS), metavar="CPU",
                        help=f"emulated cores, QEMU -cpu names (default: {' '.join(cpus.DEFAULT_CPUS)}; known: "
                             f"{', '.join(cpus.CPUS)})")
    parser.add_argument("--runs", type=int, default=2, metavar="N",
                        help="inferences counted after the first (default: 2)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="LiteRT threads on both sides (default: 1; more makes instruction counts vary)")
    parser.add_argument("--image", metavar="FILE", help="image for image models (default: the embedded ISBI sample)")
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS", help="limit per guest process")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--setup-only", action="store_true", help="build (or check) the cached root and stop")
    return parser


def run(models, cpu_list, runs=2, threads=1, image=None, timeout=3600.0, json_path=None):
    """Measures, prints the ARM table, writes JSON; returns the exit code."""
    from export.arm64 import measure, root
    from export.runtime import ModelFileError

    try:
        report = measure.measure(models, cpu_list, runs=runs, threads=threads, image=image, timeout=timeout)
    except (cpus.ConfigurationError, root.SetupError, ModelFileError, ValueError, OSError) as e:
        return bad_input(e)
    print(measure.format_report(report))
    if json_path:
        from kseg.utils import write_json

        write_json(json_path, report)
    ok = all(r["agree"] and not r.get("error") for r in report["rows"])
    return EXIT_OK if ok else EXIT_FAILED


def main(argv=None):
    parser = add_arguments(argparse.ArgumentParser(prog="python -m export.arm64", description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    if args.setup_only:
        import time

        from export.arm64 import root

        start = time.perf_counter()
        try:
            built = root.ensure_root()
        except root.SetupError as e:
            return bad_input(e)
        state = "built" if built.built_now else "cached"
        print(f"arm64 root {built.path} ({state}) in {time.perf_counter() - start:.1f} s")
        return EXIT_OK
    if not args.models:
        parser.error("give one or more .tflite models (or --setup-only)")
    return run(args.models, args.cpu, args.runs, args.threads, args.image, args.timeout, args.json)


if __name__ == "__main__":
    sys.exit(main())
