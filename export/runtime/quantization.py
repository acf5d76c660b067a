"""Real values to a quantized tensor's stored integers and back, by its (scale, zero_point)."""

import numpy as np


def quantize(array, detail):
    """Real values -> the tensor's stored dtype: round(x / scale + zero_point), clipped.

    Args:
        array: real values, any shape.
        detail: the tensor's detail (export.runtime): "dtype" and "quantization" are read;
            scale 0 means not quantized (a plain cast).

    Returns:
        An array of the same shape in the tensor's dtype.
    """
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    x = np.asarray(array)
    if not scale:
        return x.astype(dtype)
    q = np.round(x.astype(np.float64) / scale + zero)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        q = np.clip(q, info.min, info.max)
    return q.astype(dtype)


def dequantize(array, detail):
    """The tensor's stored values -> real values: (q - zero_point) * scale (float32).

    Args:
        array: stored values, any shape.
        detail: the tensor's detail; scale 0 means not quantized (returned as it is).

    Returns:
        float32 array of the same shape (or `array` itself when not quantized).
    """
    scale, zero = detail["quantization"]
    a = np.asarray(array)
    if not scale:
        return a
    return ((a.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)
