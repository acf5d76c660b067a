"""Atomic file output: a kill never leaves a half-written file under the final name.

Every file kseg writes (checkpoints, JSON reports, PNGs) goes to a temporary file in
the same folder and is renamed over the target only once it is complete; `os.replace`
is atomic on POSIX and Windows when both names are on one file system.

A write that fails (disk full, quota, read-only or unwritable folder, I/O error) raises
`WriteError`, which names the final file; the temporary file is removed and the file under
the final name, if any, is the previous complete version.
"""

import contextlib
import errno
import json
import os
import tempfile

# The errors of a write the user can fix and then retry.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _new_file_mode():
    """The mode `open()` gives a new file: 0o666 less the process's umask (read, not changed)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp makes 0600 files; a finished file gets the mode a plain open() would have given it.
NEW_FILE_MODE = _new_file_mode()


class WriteError(OSError):
    """Writing `filename` failed with `errno` (one of `WRITE_ERRNOS`).

    Args:
        filename: the file that could not be written (its final name, not a temporary one).
        code: the errno.
        advice: what was kept and what to do, appended to the message.
    """

    def __init__(self, filename, code, advice=""):
        super().__init__(code, os.strerror(code), os.fspath(filename))
        self.advice = advice

    def __str__(self):
        name = errno.errorcode.get(self.errno, str(self.errno))
        text = f"could not write {self.filename}: {self.strerror} ({name})"
        return f"{text}. {self.advice}" if self.advice else text

    def __reduce__(self):
        return type(self), (self.filename, self.errno, self.advice)


def is_write_error(error):
    """True for an OSError of a failed write the user can fix (`WRITE_ERRNOS`)."""
    return isinstance(error, OSError) and error.errno in WRITE_ERRNOS


@contextlib.contextmanager
def naming_write_errors(path):
    """Re-raises a failed write inside the block (`is_write_error`) as `WriteError` naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        if not is_write_error(err):
            raise
        raise WriteError(path, err.errno) from err


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yields a temporary path beside `path`; renames it to `path` if the block succeeds.

    The file gets the mode a plain `open(path, "w")` would give it (`NEW_FILE_MODE`).

    Args:
        path: the final file name.
        suffix: suffix of the temporary name (default: `path`'s own extension, which
            libraries such as Keras and Pillow use to pick the file format).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if suffix is None:
        suffix = os.path.splitext(path)[1]
    tmp = None
    try:
        with naming_write_errors(path):
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", suffix=suffix, dir=folder)
            os.close(fd)
            os.chmod(tmp, NEW_FILE_MODE)
            yield tmp
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            with contextlib.suppress(OSError):  # the error being raised is the one to report
                os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path, mode="w", **open_kwargs):
    """Opens a temporary file for writing; it becomes `path` when the block succeeds.

    Args:
        path: the final file name.
        mode: "w" (text) or "wb" (binary).
        **open_kwargs: for `open`, e.g. encoding or newline.

    Yields:
        The open file.
    """
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_json(path, obj):
    """Writes `obj` as indented JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
