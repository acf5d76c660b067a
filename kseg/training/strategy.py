"""tf.distribute for `kseg train`: the strategy by name, the per-worker input pipelines, and
which worker writes the run folder.

One command trains on one device, on several local devices (`mirrored`) or on several
processes or hosts (`multi-worker`, `MultiWorkerMirroredStrategy` configured by `TF_CONFIG`;
`kseg launch` starts N local workers for trying it out). In every case:

- `--batch-size` is the global batch: each of the R replicas gets batch / R examples;
- the input is sharded explicitly per pipeline (`distribute_datasets_from_function`, see
  `kseg.data.sharding`): the global batch holds the same examples whatever R is;
- the learning rate is the rate of that global batch. With `lr_reference_batch` set, it is
  scaled linearly to the global batch (`scaled_learning_rate`, the linear scaling rule of
  Goyal et al. 2017), for users who grow the global batch with the replica count;
- gradients are averaged over the global batch (Keras' compiled losses and kseg's own loss
  dictionaries both divide by R before the all-reduce sum), and BatchNormalization uses the
  global batch's statistics (`synchronize_batch_norm`), so R replicas train like one device;
- only the chief writes the run folder; every worker reads the chief's backup on resume,
  so the run folder must be on storage every host sees.
"""

import json
import os

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
        raise ValueError(f"`strategy` {name!r}: expected one of {STRATEGIES}")
    if cpu_replicas is not None and (name != "mirrored" or not isinstance(cpu_replicas, int) or cpu_replicas < 1):
        raise ValueError(f"`cpu_replicas` {cpu_replicas!r}: expected an int >= 1 with `strategy` mirrored "
                         f"(got `strategy` {name})")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi-worker":
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * int(cpu_replicas))
        except RuntimeError as err:
            raise ValueError(f"`cpu_replicas` {cpu_replicas}: TensorFlow's devices are already initialised in "
                             "this process; expected it before any TensorFlow work (start a new process)") from err
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MirroredStrategy()


_TF_CONFIG_FORM = ('{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}} (task '
                   'types "worker" and at most one "chief"; i an int within its list)')


def check_tf_config():
    """Checks that `TF_CONFIG` describes a cluster of chief/worker tasks with this process in it; returns it.

    Raises:
        ValueError: TF_CONFIG unset, not JSON, or not of that form (the message names the part).
    """
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError("--strategy multi-worker: the TF_CONFIG environment variable is not set; expected "
                         f"{_TF_CONFIG_FORM} on every worker (`kseg launch -n N -- train ...` sets it for N local "
                         "workers)")
    try:
        text.encode("utf-8")  # bytes that are not UTF-8 reach Python as surrogates TensorFlow cannot encode
        config = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: nested deeper than Python's stack
        raise ValueError(f"TF_CONFIG {text[:200]!r} is not JSON ({type(err).__name__}: {err}); expected "
                         f"{_TF_CONFIG_FORM}") from None
    problem = _tf_config_problem(config)
    if problem:
        raise ValueError(f"TF_CONFIG {text[:200]!r}: {problem}; expected {_TF_CONFIG_FORM}")
    return config


def _tf_config_problem(config):
    """What is wrong with a parsed TF_CONFIG, or None."""
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or not isinstance(
            config.get("task"), dict):
        return 'no "cluster" and "task" objects'
    cluster, task = config["cluster"], config["task"]
    for kind, members in cluster.items():
        if kind not in ("chief", "worker"):  # kseg's multi-worker runs have no "ps" or "evaluator" tasks
            return f"the cluster has task type {kind[:40]!r}"
        if not (isinstance(members, list) and members and all(isinstance(a, str) and a for a in members)):
            return f"the cluster's {kind!r} is {str(members)[:80]}, not a non-empty list of addresses"
        if len(set(members)) != len(members):
            return f"the cluster's {kind!r} lists an address twice"
    if len(cluster.get("chief", [])) > 1:
        return f"the cluster has {len(cluster['chief'])} chiefs"
    kind, index = task.get("type"), task.get("index")
    if not isinstance(kind, str) or kind not in cluster:
        return f"the task's type {str(kind)[:40]!r} is not a task type of the cluster ({', '.join(cluster)})"
    if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(cluster[kind])):
        return f"the task's index {str(index)[:40]!r} is not an int in [0, {len(cluster[kind])})"
    return None


def worker(strategy):
    """(index, count, is_chief) of this process among the workers of `strategy`.

    The chief is the "chief" task if the cluster has one, else worker 0, as in TensorFlow.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0, 1, True
    spec = resolver.cluster_spec().as_dict()
    tasks = [(kind, i) for kind in ("chief", "worker") for i in range(len(spec.get(kind, [])))]
    me = (resolver.task_type, int(resolver.task_id))
    chief = tasks[0]
    return tasks.index(me), len(tasks), me == chief


def is_chief(strategy):
    """True in the process that writes the run folder."""
    return worker(strategy)[2]


def check_global_batch(strategy, batch_size):
    """The per-replica batch of a global `batch_size`, which must split evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"`batch_size` {batch_size} is the global batch; expected a multiple of the "
                         f"{replicas} replicas of the strategy")
    return batch_size // replicas


def scaled_learning_rate(learning_rate, batch_size, reference_batch=None):
    """`learning_rate` scaled linearly from `reference_batch` to the global `batch_size`
    (unchanged when `reference_batch` is None)."""
    if reference_batch is None:
        return learning_rate
    if not isinstance(reference_batch, int) or reference_batch < 1:
        raise ValueError(f"`lr_reference_batch` {reference_batch!r}: expected an int >= 1")
    return learning_rate * batch_size / reference_batch


def distributed_dataset(strategy, build, batch_size):
    """The training input of `strategy`: `build(batch, shard)` -> a tf.data.Dataset per pipeline.

    One device: `build(batch_size, None)`. Several replicas: each input pipeline (one per
    worker) gets its per-replica batch and its shard (index, count, block) of the global
    batch, through `distribute_datasets_from_function` (no auto-sharding).
    """
    per_replica = check_global_batch(strategy, batch_size)
    if strategy.num_replicas_in_sync == 1 and worker(strategy)[1] == 1:
        return build(batch_size, None)

    def pipeline(context):
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        shard = (context.input_pipeline_id, context.num_input_pipelines, per_replica * local_replicas)
        return build(per_replica, shard)

    return strategy.distribute_datasets_from_function(pipeline)


def synchronize_batch_norm(model, strategy):
    """Makes every BatchNormalization layer of `model` use the statistics of the global batch
    when `strategy` has several replicas (SyncBN); returns how many layers it changed.

    With per-replica statistics, R replicas of batch b normalise differently from one device
    with batch R*b, and segmentation's small per-device batches give noisy statistics. Synced,
    they are the same up to rounding (the sums of every replica are all-reduced; Keras then
    computes var = E[x^2] - E[x]^2). On one replica nothing changes.
    """
    import keras

    if strategy.num_replicas_in_sync == 1:
        return 0
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            changed += 1
    return changed


def any_worker(strategy, flag):
    """True on every worker if `flag` is True on any (an all-reduce; workers must agree on
    when to stop, or the others wait forever in the next step's collective)."""
    if worker(strategy)[1] == 1:
        return bool(flag)
    value = strategy.run(lambda: tf.constant(1.0 if flag else 0.0))
    return bool(strategy.reduce(tf.distribute.ReduceOp.MAX, value, axis=None).numpy() > 0)
