"""Batch-norm recalibration: population statistics recomputed for the current weights.

During training a batch norm keeps exponential moving averages of the batch statistics,
starting from mean 0 and variance 1. With Keras' momentum 0.99 the averages forget with a
time constant of 100 steps: after 120 steps 30 % of each average is still the initial value
(0.99**120), and the rest describes weights that have changed since. A short schedule (the
few hundred steps of `kseg demo`) or a higher momentum (the 0.999 of keras.applications'
MobileNetV3) ends with averages that match no weights, and inference-mode outputs collapse
(one class everywhere) while training-mode outputs are fine. Recomputing the statistics with
the weights frozen ("precise BN", Wu & Johnson 2021) fixes that without changing a weight.
"""

import keras
import numpy as np


def batch_norm_layers(model):
    """The BatchNormalization layers of `model`, nested ones included."""
    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate_on_batches(model, batches):
    """Sets every BatchNormalization's moving mean/variance to the average over `batches`.

    Args:
        model: a Keras model; only its batch-norm moving statistics change.
        batches: an iterable of input arrays [B, H, W, C] (as the model takes them), or of
            (inputs, targets) tuples, e.g. a tf.data dataset; each batch counts equally.

    Returns:
        The number of batches used.

    Raises:
        ValueError: `batches` yields nothing.
    """
    layers = batch_norm_layers(model)
    momenta = [layer.momentum for layer in layers]
    count = 0
    try:
        for batch in batches:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            # moving <- moving * i/(i+1) + batch / (i+1): the running mean of the batch statistics.
            for layer in layers:
                layer.momentum = count / (count + 1)
            model(inputs, training=True)
            count += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if count == 0:
        raise ValueError("batches: expected at least one batch of training inputs; got none.")
    return count


def recalibrate_batch_norm(model, images, batch_size=16):
    """Sets every BatchNormalization's moving mean/variance to the average over `images`.

    Args:
        model: a Keras model; only its batch-norm moving statistics change.
        images: array [N, H, W, C] of training inputs (as the model takes them).
        batch_size: images per forward pass; each pass's batch statistics count equally.

    Returns:
        The number of batch-norm layers recalibrated.
    """
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images: expected a non-empty array [N, H, W, C]; got shape {images.shape}.")
    recalibrate_on_batches(model, (images[start:start + batch_size] for start in range(0, len(images), batch_size)))
    return len(batch_norm_layers(model))


class BatchNormRecalibration(keras.callbacks.Callback):
    """Recalibrates the batch norms at every epoch end, then runs the epoch-end callbacks it wraps.

    Training uses batch statistics, so this changes nothing in training; what the wrapped
    callbacks see (a validation in inference mode, the checkpoint it selects) is the model
    with the population statistics of its current weights.

    Args:
        batches: the iterable of `recalibrate_on_batches` (re-iterated every epoch), e.g. a
            tf.data dataset of un-augmented training images.
        then: callbacks whose `on_epoch_end` runs after the recalibration (a `Validation`).
    """

    def __init__(self, batches, then=()):
        super().__init__()
        self.batches = batches
        self.then = list(then)

    def set_model(self, model):
        super().set_model(model)
        for callback in self.then:
            callback.set_model(model)

    def on_epoch_end(self, epoch, logs=None):
        recalibrate_on_batches(self.model, self.batches)
        for callback in self.then:
            callback.on_epoch_end(epoch, logs)
