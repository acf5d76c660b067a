"""Shared by kseg models: the base class, argument checks (errors name the argument, the value
and what fits) and the dtype policy scope."""

import contextlib

import keras
import tensorflow as tf

from kseg.backbones import backbone_from_config, check_backbone

# Keyword arguments that kseg models forward to keras.Model.
KERAS_MODEL_KWARGS = frozenset({"trainable", "dtype"})


def detector_input_shape(input_shape, default=None):
    """A detector's (H, W, 3) from `input_shape`.

    Args:
        input_shape: (H, W, 3) or None.
        default: the shape when `input_shape` is None (None: it is required).

    Raises:
        ValueError: missing, or not (H, W, 3) positive ints.
    """
    if input_shape is None:
        input_shape = default
    if input_shape is None:
        raise ValueError("`input_shape` (H, W, 3) is required; got None.")
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
        raise ValueError(f"`input_shape` must be (H, W, 3) positive ints; got {input_shape!r}.")
    return shape


def legacy_detector_config(config):
    """A saved detector config in today's arguments: the older `image_size` (H, W) becomes
    `input_shape` (H, W, 3), so `.keras` files saved before the rename still load."""
    config = dict(config)
    if "image_size" in config:
        config["input_shape"] = [*config.pop("image_size"), 3]
    return config


def check_detector_backbone(backbone, input_shape):
    """Raises ValueError unless `backbone` is a backbone object for `input_shape` images.

    Names (and None) are resolved only by `kseg.models.build_model` and `from_config`.
    """
    if backbone is None or isinstance(backbone, str):
        raise ValueError(f"`backbone` must be a keras.Model giving P2..P5 features; got {backbone!r}. Build a "
                         f"model from names with kseg.models.build_model(name, preset, backbone=...), or pass "
                         f"kseg.backbones.build_backbone(name, input_shape).")
    check_backbone(backbone, input_shape)


def detector_config_objects(config):
    """A saved detector config as constructor arguments: `legacy_detector_config`, then the
    backbone it records (a name or a serialized keras.Model) built as an object, at the
    config's input shape and under its dtype policy."""
    config = legacy_detector_config(config)
    weights = config.pop("backbone_weights", None)
    if "backbone" in config and not isinstance(config["backbone"], keras.Model):
        shape = detector_input_shape(config.get("input_shape"), default=(512, 512, 3))
        with dtype_policy_scope(config.get("dtype")):
            config["backbone"] = backbone_from_config(config["backbone"], shape, weights=weights)
    return config


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

    def compile(self, optimizer="rmsprop", *args, auto_scale_loss=True, **kwargs):
        """keras.Model.compile; a model built under "mixed_float16" gets its optimizer wrapped in
        a `keras.optimizers.LossScaleOptimizer` (dynamic loss scaling against float16 gradient
        underflow), as Keras does for models whose own policy is mixed_float16. Keras cannot see
        it here: a functional model keeps its own policy at float32, whatever its layers use.
        `auto_scale_loss=False` leaves the optimizer as given."""
        optimizer = keras.optimizers.get(optimizer)
        if (auto_scale_loss and self.build_dtype == "mixed_float16"
                and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name="loss_scale_optimizer")
        super().compile(optimizer, *args, auto_scale_loss=auto_scale_loss, **kwargs)

    def compile_from_config(self, config):
        """Recompiles a loaded model as saved (Keras skips models whose `compile` is their own)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def train_step(self, data):
        return logs_for_reduction(super().train_step(data))

    def test_step(self, data):
        return logs_for_reduction(super().test_step(data))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy, Keras learns the batch's shapes before `fit` by pulling a batch from
        # the training iterator, reducing it with `strategy.reduce("MEAN", batch)`, and making a
        # new iterator. Two problems: MultiWorkerMirroredStrategy cannot reduce a nested batch
        # (TF 2.21: "Attempt to convert a value ({...: PerReplica...}) to a Tensor"), and the new
        # iterator is the dataset's second, with another shuffle and other augmentation seeds
        # than one device's run. The dataset's element spec gives the shapes without reading it.
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and data_batch is None and strategy is not None:
            spec = iterator.data_adapter.get_tf_dataset().element_spec
            data_batch = tf.nest.map_structure(lambda s: getattr(s, "_value_specs", [s])[0], spec)
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def logs_for_reduction(logs):
    """A step's logs in the shape Keras can reduce across workers.

    Under a multi-worker MultiWorkerMirroredStrategy, Keras 3 reduces every log of a step with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on the scalars its own train step
    returns ("Invalid reduction dimension 0 for input with 0 dimensions"). As [1] tensors they
    reduce to the mean over all replicas, a scalar, as on one worker.
    """
    strategy = tf.distribute.get_strategy()
    extended = getattr(strategy, "extended", None)
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and getattr(
        extended, "_in_multi_worker_mode", lambda: False)()
    if not multi_worker:
        return logs
    return {name: tf.reshape(value, [1]) if tf.is_tensor(value) and value.shape.rank == 0 else value
            for name, value in logs.items()}


class LossDictTraining:
    """`fit`/`evaluate` for a keras.Model whose losses come from the batch itself.

    Detection-style models (Mask R-CNN, Panoptic FPN, MaskFormer) compute their own loss terms
    from a padded ground-truth batch; `fit(dataset)` then needs no `loss=` in `compile`. A model
    mixes this class in before keras.Model, defines `compute_losses(batch, training)` ->
    {name: scalar} for the names of `loss_names()`, and calls `_init_loss_trackers()` at the end
    of its constructor. Every term, and their sum "loss", is logged as a running mean.
    """

    def _init_loss_trackers(self):
        self.loss_trackers = {k: keras.metrics.Mean(name=k) for k in ("loss",) + tuple(self.loss_names())}

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def _unpack(self, data):
        return data[0] if isinstance(data, (tuple, list)) else data

    def train_step(self, data):
        batch = self._unpack(data)
        with tf.GradientTape() as tape:
            losses = self.compute_losses(batch, training=True)
            total = tf.add_n(list(losses.values()))
            if self.losses:
                total += tf.add_n(self.losses)
            # The optimizer sums the replicas' gradients (an all-reduce SUM), so each replica's
            # loss is divided by their count: the step then follows the global batch's mean loss,
            # as Keras' own compiled losses do (`scale_loss_for_distribution`).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = total / tf.cast(replicas, total.dtype) if replicas > 1 else total
            scaled = self.optimizer.scale_loss(scaled) if hasattr(self.optimizer, "scale_loss") else scaled
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        if replicas > 1:
            gradients = self._clip_global_gradients(gradients, replicas)
        self.optimizer.apply(gradients, variables)
        return logs_for_reduction(self._track(total, losses))

    def _clip_global_gradients(self, gradients, replicas):
        """`clipnorm` applied to the global batch's gradient, as on one device.

        Keras clips each replica's gradient before it sums them, so under R replicas the
        optimizer's `clipnorm` would bound 1/R-sized pieces instead of the gradient. Here the
        replicas first sum their gradients (the global batch's), clip each tensor by its norm as
        Keras does, then hand 1/R of it to the optimizer, whose own all-reduce sums them back and
        whose own clipping is then a no-op. With loss scaling (mixed precision) the gradients
        are scaled, and so is the bound.
        """
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        clipnorm = getattr(inner, "clipnorm", None)
        if not clipnorm:
            return gradients
        scale = getattr(self.optimizer, "dynamic_scale", None)
        bound = clipnorm * (tf.cast(scale, tf.float32) if scale is not None else 1.0)
        present = [i for i, g in enumerate(gradients) if g is not None]
        summed = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, [gradients[i] for i in present])
        clipped = list(gradients)
        for i, g in zip(present, summed):
            clipped[i] = tf.clip_by_norm(g, tf.cast(bound, g.dtype)) / tf.cast(replicas, g.dtype)
        return clipped

    def test_step(self, data):
        losses = self.compute_losses(self._unpack(data), training=False)
        return logs_for_reduction(self._track(tf.add_n(list(losses.values())), losses))

    def _track(self, total, losses):
        self.loss_trackers["loss"].update_state(total)
        for name, value in losses.items():
            self.loss_trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.loss_trackers.items()}
