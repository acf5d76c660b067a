"""Shared by kseg models: the base class, argument checks (errors name the argument, the value
and what fits) and the dtype policy scope."""

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


class SegmentationModel(keras.Model):
    """Base of kseg's models: a functional graph built in `__init__` from plain arguments.

    Subclasses build their graph under `dtype_policy_scope`, call
    `super().__init__(inputs=..., outputs=..., name=..., **kwargs)`, then store one attribute
    per constructor argument and return them from `get_config()` merged with
    `base_config()`. Reloading calls the constructor again (`from_config`), so a saved
    model holds no pickled code and loads in safe mode.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The policy the layers were built under (keras.Model keeps its own at float32).
        self.build_dtype = kwargs.get("dtype") or keras.mixed_precision.global_policy().name

    def base_config(self):
        return {"name": self.name, "trainable": self.trainable, "dtype": self.build_dtype}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
