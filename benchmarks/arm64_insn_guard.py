"""A performance regression guard without wall time: instructions per inference on emulated ARM.

Exports kseg's seeded models (benchmarks/arm64_models.py), counts the guest instructions of
one inference of each on each emulated core (export.arm64), and compares with
benchmarks/baselines/arm64_insn.json: a count more than --tolerance (5 %) above its baseline
fails (exit 1). Counts repeat within ~0.2 %, so a 5 % step is a real change in the graph,
the converter or LiteRT's kernels, not noise. A decrease is reported; --update rewrites the
baseline (after an intended change).

    python benchmarks/arm64_insn_guard.py              # compare (exit 0 / 1)
    python benchmarks/arm64_insn_guard.py --update     # record the current counts
    python benchmarks/arm64_insn_guard.py --report benchmarks/results/arm64_bench.json
                                                       # compare a finished arm64_bench run
"""

import argparse
import json
import sys
from pathlib import Path

from common import ROOT, machine

BASELINE = ROOT / "benchmarks" / "baselines" / "arm64_insn.json"
EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2
_SAME_WHEN = ("size", "detector_size", "seed", "detector", "threads")


def counts_of(report):
    """{"model@cpu": instructions per inference} of an export.arm64 report's rows that ran."""
    return {f"{r['model']}@{r['cpu']}": r["insn_per_inference"] for r in report["rows"]
            if not r.get("error") and r.get("insn_per_inference")}


def compare(baseline, current, tolerance):
    """Rows (key, baseline, current, change, verdict) and whether any count rose above tolerance.

    A key of the baseline missing from `current` (the model failed or was not run) fails too.
    """
    rows, failed = [], False
    for key, base in sorted(baseline.items()):
        now = current.get(key)
        if now is None:
            rows.append((key, base, None, None, "MISSING"))
            failed = True
            continue
        change = now / base - 1.0
        verdict = "REGRESSION" if change > tolerance else ("improved" if change < -tolerance else "ok")
        failed |= verdict == "REGRESSION"
        rows.append((key, base, now, change, verdict))
    for key in sorted(set(current) - set(baseline)):
        rows.append((key, None, current[key], None, "new (not in the baseline)"))
    return rows, failed


def main(argv=None):
    from arm64_bench import add_arguments, measure_table

    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--baseline", default=str(BASELINE), help="baseline JSON (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed increase (default: 0.05 = 5 %%)")
    parser.add_argument("--update", action="store_true", help="rewrite the baseline with this run's counts")
    parser.add_argument("--report", help="an arm64_bench JSON to check instead of measuring now")
    args = parser.parse_args(argv)
    baseline_path = Path(args.baseline)

    if args.report:
        report = json.loads(Path(args.report).read_text())
    else:
        from export.arm64 import cpus, root

        try:
            report = measure_table(args)
        except (cpus.ConfigurationError, root.SetupError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    current = counts_of(report)
    disagreeing = [f"{r['model']}@{r['cpu']}" for r in report["rows"] if not r.get("agree")]
    settings = {k: report["settings"].get(k) for k in _SAME_WHEN}
    versions = {"qemu": report.get("qemu"), "packages": report["root"].get("packages")}

    if args.update:
        if disagreeing:
            print(f"error: not recording a baseline from rows that fail or disagree with x86: {disagreeing}",
                  file=sys.stderr)
            return EXIT_REGRESSION
        from kseg.utils import write_json

        write_json(baseline_path, {"settings": settings, "versions": versions, "machine": machine(),
                                   "model_sha256": report.get("model_sha256"), "insn_per_inference": current})
        print(f"wrote {baseline_path} ({len(current)} counts)")
        return EXIT_OK

    if not baseline_path.exists():
        print(f"error: {baseline_path}: no baseline; record one with --update", file=sys.stderr)
        return EXIT_BAD_INPUT
    baseline = json.loads(baseline_path.read_text())
    if baseline["settings"] != settings:
        print(f"error: {baseline_path} was recorded with {baseline['settings']}, this run used {settings}: "
              f"run with the same flags", file=sys.stderr)
        return EXIT_BAD_INPUT
    for name, digest in (report.get("model_sha256") or {}).items():
        if (baseline.get("model_sha256") or {}).get(name) not in (None, digest):
            print(f"note: {name} is not the file the baseline measured (the graph or its weights changed)")
    if baseline.get("versions") != versions:
        print(f"note: baseline versions {baseline.get('versions')}, now {versions}")
    rows, failed = compare(baseline["insn_per_inference"], current, args.tolerance)
    width = max(len(r[0]) for r in rows)
    print(f"{'model@cpu'.ljust(width)}  {'baseline':>14}  {'now':>14}  change   verdict")
    for key, base, now, change, verdict in rows:
        fmt = lambda v: "-" if v is None else f"{v:,.0f}"
        shown = "-" if change is None else f"{change:+.2%}"
        print(f"{key.ljust(width)}  {fmt(base):>14}  {fmt(now):>14}  {shown:>7}  {verdict}")
    if disagreeing:
        print(f"these rows fail or disagree with x86: {disagreeing}")
    print(f"{'FAILED' if failed or disagreeing else 'passed'}: tolerance {args.tolerance:.0%} increase")
    return EXIT_REGRESSION if failed or disagreeing else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
