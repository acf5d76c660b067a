"""Fine-tuning: a run's model built from a .keras file's architecture and weights (`kseg train --init`).

The file gives the architecture (its class and constructor config) and every weight; the run
gives its class count and input size. What differs is said, never guessed:

    family        the file's class must be the one the run trains (semantic: UNet, MobileUNet
                  or SegFormer; instance: MaskRCNN or TorchvisionMaskRCNN (`kseg convert` of a
                  torchvision checkpoint); panoptic: PanopticFPN, or MaskFormer with
                  --model maskformer); flags that pick an architecture (--model, --model-config) must
                  name the file's, else the error lists the settings that differ
    num_classes   when the run's differs, every weight whose shape follows the class count
                  (the classifiers: logits, per-class box deltas and mask logits) is left
                  initialised, the rest is loaded, and a UserWarning names those weights
    input size    convolutional and attention weights do not depend on it: the model is
                  rebuilt at the run's size and a UserWarning says so; input channels must match

Weights are matched in model order (one constructor config gives one variable order) and
checked by shape, so an error names the weight, its shape in the file and in the run.
"""

import os
import warnings

import keras

# Constructor arguments that download or read weights: the file's weights replace them.
_WEIGHT_ARGUMENTS = ("backbone_weights", "encoder_weights")
_SIZE_KEYS = ("input_shape", "image_size")
# The models of the instance and panoptic tasks; every other name of kseg.models.MODEL_NAMES is semantic.
DETECTOR_NAMES = ("mask_rcnn", "panoptic_fpn", "maskformer")
_SHOW = 8


def load_init_model(path, argument="`init`"):
    """The model of a .keras file, loaded as kseg saves them (safe mode, kseg classes registered).

    Raises:
        FileNotFoundError, ValueError: naming `argument` and the file.
    """
    import kseg.losses  # noqa: F401  (registers the classes a .keras file names)
    import kseg.metrics  # noqa: F401
    import kseg.models  # noqa: F401

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument} {path}: file not found; expected a .keras model (kseg train, "
                                "kseg convert)")
    if not path.endswith(".keras"):
        raise ValueError(f"{argument} {path}: expected a .keras model file (kseg convert turns checkpoints into one)")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as err:
        raise ValueError(f"{argument} {path}: cannot load it: {type(err).__name__}: {err}; expected a .keras file "
                         "written by kseg") from None


def init_model(path, *, num_classes, size, families, expected=None, overrides=None, argument="`init`"):
    """A model with the architecture and weights of `path`, for `num_classes` and `size`.

    Args:
        path: the .keras file.
        num_classes: K of the run.
        size: the run's (H, W) or (H, W, C) (whichever the model's size argument holds); None
            entries (a semantic run at file sizes) keep the file's.
        families: classes the task trains; the file's model must be an instance of one.
        expected: None, or (flag text, class, {config key: value}) that the run's flags ask
            for (e.g. ("`model` segformer_b0", SegFormer, {"variant": "b0"})).
        overrides: constructor arguments set on top of the file's (`model_kwargs`).
        argument: the argument, for messages.

    Returns:
        (model, report): report {"path", "model", "loaded", "left_initialised" [names],
        "num_classes" [file, run], "size" [file, run]}.

    Raises:
        ValueError: naming the argument, the file and what does not fit.
    """
    source = load_init_model(path, argument)
    name = type(source).__name__
    # The exact class: a subclass may train another task. A PanopticFPN holds a MaskRCNN (its
    # `detector`) but is none, so an instance run refuses its file here.
    if type(source) not in tuple(families):
        raise ValueError(f"{argument} {path}: holds a {name}; this task trains "
                         f"{' or '.join(f.__name__ for f in families)}")
    config = source.get_config()
    if expected is not None:
        flag, cls, settings = expected
        differ = [f"{k}: file {config.get(k)!r}, run {v!r}" for k, v in settings.items()
                  if _plain(config.get(k)) != _plain(v)]
        if type(source) is not cls or differ:
            asked = ", ".join(f"{k}={v!r}" for k, v in settings.items())
            raise ValueError(f"{argument} {path}: {flag} asks for a {cls.__name__} "
                             f"{'with ' + asked if settings else ''} but "
                             f"the file holds a {name}{': ' + '; '.join(differ) if differ else ''}. Leave {flag} out "
                             "(the file gives the architecture) or name the file's")
    size_key = next((k for k in _SIZE_KEYS if k in config), None)
    if "num_classes" not in config or size_key is None:
        raise ValueError(f"{argument} {path}: a {name} without num_classes or an input size in its config")
    old_size = tuple(config[size_key])
    new_size = tuple(old if run is None else int(run) for old, run in zip(old_size, tuple(size) + old_size[len(size):]))
    shown = len(size)  # sizes as the run gives them: (H, W) of a detector, (H, W, C) of a semantic model
    if len(old_size) == 3 and new_size[2] != old_size[2]:
        raise ValueError(f"{argument} {path}: the {name} takes {old_size[2]} input channel(s), the run "
                         f"{new_size[2]} (`channels`)")
    config.update(num_classes=int(num_classes), **{size_key: list(new_size)})
    config.update({k: None for k in _WEIGHT_ARGUMENTS if k in config})
    unknown = sorted(set(overrides or {}) - set(config))
    if unknown:
        raise ValueError(f"`model_kwargs` {', '.join(unknown)}: not arguments of the {name} in {path}; expected some "
                         f"of {sorted(config)}")
    config.update(overrides or {})
    try:
        model = type(source).from_config(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{argument} {path}: cannot rebuild its {name} for {num_classes} classes at "
                         f"{'x'.join(map(str, new_size[:shown]))}: {err}") from None
    old_k = source.get_config()["num_classes"]
    reset = copy_weights(source, model, old_k, int(num_classes), f"{argument} {path}")
    report = {"path": os.path.abspath(path), "model": name, "loaded": len(model.weights) - len(reset),
              "left_initialised": reset, "num_classes": [old_k, int(num_classes)],
              "size": [list(old_size[:shown]), list(new_size[:shown])]}
    if reset:
        warnings.warn(f"{argument} {path}: the file's {name} classifies {old_k} classes, the run {num_classes}: "
                      f"loaded {report['loaded']} weights, left the {len(reset)} classifier weight(s) initialised: "
                      f"{', '.join(reset[:_SHOW])}", stacklevel=2)
    if new_size != old_size:
        warnings.warn(f"{argument} {path}: the file's {name} was built for {'x'.join(map(str, old_size[:shown]))}, "
                      f"the run is {'x'.join(map(str, new_size[:shown]))}: rebuilt at the run's size with the same "
                      "weights", stacklevel=2)
    return model, report


def copy_weights(source, target, source_classes, target_classes, where):
    """Copies `source`'s weights into `target` in model order; returns the names left initialised.

    A weight of another shape is left initialised only when the class counts differ and every
    axis that differs is m per class (m * (K_file - K_run) apart, a multiple of m in the run:
    logits [.., K] or [.., K + 1], box deltas [.., 4 (K + 1)]); anything else raises.
    """
    if len(source.weights) != len(target.weights):
        raise ValueError(f"{where}: {len(source.weights)} weights in the file, {len(target.weights)} in the run's "
                         f"model; expected one architecture")
    values, reset, wrong = [], [], []
    for have, want in zip(source.weights, target.weights):
        have_shape, want_shape = tuple(have.shape), tuple(want.shape)
        if have_shape == want_shape:
            values.append(have.numpy() if hasattr(have, "numpy") else keras.ops.convert_to_numpy(have))
        elif _per_class(have_shape, want_shape, source_classes, target_classes):
            values.append(None)
            reset.append(want.path)
        else:
            wrong.append(f"{want.path}: file {list(have_shape)}, run {list(want_shape)}")
    if wrong:
        raise ValueError(f"{where}: {len(wrong)} weight(s) of another shape than the run's model "
                         f"({'not' if source_classes == target_classes else 'not only'} the classifier): "
                         f"{'; '.join(wrong[:_SHOW])}")
    for variable, value in zip(target.weights, values):
        if value is not None:
            variable.assign(value)
    return reset


def _plain(value):
    """Tuples as lists, recursively (a config read back from JSON holds lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _per_class(have, want, have_classes, want_classes):
    """Whether shapes `have` and `want` differ only on axes that count classes."""
    delta = have_classes - want_classes
    if not delta or len(have) != len(want):
        return False
    for a, b in zip(have, want):
        if a == b:
            continue
        step, rest = divmod(a - b, delta)
        if rest or step < 1 or b % step:
            return False
    return True


def task_families(model_name):
    """The model classes a run trains, by run.json's model name: "semantic" (any semantic model),
    "mask_rcnn", "panoptic_fpn" or "maskformer" (the classes --init files may hold)."""
    if model_name == "semantic":
        from kseg.models import MODEL_NAMES, model_class

        return tuple(dict.fromkeys(model_class(name) for name in MODEL_NAMES if name not in DETECTOR_NAMES))
    if model_name == "mask_rcnn":
        from kseg.models.mask_rcnn import MaskRCNN, TorchvisionMaskRCNN

        return (MaskRCNN, TorchvisionMaskRCNN)
    if model_name == "maskformer":
        from kseg.models.maskformer import MaskFormer

        return (MaskFormer,)
    from kseg.models.panoptic_fpn import PanopticFPN

    return (PanopticFPN,)


def model_expectation(model):
    """`init_model`'s `expected` for a semantic --model name (None: no --model given)."""
    if model is None:
        return None
    from kseg.models import MODEL_NAMES, model_arguments, model_class

    if model not in MODEL_NAMES or model in DETECTOR_NAMES:
        raise ValueError(f"`model` {model!r}: expected one of "
                         f"{', '.join(n for n in MODEL_NAMES if n not in DETECTOR_NAMES)}")
    return f"`model` {model}", model_class(model), model_arguments(model)


def config_expectation(config_name, configs, cls):
    """`init_model`'s `expected` for a detector --model-config name (None: not given)."""
    if config_name is None:
        return None
    if config_name not in configs:
        raise ValueError(f"`preset` {config_name!r}, expected one of {', '.join(configs)}")
    return f"`preset` {config_name}", cls, configs[config_name]
