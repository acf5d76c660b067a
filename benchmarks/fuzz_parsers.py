"""Fuzzing with a count: every parser a user's file reaches, fed thousands of mutated inputs.

Each input ends as "handled" (parsed, and what came back passed the target's checks),
"clear" (the documented error type, naming the file, no traceback) or "crash" (any other
exception, an error naming no file, a failed check, a hang past the time limit, or a child
process that died). Parsers run in a spawned child process with an address-space limit
(tests/fuzzing/engine.py), so a segfault or a runaway allocation is counted, not fatal.
Writes benchmarks/results/fuzz_parsers.json and prints a table of parser x outcome counts.

    python benchmarks/fuzz_parsers.py                       # the default counts (tests/fuzzing/targets.py)
    python benchmarks/fuzz_parsers.py --count 500 --seed 1  # 500 inputs per parser
    python benchmarks/fuzz_parsers.py --targets y4m tflite --counts tflite=2000 --keep-crashes /tmp/crashes
    python benchmarks/fuzz_parsers.py --targets coco_panoptic --merge     # rerun one parser, keep the others' rows

An input is reproduced by its parser, --seed and case index (inputs are drawn in order
from random.Random(f"{seed}:{parser}")).
"""

import argparse
import json
import sys
import time

from common import RESULTS, ROOT, print_table, write_results

sys.path.insert(0, str(ROOT))

from kseg.utils.progress import ProgressBar  # noqa: E402
from tests.fuzzing.engine import OUTCOMES, Worker, fuzz  # noqa: E402
from tests.fuzzing.targets import BENCHMARK_COUNTS, TARGETS  # noqa: E402


def parse_counts(items):
    """["name=N", ...] -> {name: N}."""
    counts = {}
    for item in items or []:
        name, _, value = item.partition("=")
        if name not in TARGETS or not value.isdigit():
            raise SystemExit(f"--counts {item!r}: expected NAME=N with NAME one of {', '.join(TARGETS)}")
        counts[name] = int(value)
    return counts


def _in_order(results):
    """`results` in the order of TARGETS."""
    return {name: results[name] for name in TARGETS if name in results}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS), metavar="PARSER",
                        help=f"parsers to fuzz (default: all): {', '.join(TARGETS)}")
    parser.add_argument("--count", type=int, help="inputs per parser (default: BENCHMARK_COUNTS)")
    parser.add_argument("--counts", nargs="+", metavar="PARSER=N", help="inputs of single parsers")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the mutations (default: 0)")
    parser.add_argument("--memory-gb", type=float, default=6.0, help="address-space limit of the parsing child")
    parser.add_argument("--keep-crashes", metavar="DIR", help="copy every crashing input's files here")
    parser.add_argument("--name", default="fuzz_parsers", help="results file name (default: fuzz_parsers)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other parsers' rows of an earlier results file (each parser's inputs depend "
                             "only on --seed and its count, so a rerun of one parser replaces its row exactly)")
    args = parser.parse_args()

    counts = {name: args.count if args.count is not None else BENCHMARK_COUNTS[name] for name in args.targets}
    counts.update(parse_counts(args.counts))
    targets = {name: TARGETS[name] for name in args.targets}
    worker = Worker(memory_gb=args.memory_gb)
    start = time.perf_counter()
    command = "python benchmarks/fuzz_parsers.py " + " ".join(sys.argv[1:])

    earlier = {}
    if args.merge and (RESULTS / f"{args.name}.json").exists():
        earlier = json.loads((RESULTS / f"{args.name}.json").read_text())["parsers"]

    def save(results, complete=False):
        for name in targets:  # the parsers this command ran
            if name in results:
                results[name].update(command=command.strip(), seed=args.seed)
        results = _in_order({**earlier, **results})
        totals = {k: sum(row[k] for row in results.values()) for k in ("inputs", *OUTCOMES)}
        return write_results(args.name, {"command": command.strip(), "seed": args.seed, "memory_gb": args.memory_gb,
                                         "complete": complete, "seconds": round(time.perf_counter() - start, 1),
                                         "totals": totals, "parsers": results,
                                         "what": {n: TARGETS[n].what for n in results}})

    try:
        results = fuzz(targets, counts, seed=args.seed, worker=worker, keep_crashes=args.keep_crashes,
                       progress=lambda total: ProgressBar(total=total, desc="fuzz"), done=save)
    finally:
        worker.close()
    results = _in_order({**earlier, **results})
    rows = [{"parser": name, **{k: row[k] for k in ("inputs", *OUTCOMES, "seconds")},
             "what": TARGETS[name].what} for name, row in results.items()]
    totals = {k: sum(r[k] for r in rows) for k in ("inputs", *OUTCOMES)}
    print_table(rows + [{"parser": "total", **totals}], ["parser", "inputs", *OUTCOMES, "seconds"])
    for name, row in results.items():
        for kind, n in row["crash_kinds"].items():
            print(f"  {name} crash x{n}: {kind}")
        for note, n in row.get("notes", {}).items():
            print(f"  {name} handled x{n}: {note}")
    print(f"results: {save(results, complete=set(results) == set(TARGETS))}")
    return 1 if totals["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
