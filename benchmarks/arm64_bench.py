"""The ARM table: kseg's seeded ISBI U-Net (fp32, fp16, dynamic, int8) and Mask R-CNN (fp32)
on emulated cortex-a76 and cortex-a53 cores, against x86 on the same inputs.

Per model, variant and CPU: agreement with x86 (export.arm64.agreement's rule), guest
instructions per inference (deterministic: the cost measure, not emulated wall time), and
the fp32/int8 instruction ratio per CPU. Needs root on Debian (see export.arm64.root); the
first run builds the cached arm64 root (minutes), later runs reuse it.

    python benchmarks/arm64_bench.py                        # 64x64 models, both cores
    python benchmarks/arm64_bench.py --size 256 --runs 3    # the demo's input size
Writes benchmarks/results/arm64_bench.json (or --out).
"""

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, machine  # noqa: F401  (puts the repository on sys.path)

from arm64_models import export_models


def add_arguments(parser):
    parser.add_argument("--size", type=int, default=64, help="U-Net input size (default: 64)")
    parser.add_argument("--detector-size", type=int, default=64, help="Mask R-CNN input size (default: 64)")
    parser.add_argument("--no-detector", action="store_true", help="only the U-Net variants")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    parser.add_argument("--cpu", nargs="+", default=["cortex-a76", "cortex-a53"], help="emulated cores")
    parser.add_argument("--runs", type=int, default=2, help="inferences counted after the first (default: 2)")
    return parser


def measure_table(args, log=None):
    """Exports the seeded models and measures them; returns the export.arm64 report plus timings."""
    from export.arm64 import measure

    with tempfile.TemporaryDirectory(prefix="kseg-arm64-bench-") as folder:
        start = time.perf_counter()
        paths = export_models(folder, size=args.size, detector_size=args.detector_size, seed=args.seed,
                              detector=not args.no_detector)
        export_s = time.perf_counter() - start
        digests = {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in paths.items()}
        start = time.perf_counter()
        report = measure.measure([str(p) for p in paths.values()], cpu_list=args.cpu, runs=args.runs, log=log)
    report["timings"] = {"export_s": export_s, "measure_s": time.perf_counter() - start}
    report["model_sha256"] = digests
    report["settings"].update({"size": args.size, "detector_size": args.detector_size, "seed": args.seed,
                               "detector": not args.no_detector})
    return report


def main(argv=None):
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--out", default=str(RESULTS / "arm64_bench.json"), help="JSON output")
    args = parser.parse_args(argv)
    from export.arm64 import cpus, measure, root
    from kseg.utils import write_json

    try:
        report = measure_table(args)
    except (cpus.ConfigurationError, root.SetupError) as e:
        sys.exit(f"error: {e}")
    print(measure.format_report(report))
    t = report["timings"]
    print(f"export {t['export_s']:.0f} s, set-up {report['root']['setup_s']:.0f} s, emulated runs "
          f"{t['measure_s'] - report['root']['setup_s']:.0f} s")
    write_json(args.out, {"benchmark": "arm64_bench", "machine": machine(), **report})
    print(f"wrote {args.out}")
    return 0 if all(r["agree"] and not r.get("error") for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
