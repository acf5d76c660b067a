"""One writer per run folder: an advisory lock on `RUN/.lock`, held for the life of a writer.

`kseg train` (and `kseg demo`, and `evaluate` / `predict` / `export` when they write into the
run folder) hold the lock of the run folder while they run; a second writer is refused at
once with a message naming the folder and the process that holds it. The lock is the
kernel's (`fcntl.flock` on the open lock file; on Windows `msvcrt.locking`), so it goes away
with its process however the process ends, SIGKILL included: there is no stale lock to clean up. The lock file stays; it
records the holder (pid, host, command, start time) for the message of the refused writer.

Readers need no lock: every file a run writes is replaced atomically (`kseg.utils.io`), so
`evaluate`, `predict` or `export` writing elsewhere may run beside a live training and see
complete files only.

The lock is per process and reentrant within it (`kseg demo` holds it and calls `train`,
which takes it again). Under a multi-worker strategy only the chief holds it
(`kseg.training.loop.run_writer`). On network file systems it works where `flock` does
(NFS on Linux; Lustre mounted with `-o flock`).
"""

import contextlib
import datetime
import json
import os
import shlex
import socket
import sys
import threading
import time

from kseg.utils.io import naming_write_errors

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

LOCK_FILE = ".lock"
PROBE_WAIT = 0.25  # seconds a writer retries a busy lock: a probe (`check_run_folder_free`) holds it for microseconds

_held = {}  # real path of a run folder -> [lock file descriptor, depth] of the locks this process holds
_guard = threading.Lock()


class RunFolderBusy(OSError):
    """Another process holds the lock of a run folder.

    Args:
        run_dir: the run folder.
        holder: what the holder recorded ({"pid", "host", "command", "since"}; may be empty).
    """

    def __init__(self, run_dir, holder):
        super().__init__(f"run folder {run_dir} is busy")
        self.run_dir = run_dir
        self.holder = dict(holder)

    def __str__(self):
        holder = self.holder
        who = f"process {holder.get('pid', '(pid not recorded yet)')}"
        if holder.get("host"):
            who += f" on host {holder['host']}"
        details = [f"since {holder['since']}" if holder.get("since") else "",
                   f"running: {holder['command']}" if holder.get("command") else ""]
        details = "; ".join(d for d in details if d)
        return (f"run folder {self.run_dir} is in use: {who} holds its lock {os.path.join(self.run_dir, LOCK_FILE)}"
                f"{f' ({details})' if details else ''}; expected one writer per run folder. Wait for that "
                "process to end (or stop it), or write into another folder.")


def read_holder(run_dir):
    """What the last holder of `run_dir`'s lock recorded ({} when nothing readable)."""
    try:
        with open(os.path.join(run_dir, LOCK_FILE)) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _record(fd):
    """Writes this process's pid, host, command and start time into the held lock file."""
    argv = list(sys.argv)
    if argv and argv[0].endswith((os.path.join("kseg", "cli.py"), os.sep + "kseg")):
        argv[0] = "kseg"  # `python -m kseg.cli` or the console script
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(argv),
              "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    text = json.dumps(holder).encode()
    with contextlib.suppress(OSError):  # a full disk may refuse the record; the lock holds without it
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, text)


_WINDOWS_OFFSET = 1 << 30  # the byte msvcrt locks: past the record, which others read


def _lock(fd, shared=False):
    """Locks the open file `fd` without waiting; raises BlockingIOError (PermissionError on
    Windows) when another process holds it."""
    if fcntl is not None:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    else:  # no shared locks: a probe takes the lock for an instant
        os.lseek(fd, _WINDOWS_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


def _unlock(fd):
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, _WINDOWS_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _acquire(run_dir):
    path = os.path.join(run_dir, LOCK_FILE)
    with naming_write_errors(path):
        os.makedirs(run_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + PROBE_WAIT
    try:
        while True:
            try:
                _lock(fd)
                break
            except (BlockingIOError, PermissionError):  # PermissionError: msvcrt's "locked"
                if time.monotonic() > deadline:
                    raise RunFolderBusy(run_dir, read_holder(run_dir)) from None
                time.sleep(0.01)
    except BaseException:
        os.close(fd)
        raise
    _record(fd)
    return fd


@contextlib.contextmanager
def run_lock(run_dir):
    """Holds the lock of the run folder `run_dir` (created if missing) for the block.

    Args:
        run_dir: the run folder.

    Raises:
        RunFolderBusy: at once, when another process holds the lock.
        WriteError: the lock file cannot be created (read-only or full file system...).
    """
    key = os.path.realpath(run_dir)
    with _guard:
        if key in _held:
            _held[key][1] += 1
        else:
            _held[key] = [_acquire(run_dir), 1]
    try:
        yield
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                with contextlib.suppress(OSError):
                    os.ftruncate(entry[0], 0)  # no holder recorded once released
                    _unlock(entry[0])
                os.close(entry[0])  # (closing the file releases the lock in any case)


def check_run_folder_free(run_dir):
    """Raises `RunFolderBusy` at once if another process holds `run_dir`'s lock; takes nothing.

    For a refusal before slow set-up work; the writer still takes the lock (`run_lock`) before
    it writes. A folder that does not exist yet, or that this process holds, is free.
    """
    key = os.path.realpath(run_dir)
    path = os.path.join(run_dir, LOCK_FILE)
    with _guard:
        if key in _held or not os.path.exists(path):
            return
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # unreadable: `run_lock` reports it when the writer starts
        try:
            _lock(fd, shared=True)
            _unlock(fd)
        except (BlockingIOError, PermissionError):
            raise RunFolderBusy(run_dir, read_holder(run_dir)) from None
        finally:
            os.close(fd)


def inside(run_dir, path):
    """True when `path` is the folder `run_dir` or lies under it."""
    folder, target = os.path.realpath(run_dir), os.path.realpath(path)
    return os.path.commonpath([folder, target]) == folder


def lock_if_inside(run_dir, output):
    """The lock of the existing run folder `run_dir` when `output` (a file or folder a command
    writes) lies inside it; else a context that takes nothing (a reader writing elsewhere runs
    beside a training)."""
    if run_dir and output and os.path.isdir(run_dir) and inside(run_dir, output):
        return run_lock(run_dir)
    return contextlib.nullcontext()
