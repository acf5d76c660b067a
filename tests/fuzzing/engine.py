"""The fuzzer's engine: a parser runs in a child process, every input ends in one outcome.

Outcomes:

    handled  the parser accepted the input and what it returned passed the target's checks
    clear    the parser refused it with one of the target's documented error types (a
             `ValueError` subclass: `DataError`, `ModelFileError`, `InputError`, ...), whose
             message names the file (or the argument) and carries no traceback
    crash    anything else: another exception type, an error that names no file, a check of
             the returned value that failed, a child process that died (segfault, abort, out
             of memory) or ran past the time limit

The parser runs in a long-lived "spawn" child (`Worker`) with an address-space limit, so a
segfault in native code, a runaway allocation or a hang is counted and the child restarted,
instead of taking the fuzzer down. The parent generates the inputs and imports no TensorFlow.
"""

import multiprocessing
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

OUTCOMES = ("handled", "clear", "crash")
ROOT = Path(__file__).resolve().parents[2]


class Target:
    """One parser under fuzzing.

    Args:
        name: short name (a table row).
        what: what is fuzzed, for the report.
        seeds: fn(folder Path) -> picklable seeds; runs in the worker (it may need TensorFlow).
        make_case: fn(rng, seeds, folder Path) -> case dict; runs in the parent and writes the
            input files into `folder`. The case's "names" lists the strings (file paths, an
            argument) of which a clear error message must hold at least one; an empty list
            asks for no name (a parser of bytes in memory).
        parse: fn(case) -> None or a note; runs in the worker; raises what the parser raises,
            or AssertionError when what it returned breaks the target's contract.
        errors: the exception types a clear error may have.
        timeout: seconds one input may take.
    """

    def __init__(self, name, what, seeds, make_case, parse, errors=(ValueError,), timeout=30.0):
        self.name, self.what, self.seeds, self.make_case, self.parse = name, what, seeds, make_case, parse
        self.errors, self.timeout = errors, timeout


def _where(err):
    """file:line of the deepest frame of the project in `err`'s traceback, else the deepest frame."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if str(ROOT) in f.filename and "/tests/fuzzing/" not in f.filename]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return "?"
    return f"{os.path.relpath(frame.filename, ROOT) if str(ROOT) in frame.filename else frame.filename}:{frame.lineno}"


def classify(target, case):
    """(outcome, detail) of `target.parse(case)`, run here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            note = target.parse(case)
    except target.errors as err:
        message = str(err)
        names = [str(n) for n in case.get("names", [])]
        if "Traceback" in message or "{{function_node" in message:
            return "crash", f"{type(err).__name__} with a traceback in its message at {_where(err)} | {message[:300]}"
        if names and not any(n in message for n in names):
            return "crash", f"{type(err).__name__} naming no input file at {_where(err)} | {message[:300]}"
        return "clear", f"{type(err).__name__}"
    except AssertionError as err:
        return "crash", f"accepted, but {str(err)[:60]} | {err}"
    except BaseException as err:  # noqa: BLE001: every other exception is what the fuzzer counts
        if isinstance(err, KeyboardInterrupt):
            raise
        return "crash", f"{type(err).__name__} at {_where(err)} | {str(err)[:300]}"
    return "handled", note or ""


# ----------------------------------------------------------------------------- the child


def _serve(conn, targets_module, memory_gb, log_path):
    """The worker's loop: ("seeds", name, folder) and ("parse", name, case) requests."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if memory_gb:
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    import importlib

    targets = importlib.import_module(targets_module).TARGETS
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        kind, name, payload = request
        target = targets[name]
        if kind == "seeds":
            conn.send(target.seeds(Path(payload)))
        else:
            conn.send(classify(target, payload))


class Worker:
    """A child process that runs parsers; restarted after it dies or hangs."""

    def __init__(self, targets_module="tests.fuzzing.targets", memory_gb=6.0):
        self.targets_module, self.memory_gb = targets_module, memory_gb
        self.process = self.conn = None
        fd, self.log_path = tempfile.mkstemp(prefix="kseg-fuzz-", suffix=".log")
        os.close(fd)
        self.restarts = 0

    def _start(self):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # Not a daemon: daemonic processes may not start children, and `kseg bench` runs each
        # configuration in one. The child exits when the pipe closes (the parent ended).
        self.process = ctx.Process(target=_serve, args=(child, self.targets_module, self.memory_gb, self.log_path))
        self.process.start()
        child.close()

    def request(self, kind, name, payload, timeout):
        """The child's answer, or ("crash", why) when it died or ran past `timeout` seconds."""
        if self.process is None or not self.process.is_alive():
            self._start()
        self.conn.send((kind, name, payload))
        if self.conn.poll(timeout):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        else:
            self.stop()
            self.restarts += 1
            return "crash", f"hang | no answer within {timeout:.0f} s (child killed)"
        self.process.join(5)
        code = self.process.exitcode
        self.stop()
        self.restarts += 1
        return "crash", f"child died ({'signal ' + str(-code) if code and code < 0 else f'exit code {code}'}) | " \
                        f"{self.log_tail()}"

    def log_tail(self, lines=3):
        text = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])[-400:]

    def stop(self):
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join()
        self.process = None

    def close(self):
        self.stop()
        os.remove(self.log_path)


# ----------------------------------------------------------------------------- the loop


def fuzz(targets, counts, seed=0, worker=None, progress=None, keep_crashes=None, seed_timeout=300.0, done=None):
    """Feeds `counts[name]` generated inputs to each target; returns the counts by outcome.

    Args:
        targets: {name: Target} to fuzz, in order.
        counts: {name: number of inputs}.
        seed: base seed; target `name` draws its inputs from random.Random(f"{seed}:{name}").
        worker: a `Worker` (default: a new one, closed at the end).
        progress: fn(total) -> object with update() and close() (a progress bar), or None.
        keep_crashes: folder to copy each crashing input's files into, or None.
        seed_timeout: seconds the worker may take to make one target's seeds.
        done: fn(results so far) called after each target (to save partial results), or None.

    Returns:
        {name: {"inputs", "handled", "clear", "crash", "seconds", "crashes": [{"case", "detail"}]
        (the first 20), "crash_kinds": {detail prefix: count}, "notes": {what a handled input did: count}}}.
    """
    own = worker is None
    worker = worker or Worker()
    total = sum(counts[name] for name in targets)
    bar = progress(total) if progress else None
    results = {}
    root = Path(tempfile.mkdtemp(prefix="kseg-fuzz-"))
    try:
        for name, target in targets.items():
            start = time.perf_counter()
            seed_dir = root / name / "seeds"
            seed_dir.mkdir(parents=True)
            seeds = worker.request("seeds", name, str(seed_dir), seed_timeout)
            if isinstance(seeds, tuple) and seeds[:1] == ("crash",):
                raise RuntimeError(f"{name}: making the seeds failed: {seeds[1]}")
            rng = random.Random(f"{seed}:{name}")
            row = {"inputs": 0, **{o: 0 for o in OUTCOMES}, "crashes": [], "crash_kinds": {}, "notes": {}}
            for i in range(counts[name]):
                folder = root / name / f"case{i}"
                folder.mkdir()
                case = target.make_case(rng, seeds, folder)
                fresh = i == 0 or worker.process is None  # a new child imports the parser's modules first
                timeout = max(target.timeout, 180.0) if fresh else target.timeout
                outcome, detail = worker.request("parse", name, case, timeout)
                row["inputs"] += 1
                row[outcome] += 1
                if outcome == "handled" and detail:
                    row["notes"][detail] = row["notes"].get(detail, 0) + 1
                if outcome == "crash":
                    key = detail.split(" | ")[0][:160]
                    row["crash_kinds"][key] = row["crash_kinds"].get(key, 0) + 1
                    if len(row["crashes"]) < 20:
                        row["crashes"].append({"case": i, "detail": detail})
                    if keep_crashes:
                        shutil.copytree(folder, Path(keep_crashes) / name / f"case{i}", dirs_exist_ok=True)
                shutil.rmtree(folder, ignore_errors=True)
                if bar:
                    bar.update()
            row["seconds"] = round(time.perf_counter() - start, 1)
            results[name] = row
            if done:
                done(results)
    finally:
        if bar:
            bar.close()
        if own:
            worker.close()
        shutil.rmtree(root, ignore_errors=True)
    return results
