"""Class weights counted from a set of masks (eager NumPy, not graph code).

Shape shorthand (N images, H, W, K classes): a mask is int [H, W] or [H, W, 1];
a batch of masks is [N, H, W] or [N, H, W, 1]; the counts returned are int64 [K].
"""

import numpy as np


def _mask_batches(masks):
    """Yields NumPy mask arrays from a tf.data.Dataset or an iterable."""
    if hasattr(masks, "as_numpy_iterator"):  # tf.data.Dataset
        masks = masks.as_numpy_iterator()
    for element in masks:
        if isinstance(element, (tuple, list)):
            if len(element) < 2:
                raise ValueError(
                    "`masks` yielded a tuple of length "
                    f"{len(element)}; expected a mask or an (image, mask, ...) tuple."
                )
            element = element[1]
        yield np.asarray(element)


def _split_images(mask):
    """[H, W] or [H, W, 1] -> one image; [N, H, W] or [N, H, W, 1] -> N images."""
    if mask.ndim == 2 or (mask.ndim == 3 and mask.shape[-1] == 1):
        return [mask.reshape(mask.shape[:2])]
    if mask.ndim == 3 or (mask.ndim == 4 and mask.shape[-1] == 1):
        return list(mask.reshape(mask.shape[:3]))
    raise ValueError(
        "`masks` must yield masks shaped [H, W], [H, W, 1], [N, H, W] or [N, H, W, 1]. "
        f"Received a mask of shape {mask.shape}."
    )


def class_pixel_counts(masks, num_classes, ignore_class=None):
    """Counts the pixels of each class and the pixels of the images holding it.

    Args:
        masks: a `tf.data.Dataset` yielding masks or `(image, mask, ...)` tuples,
            batched or not, or any iterable of NumPy masks (a `[N, H, W]` array
            works too). Masks are int class ids.
        num_classes: int K.
        ignore_class: optional int label left out of every count.

    Returns:
        `(pixel_counts, image_pixels)`, int64 `[K]` each: `pixel_counts[c]` is the
        number of pixels labelled c; `image_pixels[c]` is the number of counted
        (non-ignored) pixels in the images where c appears at least once.

    Raises:
        ValueError: for a label outside `[0, K)` that is not `ignore_class`, or an
            unexpected mask shape.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be an int >= 1. Received: {num_classes!r}")
    pixel_counts = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for batch in _mask_batches(masks):
        for mask in _split_images(batch):
            labels = mask.reshape(-1).astype(np.int64)
            if ignore_class is not None:
                labels = labels[labels != int(ignore_class)]
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                bad = labels[(labels < 0) | (labels >= num_classes)][0]
                raise ValueError(
                    f"`masks` holds label {bad}, outside [0, {num_classes}) and not "
                    f"ignore_class={ignore_class}."
                )
            counts = np.bincount(labels, minlength=num_classes)
            pixel_counts += counts
            image_pixels += np.where(counts > 0, labels.size, 0)
    return pixel_counts, image_pixels


def median_frequency_weights_from_counts(pixel_counts, image_pixels):
    """Median frequency balancing from counts (Eigen & Fergus, ICCV 2015, section 4.1).

    `freq_c = pixel_counts[c] / image_pixels[c]`, `w_c = median(freq) / freq_c`, the
    median taken over the classes that appear. A class that never appears
    (`pixel_counts[c] == 0`) gets weight 0 (it has no pixel to weigh), without a warning.

    Args:
        pixel_counts: `[K]` pixels of each class, as from `class_pixel_counts`.
        image_pixels: `[K]` pixels of the images in which each class appears.

    Returns:
        float64 NumPy array `[K]`, ready for `WeightedCrossEntropy(class_weights=...)`.

    Raises:
        ValueError: if the shapes differ or no class appears.
    """
    pixel_counts = np.asarray(pixel_counts, np.float64)
    image_pixels = np.asarray(image_pixels, np.float64)
    if pixel_counts.ndim != 1 or pixel_counts.shape != image_pixels.shape:
        raise ValueError(
            "`pixel_counts` and `image_pixels` must both be [K]. Received shapes "
            f"{pixel_counts.shape} and {image_pixels.shape}."
        )
    present = pixel_counts > 0
    if not present.any():
        raise ValueError(
            f"`pixel_counts` holds no pixel of any of the {pixel_counts.size} classes; "
            "cannot compute median-frequency weights."
        )
    freq = pixel_counts[present] / image_pixels[present]
    weights = np.zeros(pixel_counts.size, np.float64)
    weights[present] = np.median(freq) / freq
    return weights


def median_frequency_weights(masks, num_classes, ignore_class=None):
    """Median frequency class weights counted from masks (Eigen & Fergus, ICCV 2015).

    `freq_c = pixels of class c / pixels of the images in which c appears` (ignored
    pixels excluded from both), `w_c = median(freq) / freq_c`; a class that never
    appears gets weight 0. `class_pixel_counts`, then
    `median_frequency_weights_from_counts`.

    Args:
        masks: see `class_pixel_counts`.
        num_classes: int K.
        ignore_class: optional int label left out of every count.

    Returns:
        float64 NumPy array `[K]`, ready for `WeightedCrossEntropy(class_weights=...)`.

    Raises:
        ValueError: if no pixel of any class is found, or as `class_pixel_counts`.

    Example:

    >>> import numpy as np
    >>> masks = [np.array([[0, 0], [0, 1]]), np.array([[1, 1], [2, 255]])]
    >>> median_frequency_weights(masks, num_classes=4, ignore_class=255).round(4).tolist()
    [0.5714, 1.0, 1.2857, 0.0]
    """
    pixel_counts, image_pixels = class_pixel_counts(masks, num_classes, ignore_class)
    return median_frequency_weights_from_counts(pixel_counts, image_pixels)
