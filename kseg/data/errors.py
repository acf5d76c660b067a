"""The one exception type of `kseg.data`: a data set on disk that kseg cannot use as it is."""


class DataError(ValueError):
    """A data folder, file or argument that kseg.data cannot read.

    The message always names the file or folder (or argument), the value that was seen
    and the value that was expected, so the user can fix the data without a debugger.
    Subclasses `ValueError`, so `except ValueError` also catches it.
    """
