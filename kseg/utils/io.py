"""Atomic file output: a kill never leaves a half-written file under the final name.

Every file kseg writes (checkpoints, JSON reports, PNGs) goes to a temporary file in
the same folder and is renamed over the target only once it is complete; `os.replace`
is atomic on POSIX and Windows when both names are on one file system.
"""

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yields a temporary path beside `path`; renames it to `path` if the block succeeds.

    Args:
        path: the final file name.
        suffix: suffix of the temporary name (default: `path`'s own extension, which
            libraries such as Keras and Pillow use to pick the file format).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if suffix is None:
        suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path, mode="w", **open_kwargs):
    """Opens a temporary file for writing; it becomes `path` when the block succeeds."""
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
