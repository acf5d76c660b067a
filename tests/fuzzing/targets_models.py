"""Fuzz targets of model and video files: `.keras`, `.tflite` (the runtime's checks, its
metadata reader, `kseg bench`) and Y4M video.

The `.keras` and `.tflite` seeds are a tiny U-Net saved and converted in the worker (the
parent imports no TensorFlow). `.keras` inputs are mutated as bytes, or unzipped, one member
mutated (config.json as JSON, the HDF5 weights as bytes) and zipped again with valid CRCs.
"""

import contextlib
import io
import json
import zipfile
from pathlib import Path

from tests.fuzzing.engine import Target
from tests.fuzzing.mutators import mutate_bytes, mutate_json_text

# ----------------------------------------------------------------------------- .keras


def _tiny_unet():
    from kseg.models import build_model

    return build_model("unet", num_classes=2, input_shape=(16, 16, 1), filters=4, depth=1)


def _keras_seeds(folder):
    path = Path(folder) / "unet.keras"
    _tiny_unet().save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return {"file": path.read_bytes(), "members": members}


def _rezip(members):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _keras_case(rng, seeds, folder):
    roll = rng.random()
    members = dict(seeds["members"])
    if roll < 0.3:
        data = mutate_bytes(rng, seeds["file"])
    elif roll < 0.75:
        name = rng.choice([n for n in members if n.endswith(".json")])
        members[name] = mutate_json_text(rng, json.loads(members[name]))
        data = _rezip(members)
    else:
        name = rng.choice([n for n in members if not n.endswith(".json")])
        members[name] = mutate_bytes(rng, members[name], max_ops=rng.choice((1, 2, 8)))
        data = _rezip(members)
    path = Path(folder) / "model.keras"
    path.write_bytes(data)
    return {"path": str(path), "run": str(folder), "names": [str(path)]}


def _parse_keras(case):
    """kseg's semantic model loader (`kseg evaluate/predict/export --model`: the semantic task's load_model)."""
    import keras

    from kseg import tasks

    model = tasks.get_task("semantic").load_model(case["run"], case["path"])
    assert isinstance(model, keras.Model), f"loaded a {type(model).__name__}"


# ----------------------------------------------------------------------------- .tflite


_CONVERTED = {}  # the worker converts the seed model once for the three .tflite targets


def _tflite_seeds(folder):
    if not _CONVERTED:
        _CONVERTED.update(_convert_seeds())
    return dict(_CONVERTED)


def _convert_seeds():
    from export.metadata import add_metadata
    from export.tflite import convert
    from kseg.models import build_model

    model = build_model("unet", num_classes=2, input_shape=(16, 16, 3), filters=4, depth=1)
    plain = convert(model)
    labelled = add_metadata(plain, labels=["background", "cell"], name="unet", version="1", activation="softmax")
    start = labelled.find(b"M001") - 4  # the metadata flatbuffer; the labels zip follows the model
    return {"files": [plain, labelled], "metadata": (max(start, 0), len(labelled)), "labelled": labelled}


def _tflite_case(rng, seeds, folder):
    roll = rng.random()
    if roll < 0.5:
        data = mutate_bytes(rng, rng.choice(seeds["files"]), others=seeds["files"])
    elif roll < 0.75:
        data = mutate_bytes(rng, seeds["labelled"], region=(0, 512))  # root table, vtables, subgraph headers
    else:
        data = mutate_bytes(rng, seeds["labelled"], region=seeds["metadata"])
    path = Path(folder) / "model.tflite"
    path.write_bytes(data)
    return {"path": str(path), "names": [str(path)]}


def _metadata_case(rng, seeds, folder):
    case = _tflite_case(rng, seeds, folder) if rng.random() < 0.3 else None
    if case is None:
        path = Path(folder) / "model.tflite"
        path.write_bytes(mutate_bytes(rng, seeds["labelled"], region=seeds["metadata"]))
        case = {"path": str(path)}
    return {**case, "names": []}  # read_metadata takes bytes: its errors name no file


def _parse_tflite(case):
    """What `kseg bench` does in its own process: read_model (Python and LiteRT verifier) and describe."""
    from export import runtime

    content = runtime.read_model(case["path"])
    info = runtime.describe(content, name=case["path"])
    assert info["inputs"] and info["outputs"], "a model with no input or output"


def _parse_metadata(case):
    from export.metadata import read_metadata

    info = read_metadata(Path(case["path"]).read_bytes())
    if info is not None:
        assert all(isinstance(label, str) for label in info["labels"]), "labels are not strings"
        assert info["activation"] in ("none", "sigmoid", "softmax"), f"activation {info['activation']!r}"
        assert all(isinstance(v, float) for v in info["mean"] + info["std"]), "mean/std are not floats"


class BenchRefused(ValueError):
    """`kseg bench` exited 2: its one-line message."""


def _parse_bench(case):
    """`kseg bench` on the file (1 timed run, 1 end-to-end run); exit 2 must be one clean line."""
    from export import bench

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = bench.main([case["path"], "--threads", "1", "--warmup", "0", "--runs", "1", "--e2e-runs", "1",
                           "--timeout", "60"])
    text = err.getvalue()
    assert "Traceback" not in text, f"exit {code} with a traceback on stderr: {text[-300:]}"
    if code == bench.EXIT_BAD_INPUT:
        lines = text.strip().splitlines()
        assert len(lines) == 1, f"exit 2 with {len(lines)} lines on stderr: {text[-300:]}"
        raise BenchRefused(lines[0])
    assert code in (bench.EXIT_OK, bench.EXIT_FAILED), f"exit code {code}"
    return "exit 0: ran" if code == bench.EXIT_OK else "exit 1: a configuration failed, reported in its row"


# ----------------------------------------------------------------------------- Y4M


def _y4m_seeds(folder):
    import numpy as np

    from export.video_io import write_y4m

    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(3)]
    path = Path(folder) / "a.y4m"
    write_y4m(path, frames)
    seeds = [path.read_bytes()]
    for header, size in ((b"YUV4MPEG2 W8 H6 F30000:1001 C444 XCOLORRANGE=FULL\n", 3 * 6 * 8),
                         (b"YUV4MPEG2 W7 H5 F25:1 Ip A1:1\n", 5 * 7 + 2 * 3 * 4)):  # 4:2:0 chroma rounds up
        seeds.append(header + b"".join(b"FRAME\n" + rng.bytes(size) for _ in range(2)))
    return seeds


_TAGS = (b"W", b"H", b"F", b"C", b"I", b"A", b"X")
_VALUES = (b"0", b"-1", b"1", b"8", b"99999999", b"4294967297", b"30:1", b"0:0", b"1:0", b"-30:1", b"420jpeg",
           b"420p10", b"mono", b"444alpha", b"COLORRANGE=FULL", b"", b"\xff\xfe", b"8.5")


def _y4m_case(rng, seeds, folder):
    data = rng.choice(seeds)
    if rng.random() < 0.4:  # header tokens edited, the frames kept
        header, _, frames = data.partition(b"\n")
        tokens = header.split(b" ")
        for _ in range(rng.randint(1, 3)):
            token = rng.choice(_TAGS) + rng.choice(_VALUES)
            if rng.random() < 0.3 and len(tokens) > 1:
                del tokens[rng.randrange(1, len(tokens))]
            else:
                tokens.insert(rng.randint(1, len(tokens)), token)
        data = b" ".join(tokens) + b"\n" + frames
    else:
        data = mutate_bytes(rng, data, others=seeds)
    path = Path(folder) / "video.y4m"
    path.write_bytes(data)
    return {"path": str(path), "names": [str(path)]}


def _parse_y4m(case):
    from export.video_io import open_video

    with open_video(case["path"]) as reader:
        for i, frame in enumerate(reader):
            assert frame.shape == (reader.height, reader.width, 3) and frame.dtype.name == "uint8", \
                f"frame {i}: {frame.shape} {frame.dtype}"
            if i == 20:
                break


TARGETS = {
    "keras": Target("keras", ".keras files through kseg's model loader (zip bytes, config JSON, HDF5 weights "
                    "mutated)", _keras_seeds, _keras_case, _parse_keras, timeout=60.0),
    "tflite": Target("tflite", "export.runtime.read_model + describe on mutated .tflite files (LiteRT's verifier "
                     "included)", _tflite_seeds, _tflite_case, _parse_tflite),
    "tflite_metadata": Target("tflite_metadata", "export.metadata.read_metadata on .tflite files whose metadata "
                              "flatbuffer and label zip are mutated", _tflite_seeds, _metadata_case, _parse_metadata),
    "bench": Target("bench", "`kseg bench` (export.bench.main) on mutated .tflite files", _tflite_seeds,
                    _tflite_case, _parse_bench, timeout=120.0),
    "y4m": Target("y4m", "export.video_io.open_video on mutated Y4M files (header tokens and bytes)", _y4m_seeds,
                  _y4m_case, _parse_y4m),
}
