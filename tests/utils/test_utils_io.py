"""kseg.utils.io: atomic writes leave the previous file on failure and give new files open()'s mode."""

import os
import stat

import pytest

from kseg.utils import atomic_write, write_json


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_a_finished_file_has_the_mode_open_gives(tmp_path, mode):
    """mkstemp's 0600 must not leak into the final file (a report or PNG others read)."""
    path = tmp_path / "out.bin"
    with atomic_write(path, mode) as f:
        f.write("x" if mode == "w" else b"x")
    with open(tmp_path / "plain.bin", mode) as f:
        f.write("x" if mode == "w" else b"x")
    expected = 0o666 & ~_umask()
    assert stat.S_IMODE(path.stat().st_mode) == expected == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)
    assert path.read_bytes() == b"x"


def test_a_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError, match="stop"):
        with atomic_write(path) as f:
            f.write("{partial")
            raise RuntimeError("stop")
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
