"""Choosing a `tf.distribute` strategy by name: the single switch the CLI exposes."""

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi-worker")


def get_strategy(name="default", cpu_replicas=None):
    """Returns the `tf.distribute.Strategy` called `name`.

    Args:
        name: "default" (one device), "mirrored" (all local devices, synchronous) or
            "multi-worker" (`MultiWorkerMirroredStrategy`, workers described by `TF_CONFIG`).
        cpu_replicas: with "mirrored" on a machine without GPUs, split the CPU into this many
            logical devices so that several replicas exist (must run before TensorFlow
            initializes its devices).

    Returns:
        A strategy; build and compile the model inside `strategy.scope()`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}; got {name!r}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(cpu_replicas))
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MirroredStrategy()
