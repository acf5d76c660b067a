"""ResNet-50 as torchvision builds it (He et al. 2016, "v1.5"), for torchvision's detectors.

    image     [B, H, W, 3]  normalized pixels ((x / 255 - mean) / std, ImageNet mean/std), H, W
                            divisible by 32
    "P{n}"    [B, H / 2^n, W / 2^n, C_n]  for n = 2..5, C = 256, 512, 1024, 2048 (layer1..layer4)

What differs from `keras.applications.ResNet50` (v1): the stride-2 of a stage's first block
is in its 3x3 conv, not its first 1x1 conv; padding is symmetric (PyTorch's explicit padding,
where "same" pads more on the bottom/right); batch norms use epsilon 1e-5 and are frozen (their
statistics and affine parameters never train, torchvision's FrozenBatchNorm2d). Layer names
follow the state dict: "layer2_0_conv2" holds `backbone.body.layer2.0.conv2.weight`, and
"layer2_0_downsample_1" its batch norm.
"""

import keras
from keras import layers

LEVELS = (2, 3, 4, 5)
BLOCKS = (3, 4, 6, 3)  # bottleneck blocks of layer1..layer4
WIDTHS = (64, 128, 256, 512)  # bottleneck width; the output has 4x as many channels
BN_EPSILON = 1e-5


def torchvision_resnet50(input_shape, trainable_stages=3, name="resnet50_torchvision"):
    """A keras.Model from a normalized image to {"P2": layer1, ..., "P5": layer4} outputs.

    Args:
        input_shape: (H, W, 3), H and W divisible by 32.
        trainable_stages: how many of the last stages (layer4, layer3, ...) train, 0..5 (3, as
            torchvision's detectors: the stem and layer1 stay frozen).
        name: the model's name.

    Returns:
        keras.Model, outputs {"P2": [B, H/4, W/4, 256], ..., "P5": [B, H/32, W/32, 2048]}.
    """
    height, width, channels = input_shape
    if height is None or width is None or height % 32 or width % 32 or channels != 3:
        raise ValueError(f"input_shape must be (H, W, 3) with H and W divisible by 32; got {input_shape!r}.")
    if not 0 <= trainable_stages <= 5:
        raise ValueError(f"trainable_stages must be in 0..5; got {trainable_stages!r}.")
    trainable = {stage: stage > 4 - trainable_stages for stage in range(5)}  # 0 = the stem
    image = keras.Input(input_shape, name="image")
    x = layers.ZeroPadding2D(3, name="conv1_pad")(image)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1", trainable=trainable[0])(x)
    x = layers.ReLU(name="relu")(_frozen_bn("bn1")(x))
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)  # after ReLU, zeros pad like -inf
    x = layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    features = {}
    for stage, (blocks, width) in enumerate(zip(BLOCKS, WIDTHS), start=1):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 1 else 1
            x = _bottleneck(x, width, stride, f"layer{stage}_{block}", trainable[stage])
        features[f"P{stage + 1}"] = x
    return keras.Model(image, features, name=name)


def _frozen_bn(name):
    # trainable=False: Keras runs the layer in inference mode, with its moving statistics.
    return layers.BatchNormalization(epsilon=BN_EPSILON, trainable=False, name=name)


def _bottleneck(x, width, stride, name, trainable):
    """1x1 -> 3x3 (stride) -> 1x1 (4 x width), each with a frozen batch norm, plus the shortcut."""
    shortcut = x
    if stride != 1 or x.shape[-1] != 4 * width:
        shortcut = layers.Conv2D(4 * width, 1, strides=stride, use_bias=False, name=f"{name}_downsample_0",
                                 trainable=trainable)(x)
        shortcut = _frozen_bn(f"{name}_downsample_1")(shortcut)
    y = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_conv1", trainable=trainable)(x)
    y = layers.ReLU(name=f"{name}_relu1")(_frozen_bn(f"{name}_bn1")(y))
    y = layers.ZeroPadding2D(1, name=f"{name}_pad2")(y)
    y = layers.Conv2D(width, 3, strides=stride, use_bias=False, name=f"{name}_conv2", trainable=trainable)(y)
    y = layers.ReLU(name=f"{name}_relu2")(_frozen_bn(f"{name}_bn2")(y))
    y = layers.Conv2D(4 * width, 1, use_bias=False, name=f"{name}_conv3", trainable=trainable)(y)
    y = _frozen_bn(f"{name}_bn3")(y)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))
