"""A bounded sample of the parser fuzzer (benchmarks/fuzz_parsers.py runs thousands per parser).

Every parser a user's file reaches gets a few dozen mutated inputs (tests/fuzzing/targets.py,
TEST_COUNTS); each must end handled or as a clear error (the documented error type, naming
the file, no traceback), never as a crash: another exception, a hang, or a dead child
process. The parsers run in one spawned child process (tests/fuzzing/engine.py).
"""

import pytest

from tests.fuzzing.engine import ROOT, Target, Worker, classify, fuzz
from tests.fuzzing.mutators import mutate_bytes, mutate_tree, odd_png
from tests.fuzzing.targets import TARGETS, TEST_COUNTS


@pytest.fixture(scope="module")
def results():
    worker = Worker(memory_gb=6.0)
    try:
        yield fuzz(TARGETS, TEST_COUNTS, seed=1, worker=worker)
    finally:
        worker.close()


# Crashes found in readers this suite does not own, reported to their authors; strict=False: they
# turn into passes once fixed.
@pytest.mark.parametrize("name", TARGETS)
def test_fuzzed_inputs_never_crash_the_parser(results, name):
    row = results[name]
    assert row["inputs"] == TEST_COUNTS[name]
    assert row["crash"] == 0, f"{name}: {row['crash']} crash(es) of {row['inputs']}: {row['crashes'][:3]}"


def test_the_sample_reaches_both_outcomes(results):
    """Mutations that are always refused (or never) would test nothing: both outcomes occur."""
    for name, row in results.items():
        assert row["clear"] > 0, f"{name}: no input was refused"
    handled = [name for name, row in results.items() if row["handled"]]
    assert len(handled) >= len(results) - 3, f"only {handled} parsed any input"


def test_the_classifier_counts_other_exceptions_and_unnamed_errors_as_crashes(tmp_path):
    """The fuzzer itself can fail: a KeyError, or a ValueError that names no file, is a crash."""
    def target(parse):
        return Target("t", "", None, None, parse)

    case = {"names": [str(tmp_path / "x.png")]}

    def raises(err):
        def parse(case):
            raise err
        return parse

    assert classify(target(raises(KeyError("k"))), case)[0] == "crash"
    assert classify(target(raises(ValueError("bad value"))), case)[0] == "crash"
    assert classify(target(raises(ValueError(f"{tmp_path / 'x.png'}: bad"))), case)[0] == "clear"
    assert classify(target(raises(AssertionError("wrong shape"))), case)[0] == "crash"
    assert classify(target(lambda case: None), case)[0] == "handled"


def test_a_dying_or_hanging_child_is_counted_as_a_crash(tmp_path):
    worker = Worker(targets_module="tests.fuzzing.selftest", memory_gb=None)
    try:
        assert worker.request("parse", "segfault", {"names": []}, 60)[0] == "crash"
        assert worker.request("parse", "hang", {"names": []}, 3)[0] == "crash"
        assert worker.request("parse", "fine", {"names": []}, 60) == ("handled", "")
    finally:
        worker.close()


def test_mutators_are_deterministic_and_change_their_input():
    import random

    seed = bytes(range(200))
    first = [mutate_bytes(random.Random(3), seed) for _ in range(5)]
    assert first == [mutate_bytes(random.Random(3), seed) for _ in range(5)]
    changed = [mutate_bytes(random.Random(i), seed) != seed for i in range(50)]
    assert sum(changed) >= 45
    tree = {"a": [1, 2, {"b": "c"}]}
    assert any(mutate_tree(random.Random(i), tree) != tree for i in range(10)) and tree == {"a": [1, 2, {"b": "c"}]}
    png = odd_png(random.Random(0))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"


# ------------------------------------------------------------------ inputs the fuzzer found, kept as cases


def _coco(tmp_path, segmentation):
    import json

    import numpy as np
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": segmentation}]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    return tmp_path / "a.json", tmp_path / "images"


def test_compressed_rle_of_the_wrong_size_is_refused_when_read(tmp_path):
    import numpy as np
    from pycocotools import mask as mask_utils

    from kseg.data import DataError, read_coco_instances
    from kseg.data.coco_checks import compressed_rle_total

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 30, 2)
        mask = np.asfortranarray(rng.random((h, w)) < rng.random(), dtype=np.uint8)
        assert compressed_rle_total(mask_utils.encode(mask)["counts"].decode()) == h * w
    wrong = mask_utils.encode(np.asfortranarray(np.ones((20, 31), np.uint8)))["counts"].decode()
    path, images = _coco(tmp_path, {"size": [20, 30], "counts": wrong})
    with pytest.raises(DataError, match=f"{path}.*a compressed RLE of 620 pixels, expected one of H \\* W = 600"):
        read_coco_instances(path, images)


def test_a_polygon_vertex_at_1e9_is_clipped_not_a_segfault(tmp_path):
    """pycocotools allocates a point per fifth of a pixel along each edge: 1e9 crashed it (SIGSEGV)."""
    import subprocess
    import sys

    path, images = _coco(tmp_path, [[0, 0, 1e9, 0, 1e9, 5, 0, 5]])
    code = ("from kseg.data import read_coco_instances; import numpy as np\n"
            f"m = read_coco_instances({str(path)!r}, {str(images)!r})[0][0]['masks'][0]\n"
            "want = np.zeros((20, 30), np.uint8); want[:5] = 1\n"
            "assert (m == want).all(), m\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=str(ROOT))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-500:]


def test_a_y4m_header_asking_for_terabytes_is_a_truncated_frame(tmp_path):
    from export.frames import InputError
    from export.video_io import read_y4m

    path = tmp_path / "huge.y4m"
    path.write_bytes(b"YUV4MPEG2 W99999999 H99999999 F25:1\nFRAME\n" + bytes(100))
    with pytest.raises(InputError, match=f"{path}: frame 0 is truncated: 100 of "):
        list(read_y4m(path))


@pytest.mark.parametrize("text, message", [
    ("[" * 100000 + "]" * 100000, "RecursionError"),
    ('{"data": {"images": "a", "masks": "b", "num_classes": "3"}}', "field num_classes is '3', expected an int >= 1"),
    ('{"data": {"images": "a", "masks": "b", "num_classes": 3, "remap": {"x": 1}}}', "field remap"),
    ('{"task": "instance", "data": {"source": "shapes", "shapes": 10}, "categories": [3]}', "\"categories\" is '[3]'"),
    ('{"task": "panoptic", "data": {"source": "x"}, "categories": [{"id": 1, "name": "a"}]}',
     "'x': panoptic data source, expected one of"),
], ids=["nested deep", "num_classes a string", "remap key not a number", "categories not dicts", "unknown source"])
def test_run_json_errors_name_the_file(tmp_path, text, message):
    from kseg import tasks

    (tmp_path / "run.json").write_text(text)
    with pytest.raises(ValueError) as info:
        tasks.load_run(tmp_path)
    assert str(tmp_path / "run.json") in str(info.value) and message in str(info.value)


@pytest.mark.parametrize("config, message", [
    ('{"cluster": {"worker": [1]}, "task": {"type": "worker", "index": 0}}', "not a non-empty list of addresses"),
    ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "task type 'ps'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": Infinity}}', "index 'inf'"),
    ("[" * 100000, "is not JSON"),
], ids=["address not a string", "ps task", "index infinity", "nested deep"])
def test_tf_config_that_tensorflow_would_refuse_is_refused_first(monkeypatch, config, message):
    from kseg.training.strategy import check_tf_config

    monkeypatch.setenv("TF_CONFIG", config)
    with pytest.raises(ValueError, match="TF_CONFIG") as info:
        check_tf_config()
    assert message in str(info.value)


def test_corrupt_tflite_metadata_is_a_value_error():
    from export.metadata import read_metadata
    from tests.fuzzing.targets_models import _tflite_seeds

    seeds = _tflite_seeds(None)
    content = bytearray(seeds["labelled"])
    start = seeds["metadata"][0]
    content[start:start + 4] = b"\xff\xff\xff\x7f"  # the ModelMetadata root offset, far past the end
    with pytest.raises(ValueError, match="TFLITE_METADATA buffer .* does not parse as a ModelMetadata flatbuffer"):
        read_metadata(bytes(content))
