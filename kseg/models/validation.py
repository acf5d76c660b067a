"""Shared by model constructors: argument checks (errors name the argument, the value and what fits)
and the dtype policy scope."""

import contextlib

import keras

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


@contextlib.contextmanager
def dtype_policy_scope(dtype):
    """Builds a model's layers under the dtype policy `dtype` (e.g. "mixed_float16"), if given.

    kseg models record their policy in `get_config()`, so a model trained in mixed precision
    reloads in mixed precision whatever the global policy is at load time.
    """
    if dtype is None:
        yield
        return
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(keras.dtype_policies.get(dtype))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
