"""Joint image + mask augmentation for semantic segmentation, reproducible from a seed.

Shape shorthand (one example, not a batch; `folder_dataset` maps it before batching):

    image  float32 [H, W, C]  raw pixel values in [0, 255]
    mask   int     [H, W]     class ids (any int dtype; kept)
    seed   int     [2]        a stateless seed: the same seed gives the same output

Order of operations: horizontal flip -> rot90 -> one resampling for scale + crop/pad and
the elastic deformation -> brightness/contrast on the image only -> clip to [0, 255].

Geometry moves image and mask together. The mask is only ever copied (exact array ops,
nearest-neighbour sampling), so it never holds an id that was not in the input (plus
`ignore_class` where the image had to be padded). The image is sampled bilinearly.
"""

import tensorflow as tf

from kseg.ops.warp import bilinear_sample, identity_grid, nearest_sample


class Augment:
    """Random flip, rot90, scale + crop, elastic deformation and brightness/contrast.

    Geometric operations (image and mask together):

    - `flip`: left-right flip with probability 1/2 (no up-down flip: street scenes have
      a sky; for microscopy, `rot90` combined with `flip` gives all 8 symmetries).
    - `rot90`: rotation by k * 90 degrees, k uniform in {0, 1, 2, 3}, when H == W. When
      H != W (known statically or only at run time) the rotation would change the shape,
      so k is drawn from {0, 2}: a 180 degree rotation or nothing.
    - `scale_range` + `crop`: the pair is scaled by s ~ U(scale_range), then cropped
      (s > 1) or padded (s < 1) back to H x W. `crop=True` places the window at a random
      position, `crop=False` centres it. Padding fills the image with 0 and the mask with
      `ignore_class`; when `ignore_class` is None both are mirrored instead (half-sample
      symmetric), so no unlabelled pixel gets a made-up class. `scale_range=None` disables it.
    - elastic deformation (Ronneberger et al., "U-Net", MICCAI 2015), with probability
      `elastic_prob`: displacements drawn from N(0, elastic_sigma) pixels on an
      `elastic_grid` x `elastic_grid` grid, upsampled to every pixel with bicubic
      interpolation. Pixels that move in from outside the image follow the padding rule.

    Scale, crop and the elastic field form one coordinate map, so the image is resampled
    once (bilinear, `kseg.ops.warp.bilinear_sample`) and the mask once (nearest,
    `kseg.ops.warp.nearest_sample`).

    Photometric operations (image only), then clipping to [0, 255]:

    - `brightness`: adds delta * 255, delta ~ U(-brightness, brightness).
    - `contrast`: scales each channel around its mean by f ~ U(1 - contrast, 1 + contrast).

    Args:
        flip: bool, default True.
        rot90: bool, default True.
        scale_range: (low, high) with 0 < low <= high, or None. Default (0.75, 1.25).
        crop: bool, random (True) or centred (False) crop/pad window. Default True.
        brightness: float >= 0, fraction of 255. Default 0.1.
        contrast: float in [0, 1). Default 0.1.
        elastic_prob: probability in [0, 1] of the elastic deformation. Default 0.5.
        elastic_sigma: float >= 0, displacement standard deviation in pixels. Default 10.
        elastic_grid: int >= 2, control points per side. Default 3.
        ignore_class: int >= 0 or None, mask value of padded pixels (see above).

    Example:
        >>> aug = Augment(ignore_class=255)
        >>> image = tf.zeros([64, 64, 3]); mask = tf.zeros([64, 64], tf.int32)
        >>> out_image, out_mask = aug(image, mask, seed=[1, 2])
        >>> out_image.shape, out_mask.shape
        (TensorShape([64, 64, 3]), TensorShape([64, 64]))
    """

    def __init__(
        self,
        flip=True,
        rot90=True,
        scale_range=(0.75, 1.25),
        crop=True,
        brightness=0.1,
        contrast=0.1,
        elastic_prob=0.5,
        elastic_sigma=10.0,
        elastic_grid=3,
        ignore_class=None,
    ):
        self.flip = _check_bool("flip", flip)
        self.rot90 = _check_bool("rot90", rot90)
        self.crop = _check_bool("crop", crop)
        if scale_range is not None:
            ok = len(tuple(scale_range)) == 2 and 0 < float(scale_range[0]) <= float(scale_range[1])
            if not ok:
                raise ValueError(f"Augment: scale_range={scale_range!r}, expected (low, high) with "
                                 "0 < low <= high, or None")
            scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.scale_range = scale_range
        self.brightness = _check_range("brightness", brightness, 0.0, float("inf"))
        self.contrast = _check_range("contrast", contrast, 0.0, 1.0, open_high=True)
        self.elastic_prob = _check_range("elastic_prob", elastic_prob, 0.0, 1.0)
        self.elastic_sigma = _check_range("elastic_sigma", elastic_sigma, 0.0, float("inf"))
        if isinstance(elastic_grid, bool) or not isinstance(elastic_grid, int) or elastic_grid < 2:
            raise ValueError(f"Augment: elastic_grid={elastic_grid!r}, expected an int >= 2")
        self.elastic_grid = elastic_grid
        if ignore_class is not None and (
            isinstance(ignore_class, bool) or not isinstance(ignore_class, int) or ignore_class < 0
        ):
            raise ValueError(f"Augment: ignore_class={ignore_class!r}, expected an int >= 0 or None")
        self.ignore_class = ignore_class

    def get_config(self):
        """Returns the constructor arguments as a dict of plain values."""
        keys = ("flip", "rot90", "scale_range", "crop", "brightness", "contrast",
                "elastic_prob", "elastic_sigma", "elastic_grid", "ignore_class")
        return {key: getattr(self, key) for key in keys}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"Augment({args})"

    def __call__(self, image, mask, seed):
        """Augments one (image, mask) pair.

        Args:
            image: [H, W, C] pixel values in [0, 255] (cast to float32).
            mask: int [H, W] class ids.
            seed: int [2], a stateless seed (tuple, list or tensor).

        Returns:
            (image float32 [H, W, C] in [0, 255], mask [H, W] of the mask's dtype), with
            the static shapes of the inputs.
        """
        image = tf.cast(tf.convert_to_tensor(image), tf.float32)
        mask = tf.convert_to_tensor(mask)
        if image.shape.rank != 3 or mask.shape.rank != 2:
            raise ValueError(f"Augment: image {image.shape} and mask {mask.shape}, expected [H, W, C] and [H, W]")
        if not mask.dtype.is_integer:
            raise ValueError(f"Augment: mask dtype {mask.dtype.name}, expected an integer dtype (class ids)")
        seed = tf.convert_to_tensor(seed)
        if not seed.shape.is_compatible_with([2]) or not seed.dtype.is_integer:
            raise ValueError(f"Augment: seed {seed.shape} {seed.dtype.name}, expected an int tensor of shape [2]")
        image_shape, mask_shape = image.shape, mask.shape
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=10)
        if self.flip:
            do_flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
            image, mask = tf.cond(
                do_flip,
                lambda: (tf.reverse(image, [1]), tf.reverse(mask, [1])),
                lambda: (image, mask),
            )
        if self.rot90:
            image, mask = self._rot90(image, mask, seeds[1])
        if self.scale_range is not None or self.elastic_prob > 0:
            image, mask = self._warp(image, mask, seeds[2:7])
        image = self._photometric(image, seeds[7:9])
        image.set_shape(image_shape)
        mask.set_shape(mask_shape)
        return image, mask

    def _rot90(self, image, mask, seed):
        """Rotates by k * 90 degrees counter-clockwise; k in {0, 2} unless H == W."""
        k = tf.random.stateless_uniform([], seed, minval=0, maxval=4, dtype=tf.int32)
        height, width = image.shape[0], image.shape[1]
        if height is None or width is None:
            shape = tf.shape(image)
            k = tf.where(tf.equal(shape[0], shape[1]), k, (k // 2) * 2)
        elif height != width:
            k = (k // 2) * 2
        image = tf.image.rot90(image, k)
        mask = tf.image.rot90(mask[..., None], k)[..., 0]
        return image, mask

    def _warp(self, image, mask, seeds):
        """Scale + crop/pad and the elastic field as one coordinate map; one resampling each."""
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        coords = identity_grid(height, width)
        if self.elastic_prob > 0:
            grid = self.elastic_grid
            field = tf.random.stateless_normal([1, grid, grid, 2], seeds[0], stddev=self.elastic_sigma)
            field = tf.image.resize(field, tf.stack([height, width]), method="bicubic")[0]
            apply = tf.random.stateless_uniform([], seeds[1]) < self.elastic_prob
            coords = coords + field * tf.cast(apply, tf.float32)
        if self.scale_range is not None:
            low, high = self.scale_range
            scale = tf.random.stateless_uniform([], seeds[2], minval=low, maxval=high)
            size = tf.cast(tf.stack([height, width]), tf.float32)
            if self.crop:
                where = tf.random.stateless_uniform([2], seeds[3])
            else:
                where = tf.constant([0.5, 0.5])
            # Output pixel p reads scaled pixel p + offset, i.e. source (p + offset + 0.5) / s - 0.5:
            # offset > 0 crops (s > 1), offset < 0 pads (s < 1).
            offset = where * (size * scale - size)
            coords = (coords + offset + 0.5) / scale - 0.5
        if self.ignore_class is None:
            mode, fill = "symmetric", 0
        else:
            mode, fill = "constant", self.ignore_class
        image = bilinear_sample(image, coords, mode=mode, fill_value=0.0)
        mask = nearest_sample(mask[..., None], coords, mode=mode, fill_value=fill)[..., 0]
        return image, mask

    def _photometric(self, image, seeds):
        """Brightness and contrast on the image only, then clipping to [0, 255]."""
        if self.brightness > 0:
            delta = tf.random.stateless_uniform([], seeds[0], -self.brightness, self.brightness)
            image = image + 255.0 * delta
        if self.contrast > 0:
            factor = tf.random.stateless_uniform([], seeds[1], 1.0 - self.contrast, 1.0 + self.contrast)
            mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
            image = (image - mean) * factor + mean
        return tf.clip_by_value(image, 0.0, 255.0)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"Augment: {name}={value!r}, expected True or False")
    return value


def _check_range(name, value, low, high, open_high=False):
    """Returns float(value) if low <= value <= high (< high when open_high), else raises."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Augment: {name}={value!r}, expected a number") from None
    if not (low <= value and (value < high if open_high else value <= high)):
        bracket = ")" if open_high else "]"
        raise ValueError(f"Augment: {name}={value!r}, expected a value in [{low}, {high}{bracket}")
    return value
