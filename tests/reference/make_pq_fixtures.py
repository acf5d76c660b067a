"""Writes tests/fixtures/pq_adversarial.json and pq_coco.json: hotcoco's Panoptic Quality
(COCO panopticapi's rules) of the cases of tests/pq_cases.py.

Needs `pip install hotcoco` (Rust, NumPy only) and, for pq_coco.json, the COCO panoptic
sample (../shared/data/coco-panoptic-sample); no TensorFlow:

    python3 tests/reference/make_pq_fixtures.py [--data PATH]

Each fixture maps a case name to {"digest" (SHA-256 of the case's maps and tables, so a
test notices when a case changed and the fixture must be remade), "result"} with the result
in tests/pq_cases.py's canonical form.

With --check MODULE.py it writes nothing: it scores every case with that file's
`PanopticQuality` (kseg/metrics/panoptic.py, or an older version of it) and prints, case by
case, the largest |PQ - PQ reference| over all / things / stuff and whether the per-class
counts agree, e.g. to measure the code before a fix:

    git show HEAD~1:kseg/metrics/panoptic.py > /tmp/old_panoptic.py
    python3 tests/reference/make_pq_fixtures.py --check /tmp/old_panoptic.py
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile

import hotcoco

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from tests import pq_cases  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "coco-panoptic-sample")


def all_cases(data):
    """{fixture file name: {case name: case}}; the COCO cases only when `data` exists."""
    out = {"pq_adversarial.json": pq_cases.adversarial_cases()}
    if os.path.isdir(data):
        out["pq_coco.json"] = pq_cases.coco_cases(data)
    else:
        print(f"{data} is absent: pq_coco.json is not written")
    return out


def write_fixtures(data):
    for file_name, cases in all_cases(data).items():
        fixture = {"generator": "tests/reference/make_pq_fixtures.py",
                   "reference": f"hotcoco {hotcoco.__version__} (panopticapi's rules)", "cases": {}}
        with tempfile.TemporaryDirectory() as folder:
            for name, case in cases.items():
                result = pq_cases.hotcoco_result(case, os.path.join(folder, name))
                fixture["cases"][name] = {"digest": pq_cases.digest(case), "result": result}
        path = os.path.join(FIXTURES, file_name)
        with open(path, "w") as f:
            json.dump(fixture, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {path}: {len(cases)} cases, {os.path.getsize(path)} bytes")


def check(module_path, data):
    """Prints how far `module_path`'s PanopticQuality is from hotcoco on every case."""
    spec = importlib.util.spec_from_file_location("checked_panoptic", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    worst = 0.0
    with tempfile.TemporaryDirectory() as folder:
        for file_name, cases in all_cases(data).items():
            for name, case in cases.items():
                metric = module.PanopticQuality(case["categories"])
                for im in case["images"]:
                    metric.update_state(im["gt"], im["gt_info"], im["pred"], im["pred_info"])
                got = pq_cases.canonical(metric.result(), case["categories"])
                want = pq_cases.hotcoco_result(case, os.path.join(folder, name))
                gaps = [abs(got[g]["pq"] - want[g]["pq"]) for g in pq_cases.GROUPS
                        if got[g]["pq"] is not None and want[g]["pq"] is not None]
                gap = max(gaps, default=0.0)
                worst = max(worst, gap)
                problems = pq_cases.differences(got, want)
                print(f"{file_name[:-5]:<15} {name:<45} max |PQ - ref| {gap:.3g}  "
                      f"{'equal' if not problems else f'{len(problems)} differences, e.g. {problems[0]}'}")
    print(f"largest |PQ - PQ reference| over all cases and groups: {worst:.3g}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="the COCO panoptic sample folder")
    parser.add_argument("--check", metavar="MODULE.py", help="compare this panoptic.py with the reference instead")
    args = parser.parse_args()
    if args.check:
        check(args.check, args.data)
    else:
        write_fixtures(args.data)


if __name__ == "__main__":
    main()
