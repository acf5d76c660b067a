"""The one exception type of `kseg.data` (a data set on disk that kseg cannot use as it is), and the
small helpers its readers' error messages share."""

import numpy as np


class DataError(ValueError):
    """A data folder, file or argument that kseg.data cannot read.

    The message always names the file or folder (or argument), the value that was seen
    and the value that was expected, so the user can fix the data without a debugger.
    Subclasses `ValueError`, so `except ValueError` also catches it.
    """


def is_int(value):
    """True for a Python or NumPy integer, False for a bool and anything else."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def shortlist(values, limit=5):
    """The first `limit` of `values` as "a, b, c ..." for an error message ("..." when there are more)."""
    values = list(values)
    return ", ".join(str(v) for v in values[:limit]) + (" ..." if len(values) > limit else "")
