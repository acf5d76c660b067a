"""Building blocks of the U-Net family, written as functions over standard Keras layers.

Each function takes a tensor and returns a tensor, creating ordinary Keras layers
(Conv2D, BatchNormalization, ...) with stable names. A model built from them saves to
`.keras` and reloads in safe mode without custom layer classes, and converts to TFLite
with builtin ops only.

Shapes: `x` is [B, H, W, C] (channels-last) throughout.
"""

from keras import layers

BLOCKS = ("plain", "residual", "dense")
UPSAMPLING = ("transpose", "bilinear")
PADDINGS = ("same", "valid")


def conv_bn_act(x, filters, kernel_size=3, *, batch_norm, padding="same", activation="relu", name):
    """Conv2D -> [BatchNormalization] -> activation.

    With batch norm the convolution has no bias (the BN shift replaces it).
    """
    x = layers.Conv2D(filters, kernel_size, padding=padding, use_bias=not batch_norm, name=f"{name}_conv")(x)
    if batch_norm:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def plain_block(x, filters, *, batch_norm, padding, name):
    """Two 3x3 conv + ReLU, as in Ronneberger et al. 2015."""
    x = conv_bn_act(x, filters, batch_norm=batch_norm, padding=padding, name=f"{name}_1")
    return conv_bn_act(x, filters, batch_norm=batch_norm, padding=padding, name=f"{name}_2")


def residual_block(x, filters, *, batch_norm, name, **_):
    """Two 3x3 conv with an identity (or 1x1 projection) shortcut, He et al. 2016."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=not batch_norm, name=f"{name}_proj")(x)
        if batch_norm:
            shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = conv_bn_act(x, filters, batch_norm=batch_norm, name=f"{name}_1")
    y = conv_bn_act(y, filters, batch_norm=batch_norm, activation=None, name=f"{name}_2")
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def dense_block(x, filters, *, batch_norm, name, num_layers=3, **_):
    """DenseNet-style block (Huang et al. 2017) closed by a 1x1 transition to `filters`.

    Each of `num_layers` 3x3 convs sees the concatenation of all earlier outputs and adds
    `filters // 2` channels (the growth rate).
    """
    growth = max(filters // 2, 1)
    features = [x]
    for i in range(num_layers):
        inp = features[0] if len(features) == 1 else layers.Concatenate(name=f"{name}_cat{i}")(features)
        features.append(conv_bn_act(inp, growth, batch_norm=batch_norm, name=f"{name}_{i + 1}"))
    x = layers.Concatenate(name=f"{name}_cat")(features)
    return conv_bn_act(x, filters, kernel_size=1, batch_norm=batch_norm, name=f"{name}_transition")


def conv_block(x, filters, *, block, batch_norm, padding, name):
    """Dispatches to the plain, residual or dense block."""
    if block == "plain":
        return plain_block(x, filters, batch_norm=batch_norm, padding=padding, name=name)
    if block == "residual":
        return residual_block(x, filters, batch_norm=batch_norm, name=name)
    return dense_block(x, filters, batch_norm=batch_norm, name=name)


def upsample(x, filters, *, mode, name):
    """Doubles H and W: a learned 2x2 transposed conv, or fixed bilinear + 1x1 conv.

    Both halve the channel count to `filters`, as the paper's "up-convolution" does.
    """
    if mode == "transpose":
        return layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_transpose")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_bilinear")(x)
    return layers.Conv2D(filters, 1, name=f"{name}_proj")(x)


def attention_gate(skip, gating, inter_filters, *, name):
    """Additive attention gate of Attention U-Net (Oktay et al. 2018).

    Args:
        skip: encoder features x_l, [B, 2h, 2w, C].
        gating: coarser decoder features g, [B, h, w, C_g].
        inter_filters: channels of the intermediate space F_int.

    Returns:
        `skip` scaled per pixel by alpha = sigmoid(psi(relu(W_x x + W_g g))) upsampled to
        [B, 2h, 2w, 1]; W_x is a 2x2 stride-2 conv, so the gate is computed at g's scale.
    """
    theta_x = layers.Conv2D(inter_filters, 2, strides=2, use_bias=False, name=f"{name}_theta")(skip)
    phi_g = layers.Conv2D(inter_filters, 1, name=f"{name}_phi")(gating)
    f = layers.Activation("relu", name=f"{name}_relu")(layers.Add(name=f"{name}_add")([theta_x, phi_g]))
    psi = layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_psi")(f)
    alpha = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_alpha")(psi)
    return layers.Multiply(name=f"{name}_gate")([skip, alpha])


def separable_block(x, filters, *, strides=1, name):
    """Depthwise 3x3 (stride 1 or 2) + BN + ReLU6, then pointwise 1x1 + BN + ReLU6 (MobileNet)."""
    x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(name=f"{name}_pw_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_pw_relu")(x)


def center_crop_to(x, target, *, name):
    """Crops `x` [B, H, W, C] centrally to `target`'s H, W (static shapes; valid padding)."""
    if x.shape[1] is None or target.shape[1] is None:
        return x  # "same" padding with a dynamic size: the sizes agree by construction
    dh = x.shape[1] - target.shape[1]
    dw = x.shape[2] - target.shape[2]
    if dh == 0 and dw == 0:
        return x
    return layers.Cropping2D(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), name=name)(x)


def pixel_normalization(x, *, name="normalize"):
    """Maps raw pixels [0, 255] to [-1, 1] inside the graph (kseg's input contract)."""
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)(x)


def logits_head(x, num_classes, *, name="logits"):
    """1x1 conv to class logits, kept in float32 under mixed precision."""
    return layers.Conv2D(num_classes, 1, dtype="float32", name=name)(x)


__all__ = [
    "BLOCKS",
    "PADDINGS",
    "UPSAMPLING",
    "attention_gate",
    "center_crop_to",
    "conv_bn_act",
    "conv_block",
    "dense_block",
    "logits_head",
    "pixel_normalization",
    "plain_block",
    "residual_block",
    "separable_block",
    "upsample",
]
