"""Isolation: a function run in a fresh spawned child process, so a native crash cannot take us down.

    in_subprocess(gpu_outputs, "unet.tflite", [image])   # a GPU crash raises RuntimeError here
"""

import multiprocessing
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path


def _redirect(log_path):
    """Points fds 1 and 2 at `log_path` (LiteRT's native code logs to both)."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _child(conn, log_path, fn, args, kwargs):
    _redirect(log_path)  # the parent shows the log's tail if we die
    try:
        result = ("ok", fn(*args, **kwargs))
    except Exception as e:
        result = ("error", e, traceback.format_exc())
    except BaseException as e:  # SystemExit, KeyboardInterrupt: not for the parent to re-raise
        result = ("error", RuntimeError(f"{getattr(fn, '__qualname__', fn)} stopped: {e!r}"), traceback.format_exc())
    try:
        conn.send(result)
    except Exception as e:  # an unpicklable result or exception
        conn.send(("error", RuntimeError(f"{result[1]!r} (could not be sent back: {e})"), result[-1]))
    conn.close()


def _tail(path, lines=8):
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def in_subprocess(fn, *args, timeout=None, **kwargs):
    """`fn(*args, **kwargs)` in a fresh "spawn" child process; returns its result.

    `fn` must be a picklable top-level function; its arguments and result travel by pickle.
    The child's stdout and stderr (LiteRT's native logging writes to both) go to a log whose
    last lines explain a crash.

    Args:
        fn: the function to run.
        *args, **kwargs: its arguments.
        timeout: seconds to wait for the result before the child is killed; None waits.

    Returns:
        What `fn` returned.

    Raises:
        RuntimeError: the child died (signal, exit code, timeout), naming `fn`, the cause and
            the child's last output lines.
        Whatever `fn` raised, when it raised a Python exception (re-raised here, with the
            child's traceback as a note).
    """
    name = getattr(fn, "__qualname__", repr(fn))
    ctx = multiprocessing.get_context("spawn")
    fd, log_path = tempfile.mkstemp(prefix="kseg-child-", suffix=".log")
    os.close(fd)
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, log_path, fn, args, kwargs), daemon=True)
    try:
        saved = [os.dup(1), os.dup(2)]
        try:  # the child inherits the log as stdout and stderr, so even a failed start leaves a trace
            _redirect(log_path)
            process.start()
        finally:
            for fd, copy_ in zip((1, 2), saved):
                os.dup2(copy_, fd)
                os.close(copy_)
        sender.close()
        if not receiver.poll(timeout):
            process.kill()
            process.join()
            raise RuntimeError(f"{name} timed out after {timeout} s and was killed" + _with_tail(log_path))
        try:
            message = receiver.recv()
        except EOFError:
            process.join()
            raise RuntimeError(f"{name} died: {_exit_reason(process.exitcode)}" + _with_tail(log_path)) from None
        process.join()
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()
        stderr_tail = _tail(log_path)
        os.remove(log_path)
    if message[0] == "ok":
        return message[1]
    error = message[1]
    if hasattr(error, "add_note"):
        error.add_note(f"raised in a child process by {name}:\n{message[2]}" + (f"\nchild output:\n{stderr_tail}" if stderr_tail else ""))
    raise error


def _exit_reason(code):
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code} without a result"


def _with_tail(log_path):
    tail = _tail(log_path)
    return f"; last output lines:\n{tail}" if tail else "; it wrote no output"
