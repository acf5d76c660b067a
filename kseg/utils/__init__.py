"""Small helpers that import no TensorFlow: atomic file writes and progress bars."""

from kseg.utils.io import atomic_path, atomic_write, write_json
from kseg.utils.progress import ProgressBar, progress

__all__ = ["ProgressBar", "atomic_path", "atomic_write", "progress", "write_json"]
