"""`kseg train --init MODEL.keras` (kseg.training.finetune): start from a file's architecture and weights."""

import json
import warnings

import keras
import numpy as np
import pytest

from kseg import cli
from kseg.models import build_model
from kseg.models.segformer import SegFormer
from kseg.models.unet import MobileUNet, UNet
from kseg.training.finetune import init_model, model_expectation, task_families

SEGFORMER = dict(variant=None, widths=[8, 16, 40, 64], depths=[1, 1, 1, 1], decoder_channels=16)


def saved(model, tmp_path, name="init.keras"):
    path = tmp_path / name
    model.save(path)
    return path


def weights_of(model):
    return {w.path: np.asarray(w) for w in model.weights}


def test_same_classes_and_size_load_every_weight(tmp_path):
    source = SegFormer(num_classes=3, input_shape=(64, 64, 3), **SEGFORMER)
    path = saved(source, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say
        model, report = init_model(path, num_classes=3, size=(64, 64, 3), families=task_families("semantic"))
    assert type(model) is SegFormer and model.get_config() == source.get_config()
    assert report["loaded"] == len(model.weights) and report["left_initialised"] == []
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(model.predict(images, verbose=0), source.predict(images, verbose=0))


def test_other_classes_leave_only_the_classifier_and_other_size_is_said(tmp_path):
    source = build_model("mask_rcnn", "small", num_classes=2, input_shape=(64, 64, 3))
    path = saved(source, tmp_path)
    with pytest.warns(UserWarning) as said:
        model, report = init_model(path, num_classes=4, size=(96, 128), families=task_families("mask_rcnn"))
    messages = [str(w.message) for w in said]
    assert any("classifies 2 classes, the run 4" in m and "box_head/class_logits/kernel" in m for m in messages)
    assert any("built for 64x64, the run is 96x128" in m for m in messages)
    assert model.num_classes == 4 and tuple(model.image_size) == (96, 128)
    classifier = {"box_head/class_logits/kernel", "box_head/class_logits/bias", "box_head/box_deltas/kernel",
                  "box_head/box_deltas/bias", "mask_head/mask_logits/kernel", "mask_head/mask_logits/bias"}
    assert set(report["left_initialised"]) == classifier
    want, got = weights_of(source), weights_of(model)
    for name, value in got.items():
        if name not in classifier:
            np.testing.assert_array_equal(value, want[name], err_msg=name)
    assert report["num_classes"] == [2, 4] and report["size"] == [[64, 64], [96, 128]]


def test_an_instance_run_refuses_a_panoptic_fpn_file(tmp_path):
    """A PanopticFPN holds a MaskRCNN (its `detector`) but is none: an instance run refuses its file."""
    panoptic = build_model("panoptic_fpn", "small", num_classes=2, num_stuff_classes=2, input_shape=(64, 64, 3),
                           semantic_channels=16)
    path = saved(panoptic, tmp_path, "panoptic.keras")
    with pytest.raises(ValueError, match=r"`init` .*panoptic.keras: holds a PanopticFPN; this task trains "
                                         r"MaskRCNN or TorchvisionMaskRCNN"):
        init_model(path, num_classes=2, size=(64, 64), families=task_families("mask_rcnn"))
    assert type(init_model(path, num_classes=2, size=(64, 64), families=task_families("panoptic_fpn"))[0]) is \
        type(panoptic)
    assert set(task_families("semantic")) == {UNet, MobileUNet, SegFormer}


def test_mismatches_are_named(tmp_path):
    unet = saved(UNet(num_classes=2, input_shape=(32, 32, 1), depth=2, filters=4), tmp_path, "unet.keras")
    semantic = task_families("semantic")
    with pytest.raises(ValueError, match=r"`init` .*unet.keras: holds a UNet; this task trains MaskRCNN"):
        init_model(unet, num_classes=2, size=(64, 64), families=task_families("mask_rcnn"))
    with pytest.raises(ValueError, match=r"takes 1 input channel\(s\), the run 3 \(`channels`\)"):
        init_model(unet, num_classes=2, size=(32, 32, 3), families=semantic)
    with pytest.raises(ValueError, match=r"`model` segformer_b0 asks for a SegFormer with variant='b0' but the file "
                                         r"holds a UNet"):
        init_model(unet, num_classes=2, size=(32, 32, 1), families=semantic, expected=model_expectation("segformer_b0"))
    segformer = saved(SegFormer(num_classes=3, input_shape=(64, 64, 3), **SEGFORMER), tmp_path, "segformer.keras")
    with pytest.raises(ValueError, match=r"variant: file None, run 'b0'"):
        init_model(segformer, num_classes=3, size=(64, 64, 3), families=semantic,
                   expected=model_expectation("segformer_b0"))
    with pytest.raises(ValueError, match=r"`model_kwargs` no_such: not arguments of the SegFormer"):
        init_model(segformer, num_classes=3, size=(64, 64, 3), families=semantic, overrides={"no_such": 1})
    with pytest.raises(FileNotFoundError, match=r"`init` .*missing.keras: file not found"):
        init_model(tmp_path / "missing.keras", num_classes=3, size=(64, 64, 3), families=semantic)
    (tmp_path / "broken.keras").write_text("not a zip")
    with pytest.raises(ValueError, match=r"`init` .*broken.keras: cannot load it"):
        init_model(tmp_path / "broken.keras", num_classes=3, size=(64, 64, 3), families=semantic)


def test_a_weight_of_another_shape_is_named(tmp_path):
    a = saved(UNet(num_classes=2, input_shape=(32, 32, 3), depth=2, filters=4), tmp_path, "a.keras")
    source = keras.models.load_model(a)
    target = UNet(num_classes=2, input_shape=(32, 32, 3), depth=2, filters=8)
    from kseg.training.finetune import copy_weights

    with pytest.raises(ValueError, match=r"weight\(s\) of another shape than the run's model \(not the classifier\): "
                                         r".*kernel: file \[3, 3, 3, 4\], run \[3, 3, 3, 8\]"):
        copy_weights(source, target, 2, 2, "--init a.keras")


def _trainable(model):
    return [np.asarray(w) for w in model.trainable_weights]


@pytest.mark.slow
def test_cli_instance_run_starts_from_the_file(tmp_path, capsys):
    """With a zero learning rate, training leaves the trainable weights where they started: the
    file's (the classifier of the new class count aside), not a fresh initialisation."""
    source = build_model("mask_rcnn", "small", num_classes=2, input_shape=(64, 64, 3))
    path = saved(source, tmp_path)
    common = ["train", "--task", "instance", "--shapes", "8", "--image-size", "64", "--epochs", "1",
              "--steps-per-epoch", "1", "--batch-size", "2", "--lr", "0", "--quiet"]
    with pytest.warns(UserWarning, match="classifies 2 classes, the run 3"):
        assert cli.main([*common, "--init", str(path), "--output", str(tmp_path / "init")]) == 0
    run = json.loads((tmp_path / "init/run.json").read_text())
    assert run["init"]["model"] == "MaskRCNN" and run["init"]["num_classes"] == [2, 3]
    final = keras.models.load_model(tmp_path / "init/final.keras")
    reset = set(run["init"]["left_initialised"])
    want = weights_of(source)
    for w in final.trainable_weights:
        if w.path not in reset:
            np.testing.assert_array_equal(np.asarray(w), want[w.path], err_msg=w.path)
    assert cli.main([*common, "--output", str(tmp_path / "scratch")]) == 0
    scratch = keras.models.load_model(tmp_path / "scratch/final.keras")
    conv = next(w.path for w in scratch.trainable_weights if w.path.endswith("kernel") and w.path not in reset)
    assert not np.array_equal(weights_of(scratch)[conv], want[conv])
    assert json.loads((tmp_path / "scratch/run.json").read_text())["init"] is None
    code = cli.main([*common, "--init", str(path), "--model-config", "mobilenet", "--output", str(tmp_path / "bad")])
    assert code == 2 and "--model-config mobilenet asks for a MaskRCNN" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_semantic_run_starts_from_the_file(tmp_path, capsys):
    from tests.training.test_training import write_blob_folder

    images, masks = write_blob_folder(tmp_path / "data", count=6)
    source = UNet(num_classes=2, input_shape=(32, 32, 1), depth=2, filters=4)
    path = saved(source, tmp_path)
    assert cli.main(["train", "--images", str(images), "--masks", str(masks), "--num-classes", "2", "--remap",
                     "0:0,255:1", "--channels", "1", "--image-size", "32", "--epochs", "1", "--batch-size", "2",
                     "--lr", "0", "--init", str(path), "--output", str(tmp_path / "run"), "--quiet"]) == 0
    final = keras.models.load_model(tmp_path / "run/final.keras")
    for got, want in zip(_trainable(final), _trainable(source)):
        np.testing.assert_array_equal(got, want)
    run = json.loads((tmp_path / "run/run.json").read_text())
    assert run["model"]["name"] == "UNet" and run["init"]["loaded"] == len(source.weights)


@pytest.mark.slow
def test_cli_fine_tunes_a_converted_torchvision_mask_rcnn(tmp_path):
    """--init with a TorchvisionMaskRCNN (what `kseg convert` writes from torchvision's 91-class
    checkpoint; here the fixture's seeded weights at 64 x 64): two steps on 3 shapes classes leave
    the classifier initialised and then trained, move every other trainable weight, keep the
    frozen stem, layer1 and batch norms as in the file, and the run evaluates."""
    from tests.models.test_mask_rcnn_torchvision import tiny_seeded_model

    source = tiny_seeded_model()
    path = saved(source, tmp_path, "tv.keras")
    run_dir = tmp_path / "run"
    with pytest.warns(UserWarning, match="TorchvisionMaskRCNN classifies 90 classes, the run 3"):
        assert cli.main(["train", "--task", "instance", "--shapes", "6", "--image-size", "64", "--epochs", "1",
                         "--steps-per-epoch", "2", "--batch-size", "2", "--init", str(path), "--output", str(run_dir),
                         "--quiet"]) == 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["init"]["model"] == "TorchvisionMaskRCNN" and run["init"]["num_classes"] == [90, 3]
    assert set(run["init"]["left_initialised"]) == {f"{head}/{w}" for head in ("box_head/class_logits",
                                                                                "box_head/box_deltas",
                                                                                "mask_head/mask_logits")
                                                    for w in ("kernel", "bias")}
    final = keras.models.load_model(run_dir / "final.keras")
    assert type(final) is type(source) and final.num_classes == 3
    want, trainable = weights_of(source), {w.path for w in final.trainable_weights}
    assert len(trainable) == 84  # layer2..layer4 convs, FPN, RPN, box and mask heads
    for w in final.weights:
        if w.path not in trainable:
            np.testing.assert_array_equal(np.asarray(w), want[w.path], err_msg=w.path)
    reset = set(run["init"]["left_initialised"])
    unmoved = [w.path for w in final.trainable_weights
               if w.path not in reset and np.array_equal(np.asarray(w), want[w.path])]
    assert unmoved == []
    assert cli.main(["evaluate", "--run", str(run_dir), "--quiet"]) == 0
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert report["images"] == run["train"]["val_images"] and report["segm"]["AP"] is not None
