"""ImageNet backbones from a local file: `backbone_weights=` / `encoder_weights=` take the HDF5
file keras.applications downloads (no network here: the tests write a file of the same layout)."""

import h5py
import keras
import numpy as np
import pytest

from kseg.backbones import build_backbone
from kseg.backbones.application_weights import load_application_weights
from kseg.models.unet import MobileUNet

RESNET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
MOBILENET_FILE = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"


def write_download_layout(model, path, seed=0):
    """Writes `model`'s weights, perturbed, as the legacy HDF5 file keras.applications downloads:
    root attrs layer_names / backend / keras_version, one group per layer with attr weight_names
    and one dataset per `<layer>/<weight>:0`. Returns {layer name: [arrays]} as written."""
    rng = np.random.default_rng(seed)
    written = {}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode("utf8") for layer in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            names = [f"{layer.name}/{w.name}:0" for w in weights]
            group.attrs["weight_names"] = [n.encode("utf8") for n in names]
            values = [np.asarray(w) + rng.normal(0, 0.1, w.shape).astype("float32") for w in weights]
            if "moving_variance" in " ".join(names):  # variances stay positive
                values = [np.abs(v) + 0.5 if n.endswith("moving_variance:0") else v for n, v in zip(names, values)]
            for name, value in zip(names, values):
                group.create_dataset(name, data=value)
            if values:
                written[layer.name] = values
    return written


def assert_loaded(model, written):
    for name, values in written.items():
        for got, want in zip(model.get_layer(name).get_weights(), values):
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.slow
def test_resnet50_backbone_loads_the_file(tmp_path):
    path = tmp_path / RESNET_FILE
    written = write_download_layout(keras.applications.ResNet50(include_top=False, weights=None,
                                                                input_shape=(64, 64, 3)), path)
    backbone = build_backbone("resnet50", (64, 64, 3), weights=str(path))
    assert len(written) == 106  # every conv and batch norm of ResNet-50 without the top
    assert_loaded(backbone.get_layer("resnet50"), written)
    fresh = build_backbone("resnet50", (64, 64, 3))
    assert not np.array_equal(fresh.get_layer("resnet50").get_layer("conv1_conv").get_weights()[0],
                              written["conv1_conv"][0])


def test_mobile_unet_and_mobilenet_backbone_load_the_file(tmp_path):
    path = tmp_path / MOBILENET_FILE
    written = write_download_layout(keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(64, 64, 3), include_preprocessing=True), path)
    unet = MobileUNet(num_classes=2, input_shape=(64, 64, 3), encoder="mobilenetv3_small", encoder_weights=str(path))
    assert_loaded(unet.get_layer("mobilenetv3_small_encoder"), written)
    assert unet.get_config()["encoder_weights"] is None  # a saved model never needs the file again
    backbone = build_backbone("mobilenet_v3_small", (64, 64, 3), weights=str(path))
    assert_loaded(backbone.get_layer("mobilenet_v3_small"), written)


def test_wrong_files_fail_naming_the_file(tmp_path):
    small = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(64, 64, 3))
    large = keras.applications.MobileNetV3Large(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / MOBILENET_FILE
    write_download_layout(small, path)
    with pytest.raises(ValueError, match=rf"weights=.*{MOBILENET_FILE}.*: \d+ layers with weights .*expected the "
                                         r"\d+ of MobileNetV3Large"):
        load_application_weights(large, path)
    with pytest.raises(FileNotFoundError, match=r"encoder_weights='.*missing.h5': file not found"):
        MobileUNet(num_classes=2, input_shape=(64, 64, 3), encoder_weights=str(tmp_path / "missing.h5"))
    with pytest.raises(FileNotFoundError, match=r"backbone_weights='.*missing.h5': file not found"):
        build_backbone("mobilenet_v3_small", (64, 64, 3), weights=str(tmp_path / "missing.h5"))
    text = tmp_path / "not_hdf5.h5"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"not_hdf5.h5'.*cannot read it as a Keras HDF5 weights file"):
        load_application_weights(small, text)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.h5'.*without the root attribute 'layer_names' \(top-level keys "
                                         r"\['x'\]\)"):
        load_application_weights(small, tmp_path / "other.h5")
    with h5py.File(path, "r+") as f:  # one kernel of the wrong shape
        text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731  (h5py versions differ)
        name = next(text(n) for n in f.attrs["layer_names"] if len(f[text(n)].attrs["weight_names"]))
        weight = text(f[name].attrs["weight_names"][0])
        shape = f[name][weight].shape
        del f[name][weight]
        f[name].create_dataset(weight, data=np.zeros((1,) + shape[1:], "float32"))
    with pytest.raises(ValueError, match=rf"layer 0 with weights, '{name}', holds shapes \[\(1,"):
        load_application_weights(small, path)
    small.save_weights(tmp_path / "keras3.weights.h5")
    with pytest.raises(ValueError, match=r"Keras 3 \*.weights.h5 files hold another layout"):
        load_application_weights(small, tmp_path / "keras3.weights.h5")
    with pytest.raises(ValueError, match=r"encoder_weights.*must be None, \"imagenet\" or a weights file path"):
        MobileUNet(num_classes=2, input_shape=(64, 64, 3), encoder_weights=3)


def test_a_saved_detector_reloads_without_the_file(tmp_path):
    from kseg.models import build_model

    path = tmp_path / MOBILENET_FILE
    written = write_download_layout(keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(64, 64, 3), include_preprocessing=True), path)
    model = build_model("mask_rcnn", "small", num_classes=2, input_shape=(64, 64, 3), backbone="mobilenet_v3_small",
                        backbone_weights=str(path))
    assert_loaded(model.get_layer("mobilenet_v3_small_backbone").get_layer("mobilenet_v3_small"), written)
    model.save(tmp_path / "detector.keras")
    path.unlink()  # the .keras file holds the weights; its config names no file to read again
    restored = keras.models.load_model(tmp_path / "detector.keras")
    assert restored.get_config()["backbone"] == "mobilenet_v3_small"  # a name: no weights file to read again
    assert_loaded(restored.get_layer("mobilenet_v3_small_backbone").get_layer("mobilenet_v3_small"), written)
