"""Batch-norm recalibration: population statistics recomputed for the final weights.

During training a batch norm keeps exponential moving averages of the batch statistics. When
the weights change faster than the averages forget (short schedules, a high momentum such as
the 0.999 of keras.applications' MobileNetV3), the averages describe weights long gone and
inference-mode outputs collapse while training-mode outputs are fine. Recomputing the
statistics with the weights frozen ("precise BN", Wu & Johnson 2021) fixes that without
changing a single weight.
"""

import keras
import numpy as np


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
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    try:
        for i, start in enumerate(range(0, len(images), batch_size)):
            # moving <- moving * i/(i+1) + batch / (i+1): the running mean of the batch statistics.
            for layer in layers:
                layer.momentum = i / (i + 1)
            model(images[start:start + batch_size], training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)
