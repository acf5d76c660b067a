"""Argument checks shared by kseg's ops, layers and models: errors name the argument, the value
seen and what fits."""


def check_choice(argument, value, choices):
    """Raises ValueError unless `value` is one of `choices`.

    Args:
        argument: the argument's name, for the message (e.g. "method").
        value: what was given.
        choices: the accepted values (a tuple, or a dict whose keys are them).

    Example:
        >>> check_choice("method", "bilinear", ("crop_and_resize", "gather"))
        Traceback (most recent call last):
        ...
        ValueError: `method` must be one of ('crop_and_resize', 'gather'); got 'bilinear'.
    """
    if value not in choices:
        raise ValueError(f"`{argument}` must be one of {tuple(choices)}; got {value!r}.")
