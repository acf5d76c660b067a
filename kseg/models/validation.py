"""Argument checks shared by model constructors: errors name the argument, the value and what fits."""

# Keyword arguments that kseg models forward to keras.Model.
KERAS_MODEL_KWARGS = frozenset({"trainable", "dtype"})


def check_choice(arg, value, choices):
    if value not in choices:
        raise ValueError(f"`{arg}` must be one of {tuple(choices)}; got {value!r}.")


def check_kwargs(cls_name, kwargs):
    """Rejects keyword arguments that neither the model nor keras.Model takes."""
    unknown = sorted(set(kwargs) - KERAS_MODEL_KWARGS)
    if unknown:
        raise TypeError(f"{cls_name} got unexpected keyword arguments {unknown}.")
