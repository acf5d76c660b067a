"""Fuzz targets of what a run reads back and how a cluster is described: run.json, TF_CONFIG
and the arguments of `kseg launch`."""

import json
import os
from pathlib import Path

from tests.fuzzing.engine import Target
from tests.fuzzing.mutators import mutate_json_text, mutate_tree

# ----------------------------------------------------------------------------- run.json


def _run_seeds(folder):
    """run.json trees of a semantic, an instance and a panoptic run, as kseg train writes them."""
    from kseg.training import DataSpec
    from kseg.training.detection_spec import InstanceDataSpec, PanopticDataSpec

    train = {"epochs": 2, "steps_per_epoch": 3, "batch_size": 2, "schedule": "cosine", "augment": True, "seed": 0,
             "strategy": "default", "replicas": 1, "learning_rate": 0.001}
    semantic = DataSpec(images="/data/img", masks="/data/ann", num_classes=3, image_size=(64, 96), ignore_class=255,
                        remap={0: 0, 255: 1}, class_names=["a", "b", "c"], crop_size=(32, 32), channels=1)
    categories = [{"id": 1, "name": "circle", "coco_id": None}, {"id": 2, "name": "square", "coco_id": None}]
    instance = InstanceDataSpec(source="coco", coco_json="/data/i.json", images="/data/img", image_size=(64, 96),
                                max_instances=8, class_names=["circle", "square"])
    panoptic = PanopticDataSpec(source="shapes", shapes=10, image_size=(64, 64))
    stuff = [{"id": 1, "name": "circle", "isthing": 1, "coco_id": 3}, {"id": 2, "name": "sky", "isthing": 0,
                                                                     "coco_id": 9}]
    return [
        {"data": semantic.to_json(), "model": {"name": "unet", "kwargs": {"filters": 8}, "params": 1000},
         "train": {**train, "loss": "ce", "class_weights": None}},
        {"task": "instance", "data": instance.to_json(), "categories": categories,
         "model": {"name": "mask_rcnn", "config": "small", "kwargs": {}, "params": 1000}, "train": train},
        {"task": "panoptic", "data": panoptic.to_json(), "categories": stuff,
         "model": {"name": "panoptic_fpn", "config": "small", "kwargs": {}, "params": 1000}, "train": train},
    ]


def _run_case(rng, seeds, folder):
    tree = rng.choice(seeds)
    path = Path(folder) / "run.json"
    path.write_bytes(mutate_json_text(rng, tree, others=seeds))
    return {"run": str(folder), "names": [str(path)]}


def _parse_run(case):
    """What `kseg evaluate` / `predict` / `export` do with a run folder: kseg.tasks.load_run (its task, then
    that task's loader)."""
    from kseg import tasks

    info = tasks.load_run(case["run"])
    if info.task == "semantic":
        _check_semantic(info.spec)
    else:
        _check_categories(info.run_json)
    return info.task


def _is_int(value, low):
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def _check_semantic(spec):
    """What evaluate / predict / export use of a semantic DataSpec, in the types they need."""
    for name in ("images", "masks"):
        assert isinstance(getattr(spec, name), str), f"{name} {getattr(spec, name)!r} is not a path"
    for name in ("val_images", "val_masks"):
        assert getattr(spec, name) is None or isinstance(getattr(spec, name), str), f"{name} is not a path"
    assert _is_int(spec.num_classes, 1), f"num_classes {spec.num_classes!r}"
    assert spec.channels in (1, 3) and not isinstance(spec.channels, bool), f"channels {spec.channels!r}"
    for name in ("image_size", "crop_size"):
        size = getattr(spec, name)
        assert size is None or (len(size) == 2 and all(_is_int(s, 1) for s in size)), f"{name} {size!r}"
    assert spec.ignore_class is None or _is_int(spec.ignore_class, 0), f"ignore_class {spec.ignore_class!r}"
    assert spec.remap is None or all(_is_int(k, 0) and _is_int(v, 0) for k, v in spec.remap.items()), \
        f"remap {spec.remap!r}"
    assert spec.class_names is None or all(isinstance(n, str) for n in spec.class_names), "class_names"
    assert isinstance(spec.val_fraction, (int, float)) and 0 < spec.val_fraction < 1, \
        f"val_fraction {spec.val_fraction!r}"
    assert _is_int(spec.split_seed, None), f"split_seed {spec.split_seed!r}"  # any int: it is hashed


def _check_categories(run):
    categories = run.get("categories")
    assert isinstance(categories, list) and categories and all(
        isinstance(c, dict) and _is_int(c.get("id"), 1) and isinstance(c.get("name"), str) for c in categories), \
        f"categories {str(categories)[:80]}"
    size = run["data"].image_size
    assert len(size) == 2 and all(_is_int(s, 32) for s in size), f"image_size {size!r}"


# ----------------------------------------------------------------------------- TF_CONFIG


def _cluster_seeds(folder):
    from kseg.launch import tf_config

    workers = [tf_config([f"127.0.0.1:{2000 + i}" for i in range(n)], n - 1) for n in (1, 2, 3)]
    chief = {"cluster": {"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.2:2222", "10.0.0.3:2222"]},
             "task": {"type": "worker", "index": 1}}
    return [json.loads(text) for text in workers] + [chief]


def _cluster_case(rng, seeds, folder):
    text = mutate_json_text(rng, rng.choice(seeds), others=seeds)
    return {"text": text.replace(b"\0", b""), "names": ["TF_CONFIG"]}


def _parse_cluster(case):
    """check_tf_config; what it accepts must also satisfy TensorFlow's resolver and kseg's worker()."""
    from types import SimpleNamespace

    from tensorflow.python.distribute.cluster_resolver import TFConfigClusterResolver

    from kseg.training.strategy import check_tf_config, worker

    os.environb[b"TF_CONFIG"] = case["text"]
    try:
        check_tf_config()
        try:
            resolver = TFConfigClusterResolver()
            resolver.cluster_spec()
            index, count, _ = worker(SimpleNamespace(cluster_resolver=resolver))
        except Exception as err:
            raise AssertionError(f"check_tf_config accepted it, then {type(err).__name__}: {str(err)[:200]}") from None
        assert 0 <= index < count, f"worker index {index} of {count}"
    finally:
        del os.environ["TF_CONFIG"]


# ----------------------------------------------------------------------------- kseg launch arguments


_FLAGS = ("--strategy", "--strategy=multi-worker", "--strategy=mirrored", "multi-worker", "--cpu-replicas",
          "--cpu-replicas=2", "--", "train", "evaluate", "", "-n", "--output", "--task", "instance")


def _launch_seeds(folder):
    return [["train", "--images", "img", "--masks", "ann", "--num-classes", "2", "--epochs", "1"],
            ["--", "train", "--task", "instance", "--shapes", "20", "--strategy", "multi-worker"]]


def _launch_case(rng, seeds, folder):
    args = list(rng.choice(seeds))
    if rng.random() < 0.5:
        tree = mutate_tree(rng, args)
        args = [str(a) for a in (tree if isinstance(tree, list) else [tree]) if not isinstance(a, (list, dict))]
    for _ in range(rng.randint(0, 3)):
        args.insert(rng.randint(0, len(args)), rng.choice(_FLAGS))
    return {"args": args, "names": ["kseg launch", "--strategy", "--cpu-replicas"]}


def _parse_launch(case):
    from kseg.launch import worker_command

    command = worker_command(case["args"])
    assert command[0] == "train", f"worker command {command[:3]}"
    values = [a.split("=", 1)[1] if a.startswith("--strategy=") else (command[i + 1:] or [None])[0]
              for i, a in enumerate(command) if a == "--strategy" or a.startswith("--strategy=")]
    assert values and set(values) == {"multi-worker"}, f"worker command has --strategy {values}"
    assert not any(a.startswith("--cpu-replicas") for a in command), "worker command keeps --cpu-replicas"


TARGETS = {
    "run_json": Target("run_json", "run.json of semantic, instance and panoptic runs: kseg.tasks.load_run (the "
                       "task lookup, then the task's loader)", _run_seeds, _run_case, _parse_run,
                       errors=(ValueError, FileNotFoundError)),
    "tf_config": Target("tf_config", "kseg.training.strategy.check_tf_config on mutated TF_CONFIG, then TF's "
                        "resolver and kseg's worker index", _cluster_seeds, _cluster_case, _parse_cluster),
    "launch_args": Target("launch_args", "kseg.launch.worker_command on mutated `kseg launch -- train ...` arguments",
                          _launch_seeds, _launch_case, _parse_launch),
}
