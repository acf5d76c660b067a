"""Memory of processes from /proc, sampled in a background thread (benchmarks/soak.py uses it).

    rss_mb()                 this process's resident set size, MB
    rss_mb(pid)              another's (None once it is gone)
    children(pid)            every descendant: {pid: command line}
    chromium_memory(pid)     the PSS of every Chromium process under pid, MB
    Sampler(measure, 1.0)    calls measure() every second until stop(); returns the samples
"""

import os
import threading
import time
from pathlib import Path


def rss_mb(pid="self"):
    """Resident set size of a process in MB (from /proc), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return None


def pss_mb(pid):
    """Proportional set size of a process in MB (0.0 when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024
    except (OSError, StopIteration, ValueError):
        return 0.0


def children(pid):
    """Every descendant of `pid`: {pid: command line}."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = {}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                try:
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                frontier.append(child)
    return found


class Sampler(threading.Thread):
    """Samples `measure()` (a dict of MB figures) every `interval` s with the wall time, until stopped."""

    def __init__(self, measure, interval=1.0):
        super().__init__(daemon=True)
        self.measure, self.interval, self.samples = measure, interval, []
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            figures = self.measure()
            if figures:
                self.samples.append({"t": time.time(), **figures})
            self._stop_event.wait(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join()
        return self.samples


def chromium_memory(root_pid):
    """The PSS of every Chromium process under `root_pid`, in MB (None when there is none)."""
    pids = [p for p, cmd in children(root_pid).items() if "chrom" in cmd.split(" ", 1)[0]]
    return {"chromium_pss": sum(pss_mb(p) for p in pids)} if pids else None
