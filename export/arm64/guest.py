"""Runs inside the emulated arm64 root: loads each model with export.runtime and invokes it.

    python3 -m export.arm64.guest JOB.json

JOB.json: {"threads": T, "runs": N, "cpuinfo_result": .json path, "models": [{"name", "path",
"inputs": [.npy paths], "outputs": .npz path, "result": .json path}]}. Paths are the guest's. For model k (from 0)
the instruction-count plugin records marks with tags (see export.arm64.plugin):

    100 (k + 1) + 0   before loading (read, verify, allocate)
                + 1   inputs set
                + 2   after the first invoke
                + 3 + j  after invoke j + 2 (j = 0 .. N-1)

so loading, the first inference and each later inference each have their own count. A
model's result file is written as soon as it is done: a crash loses only the model it hit.
"""

import json
import sys
import time

import numpy as np

from export import runtime
from export.arm64.plugin import mark

TAG_STRIDE = 100


def run_model(entry, threads, runs, tag):
    """Loads, runs once, then `runs` more times; saves the first run's outputs; returns wall times."""
    arrays = [np.load(p, allow_pickle=False) for p in entry["inputs"]]
    start = time.perf_counter()
    mark(tag)
    runner = runtime.Runner(entry["path"], accelerator="cpu", num_threads=threads, runtime="interpreter")
    runner.set_inputs(*arrays)
    mark(tag + 1)
    loaded = time.perf_counter()
    runner.invoke()
    mark(tag + 2)
    first = time.perf_counter()
    outputs = runner.get_outputs()
    for j in range(runs):
        runner.invoke()
        mark(tag + 3 + j)
    done = time.perf_counter()
    repeat = runner.get_outputs()
    same = all(np.array_equal(a, b) for a, b in zip(outputs, repeat))
    np.savez(entry["outputs"], *outputs)
    runner.close()
    return {"load_s": loaded - start, "first_s": first - loaded, "runs_s": done - first, "repeat_identical": same}


def cpu_part():
    """The "CPU part" of the guest's /proc/cpuinfo (the fake one on QEMU 7.2), or None."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("CPU part"):
                return int(line.split(":")[1], 16)
    except (OSError, ValueError):
        pass
    return None


def main(argv):
    job = json.loads(open(argv[0]).read())
    with open(job["cpuinfo_result"], "w") as f:
        json.dump({"cpu_part": cpu_part()}, f)
    for k, entry in enumerate(job["models"]):
        try:
            times = run_model(entry, job["threads"], job["runs"], TAG_STRIDE * (k + 1))
            result = {"name": entry["name"], "error": None, **times}
        except Exception as e:  # reported on this model's row; the next model still runs
            result = {"name": entry["name"], "error": f"{type(e).__name__}: {e}"}
        with open(entry["result"], "w") as f:
            json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
