"""keras.applications backbones with ImageNet weights from a local file.

`keras.applications` downloads its ImageNet weights as legacy Keras HDF5 files, e.g.
`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` or
`weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5` (under ~/.keras/models/). That layout:

    /                     attrs layer_names [L] (every layer, in model order), backend, keras_version
    /<layer>/             attrs weight_names [n] (may be empty: a layer without weights)
    /<layer>/<weight>     one dataset per name, in the layer's order (trainable first)

and Keras loads it by order: the i-th layer with weights in the file goes to the i-th layer with
weights in the model. `build_application` passes a path of such a file through (a machine
without network can use a copy), but checks it first: the file exists, is HDF5 in this layout,
and every layer's weight shapes are those of the model, so a wrong file fails with its name, the
layer and both shapes instead of Keras' bare count mismatch.
"""

import os

_SHOW = 3  # layers an error lists
# What keras.applications downloads for each model without its top (model.name -> file name).
DOWNLOADED_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "MobileNetV3Large": "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    "MobileNetV3Small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
}


def build_application(factory, weights, argument, **kwargs):
    """`factory(weights=..., **kwargs)` with `weights` None, "imagenet" or a local weights file.

    Args:
        factory: a keras.applications constructor (ResNet50, MobileNetV3Large, ...).
        weights: None (random), "imagenet" (downloaded by Keras) or the path of a weights
            file in the layout of the one keras.applications downloads (module docstring).
        argument: the user-facing argument name for errors ("backbone_weights", ...).
        **kwargs: the constructor's other arguments (include_top=False, input_shape, ...).

    Returns:
        The keras.applications model with the weights loaded.

    Raises:
        ValueError: `weights` of another type, a file that is not HDF5, not in that layout or
            made for another network; FileNotFoundError: a path that does not exist.
    """
    if weights is None or weights == "imagenet":
        return factory(weights=weights, **kwargs)
    model = factory(weights=None, **kwargs)
    load_application_weights(model, weights, argument)
    return model


def load_application_weights(model, path, argument="weights"):
    """Loads a keras.applications weights file (module docstring) into `model`, checked first.

    Args:
        model: the keras.applications model the file was saved from (same include_top).
        path: str or os.PathLike, a .h5 / .hdf5 file.
        argument: the user-facing argument name for errors.

    Raises:
        FileNotFoundError, ValueError: naming the argument, the file, what was seen and what
            was expected.
    """
    expected = (f"the HDF5 weights file keras.applications downloads for {model.name} "
                f"({DOWNLOADED_FILES.get(model.name, 'the include_top=False file')})")
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{argument}={path!r}: expected None, 'imagenet' or the path of {expected}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument}={path!r}: file not found; expected None, 'imagenet' or the path of "
                                f"{expected}")
    if not path.lower().endswith((".h5", ".hdf5")) or path.lower().endswith(".weights.h5"):
        raise ValueError(f"{argument}={path!r}: a file named {os.path.basename(path)!r}; expected {expected}, named "
                         "*.h5 (Keras 3 *.weights.h5 files hold another layout)")
    saved = _saved_layers(path, argument, expected)
    wanted = [(layer.name, [tuple(w.shape) for w in layer.trainable_weights + layer.non_trainable_weights])
              for layer in model.layers]
    wanted = [(name, shapes) for name, shapes in wanted if shapes]
    if len(saved) != len(wanted):
        raise ValueError(f"{argument}={path!r}: {len(saved)} layers with weights (first {[n for n, _ in saved[:_SHOW]]}"
                         f"), expected the {len(wanted)} of {model.name} (first {[n for n, _ in wanted[:_SHOW]]}): "
                         f"expected {expected}")
    for index, ((saved_name, saved_shapes), (name, shapes)) in enumerate(zip(saved, wanted)):
        if saved_shapes != shapes:
            raise ValueError(f"{argument}={path!r}: layer {index} with weights, {saved_name!r}, holds shapes "
                             f"{saved_shapes}; {model.name} expects {shapes} for its layer {name!r}: expected "
                             f"{expected}")
    model.load_weights(path)


def _saved_layers(path, argument, expected):
    """[(layer name, [weight shapes])] of the file's layers that hold weights, in file order."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise ValueError(f"{argument}={path!r}: an HDF5 file without the root attribute 'layer_names' "
                                 f"(top-level keys {sorted(f)[:_SHOW]}); expected {expected}")
            layers = []
            for name in group.attrs["layer_names"]:
                name = name.decode("utf8") if isinstance(name, bytes) else str(name)
                weight_names = group[name].attrs.get("weight_names", [])
                shapes = [tuple(group[name][w.decode("utf8") if isinstance(w, bytes) else w].shape)
                          for w in weight_names]
                if shapes:
                    layers.append((name, shapes))
            return layers
    except (OSError, KeyError) as err:  # not HDF5, truncated, a layer group or weight missing
        raise ValueError(f"{argument}={path!r}: cannot read it as a Keras HDF5 weights file: {type(err).__name__}: "
                         f"{err}; expected {expected}") from None
