"""Which files form a data set: image/mask pairing by file stem and the train/val split.

Both work on file names only (no TF, no Pillow); reading the files is `kseg.data.folder`'s job.
"""

import hashlib
import os

from kseg.data.errors import DataError

_SHOW = 5  # how many offending files an error message lists


def find_pairs(image_dir, mask_dir, image_exts=(".png", ".jpg", ".jpeg"), mask_exts=(".png",)):
    """Pairs each image with the mask of the same file stem (`train/x.jpg` <-> `annot/x.png`).

    Files with other extensions (and hidden files) are ignored; extensions match in any case.

    Args:
        image_dir: folder of images.
        mask_dir: folder of masks.
        image_exts: accepted image extensions, with the dot.
        mask_exts: accepted mask extensions, with the dot.

    Returns:
        list of (image_path, mask_path) str tuples, sorted by image path.

    Raises:
        DataError: a folder is missing or holds no accepted file, two files share a stem,
            or a file has no partner (a few are listed with the partner that was expected).
    """
    images = _stems(image_dir, image_exts, "image_dir")
    masks = _stems(mask_dir, mask_exts, "mask_dir")
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images or lonely_masks:
        lines = [f"  {images[s]} has no mask: expected {os.path.join(mask_dir, s)}{_alts(mask_exts)}"
                 for s in lonely_images[:_SHOW]]
        lines += [f"  {masks[s]} has no image: expected {os.path.join(image_dir, s)}{_alts(image_exts)}"
                  for s in lonely_masks[:_SHOW]]
        raise DataError(
            f"find_pairs: {len(lonely_images)} image(s) in {image_dir} and {len(lonely_masks)} mask(s) "
            f"in {mask_dir} have no partner with the same file stem (showing up to {_SHOW} each):\n"
            + "\n".join(lines))
    return sorted((images[s], masks[s]) for s in images)


def _stems(folder, exts, arg):
    """Maps stem -> path for the files of `folder` whose extension is in `exts`."""
    if not os.path.isdir(folder):
        raise DataError(f"find_pairs: {arg}={folder!s} is not an existing folder")
    exts = tuple(e.lower() for e in exts)
    found, dupes = {}, []
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if name.startswith(".") or ext.lower() not in exts:
            continue
        if stem in found:
            dupes.append(f"{os.path.basename(found[stem])} and {name}")
        found[stem] = os.path.join(folder, name)
    if dupes:
        raise DataError(f"find_pairs: {len(dupes)} file stem(s) appear twice in {arg}={folder}, "
                        f"expected one file per stem: {'; '.join(dupes[:_SHOW])}")
    if not found:
        raise DataError(f"find_pairs: {arg}={folder} holds no file ending in {', '.join(exts)}")
    return found


def _alts(exts):
    return exts[0] if len(exts) == 1 else "{" + ",".join(exts) + "}"


def split_pairs(pairs, val_fraction=0.2, seed=0):
    """Splits pairs into train and validation sets, the same way on every machine.

    Each pair is ranked by a hash of `seed` and its image *file name* (not the folder,
    not the listing order), and the first round(len(pairs) * val_fraction) pairs in that
    rank go to validation (at least one when val_fraction > 0). So the split does not
    depend on `os.listdir` order or on where the data set lives, and adding a few files
    moves only pairs ranked near the cut-off.

    Args:
        pairs: list of (image_path, mask_path), at least 2 when val_fraction > 0.
        val_fraction: float in [0, 1), share of pairs for validation. Default 0.2.
        seed: int, picks a different split. Default 0.

    Returns:
        (train, val): two lists of pairs, each sorted by image path; disjoint, and
        together they hold every input pair.

    Example:
        >>> pairs = [(f"im/{i}.png", f"gt/{i}.png") for i in range(10)]
        >>> train, val = split_pairs(pairs, val_fraction=0.3, seed=0)
        >>> len(train), len(val)
        (7, 3)
    """
    is_pair = lambda p: isinstance(p, (list, tuple)) and len(p) == 2  # noqa: E731
    if not isinstance(pairs, (list, tuple)) or not all(is_pair(p) for p in pairs):
        raise DataError(f"split_pairs: pairs is {str(pairs)[:80]!r}, expected a list of (image_path, mask_path)")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise DataError(f"split_pairs: val_fraction={val_fraction!r}, expected a number in [0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"split_pairs: seed={seed!r}, expected an int")
    pairs = [tuple(p) for p in pairs]
    if len(set(pairs)) != len(pairs):
        raise DataError("split_pairs: pairs holds the same (image_path, mask_path) twice, expected unique pairs")
    num_val = int(round(len(pairs) * val_fraction))
    if val_fraction > 0:
        if len(pairs) < 2:
            raise DataError(f"split_pairs: {len(pairs)} pair(s) cannot be split with "
                            f"val_fraction={val_fraction}, "
                            "expected at least 2")
        num_val = min(max(num_val, 1), len(pairs) - 1)

    def rank(pair):
        name = os.path.basename(os.fspath(pair[0]))
        digest = hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()
        return digest, os.fspath(pair[0]), os.fspath(pair[1])

    ranked = sorted(pairs, key=rank)
    val = sorted(ranked[:num_val], key=lambda p: (os.fspath(p[0]), os.fspath(p[1])))
    train = sorted(ranked[num_val:], key=lambda p: (os.fspath(p[0]), os.fspath(p[1])))
    return train, val
