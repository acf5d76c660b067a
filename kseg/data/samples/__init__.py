"""Sample data shipped inside the package (no download): see README.md beside this file."""

from pathlib import Path

ISBI_DIR = Path(__file__).resolve().parent / "isbi2012"
# ISBI labels are 0 (membrane) and 255 (cell interior); kseg trains on class ids 0 and 1.
ISBI_REMAP = {0: 0, 255: 1}
ISBI_CLASSES = ("membrane", "cell")


def isbi_sample_dirs():
    """(image_dir, label_dir) of the embedded ISBI 2012 sample (10 pairs, 256x256 grey)."""
    return ISBI_DIR / "image", ISBI_DIR / "label"
