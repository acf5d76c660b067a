"""A `.tflite` cut into consecutive parts, each for one device, and run as one model.

LiteRT's GPU accelerator delegates one partition of a graph (the largest) and runs the rest on
the CPU. A graph with a few ops the GPU lacks (Mask R-CNN's two NON_MAX_SUPPRESSION_V4) has
several GPU partitions; cut into models of their own, each runs fully on the GPU:

    content = read_model("mask_rcnn_fp32.tflite")
    plan = device_plan(parse_model(content), cpu_ops={"NON_MAX_SUPPRESSION_V4"})
    parts, manifest = split_model(content, plan)             # 5 parts: gpu cpu gpu cpu gpu
    write_partitioned("mask_rcnn_fp32.gpu", parts, manifest)
    with PartitionedRunner("mask_rcnn_fp32.gpu", accelerator="gpu") as runner:
        outputs = runner.run(image)                          # the whole model's outputs, in order

A package folder stands wherever a `.tflite` does in the edge tools (`kseg bench`,
`kseg demo-video`): `open_model` and `describe_path` take either.

A part is a valid `.tflite` whose inputs are the tensors it reads from the graph inputs or
earlier parts and whose outputs are those later parts or the graph outputs read. Constants go
with every part that reads them. In an fp16 file the DEQUANTIZE of float16 weights is copied
into each part reading its output (the GPU accelerator folds it into that op). An op calling
other subgraphs (IF, WHILE, CALL_ONCE) makes its part a CPU part that carries every subgraph.
`write_gpu_package` is what `kseg export` writes beside a detector's fp32 / fp16 `.tflite`.

The manifest (JSON-ready dict):
    format    "kseg.partitioned/1"
    inputs, outputs   the whole model's tensor details (export.runtime), in its order
    signature_outputs {output name: tensor index} of the whole model's signature ({} if none)
    metadata  the whole model's kseg metadata (export.metadata: labels, normalization) or None
    parts     list of {"file", "device": "gpu" | "cpu", "ops": [original op indices, the
              folded DEQUANTIZE ops left out],
              "inputs": [original tensor indices], "outputs": [original tensor indices]}
Tensors are named by their index in the original main subgraph.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

from export.runtime.model_file import ModelFileError, check_model, op_name, read_file, read_model, tensor_detail
from export.runtime.model_info import describe, read_metadata, signature_outputs
from export.runtime.op_surgery import _SUBGRAPH_OPS, folded_dequantize_ops, is_constant, sub_model
from export.runtime.runner import Runner, check_arrays

FORMAT = "kseg.partitioned/1"
DEVICES = ("gpu", "cpu")


def device_plan(model, support=None, cpu_ops=("NON_MAX_SUPPRESSION_V4",), min_gpu_run=1):
    """The device of each operator of the main subgraph: "cpu" or "gpu".

    Args:
        model: `parse_model(content)`.
        support: optional `export.delegation.gpu_op_support` verdicts (one per op, in order);
            an op whose "gpu" is not True runs on the CPU.
        cpu_ops: op names that run on the CPU whatever `support` says.
        min_gpu_run: a run of fewer GPU ops than this between CPU ops (or the graph's ends)
            goes to the CPU too: a GPU part costs a round trip to the accelerator.

    Returns:
        list of "cpu" / "gpu", one per operator. Ops calling subgraphs are always "cpu".
    """
    ops = model.subgraphs[0].operators or []
    if support is not None and len(support) != len(ops):
        raise ValueError(f"support: {len(support)} verdicts for a model of {len(ops)} operators; "
                         "expected one per operator")
    plan = []
    for i, op in enumerate(ops):
        name = op_name(model, op)
        gpu = name not in set(cpu_ops) and name not in _SUBGRAPH_OPS and (support is None or support[i]["gpu"] is True)
        plan.append("gpu" if gpu else "cpu")
    start = 0
    for i in range(len(plan) + 1):
        if i == len(plan) or plan[i] == "cpu":
            if i - start < int(min_gpu_run):
                plan[start:i] = ["cpu"] * (i - start)
            start = i + 1
    return plan


def _runs(plan, skip):
    """Consecutive runs of the same device over the ops not in `skip`: [(device, [op indices])]."""
    runs = []
    for i, device in enumerate(plan):
        if i in skip:
            continue
        if runs and runs[-1][0] == device:
            runs[-1][1].append(i)
        else:
            runs.append((device, [i]))
    return runs


def split_model(content, plan):
    """Cuts a `.tflite` into consecutive parts, one per run of ops of one device.

    Args:
        content: the model's bytes.
        plan: one device per operator of the main subgraph, "gpu" or "cpu" (`device_plan`).
            A folded DEQUANTIZE (fp16 weights) follows the ops reading it whatever its entry.

    Returns:
        (parts, manifest): parts is a list of `.tflite` bytes, in execution order; manifest
        describes them (module docstring), with part files named "part{i}.tflite".

    Raises:
        ValueError: `plan` has the wrong length or an unknown device, or a GPU part would call
            subgraphs.
    """
    model = check_model(bytes(content))
    sg = model.subgraphs[0]
    ops = sg.operators or []
    plan = list(plan)
    if len(plan) != len(ops):
        raise ValueError(f"plan: {len(plan)} devices for a model of {len(ops)} operators; expected one per operator")
    bad = sorted({d for d in plan if d not in DEVICES})
    if bad:
        raise ValueError(f"plan: unknown device(s) {bad}; expected 'gpu' or 'cpu' per operator")
    for i, (device, op) in enumerate(zip(plan, ops)):
        if device == "gpu" and op_name(model, op) in _SUBGRAPH_OPS:
            raise ValueError(f"plan: operator {i} ({op_name(model, op)}) calls other subgraphs and runs on the CPU "
                             "only; expected 'cpu' for it")
    folded = folded_dequantize_ops(model, content)
    folded_by_output = {int(ops[i].outputs[0]): i for i in folded}
    runs = _runs(plan, folded)
    graph_inputs = {int(t) for t in sg.inputs}
    graph_outputs = [int(t) for t in sg.outputs]
    owner = {}  # tensor -> part producing it
    for p, (_, indices) in enumerate(runs):
        for i in indices:
            for t in ops[i].outputs:
                owner[int(t)] = p
    parts, described = [], []
    for p, (device, indices) in enumerate(runs):
        produced = {int(t) for i in indices for t in ops[i].outputs}
        read = list(dict.fromkeys(int(t) for i in indices for t in ops[i].inputs if t >= 0))
        dequantize = sorted({folded_by_output[t] for t in read if t in folded_by_output})
        inputs = [t for t in read if t not in produced and t not in folded_by_output
                  and not is_constant(model, content, t)]
        later = set(graph_outputs) | {int(t) for q in range(p + 1, len(runs)) for i in runs[q][1]
                                      for t in ops[i].inputs if t >= 0}
        outputs = [t for i in indices for t in (int(x) for x in ops[i].outputs) if t in later]
        if p == len(runs) - 1:  # a graph output no op computes (a constant) comes from the last part
            outputs += [t for t in graph_outputs if t not in owner and t not in graph_inputs]
        outputs = list(dict.fromkeys(outputs))
        for t in inputs:
            if t not in owner and t not in graph_inputs:
                raise ValueError(f"part {p} reads tensor {t}, which neither a graph input nor an earlier part gives")
        parts.append(sub_model(model, content, dequantize + indices, inputs, outputs, f"part{p}"))
        described.append({"file": f"part{p}.tflite", "device": device, "ops": indices,
                          "inputs": inputs, "outputs": outputs})
    manifest = {
        "format": FORMAT,
        "inputs": [_json_detail(tensor_detail(sg, int(t))) for t in sg.inputs],
        "outputs": [_json_detail(tensor_detail(sg, t)) for t in graph_outputs],
        "signature_outputs": signature_outputs(model),
        "metadata": read_metadata(content),
        "parts": described,
    }
    return parts, manifest


def _json_detail(detail):
    return {**detail, "shape": list(detail["shape"]), "quantization": list(detail["quantization"])}


def _detail(entry):
    """A manifest's tensor detail back in export.runtime's form (tuples), `_json_detail`'s inverse."""
    return {**entry, "shape": tuple(entry["shape"]), "quantization": tuple(entry["quantization"])}


def write_partitioned(folder, parts, manifest):
    """Writes `parts` as folder/part{i}.tflite and `manifest` as folder/manifest.json, atomically.

    The package is written into a new folder beside `folder` and renamed into place once
    complete: an error or a crash midway leaves the earlier package (or none) whole, never a
    mix of old and new parts. A `folder` that holds anything but a package is not replaced.

    Returns:
        The folder's Path.

    Raises:
        ValueError: `folder` exists and is not a package folder.
    """
    folder = Path(folder)
    if folder.exists() and not is_package(folder) and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder}: exists and holds no manifest.json; expected a package folder to replace, "
                         "or a new or empty folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for part, entry in zip(parts, manifest["parts"]):
            (staging / entry["file"]).write_bytes(part)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        old = None
        if folder.exists():
            old = folder.with_name(f"{staging.name}.old")
            os.replace(folder, old)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def write_gpu_package(content, folder, cpu_ops=("NON_MAX_SUPPRESSION_V4",), min_gpu_run=8):
    """A model's GPU package: its GPU parts and CPU parts (`cpu_ops`, ops calling subgraphs) in `folder`.

    Args:
        content: the `.tflite` bytes.
        folder: where `write_partitioned` writes the parts and manifest.json.
        cpu_ops, min_gpu_run: what runs on the CPU (`device_plan`).

    Returns:
        {"folder": the folder's name, "parts": [{"device", "ops"}] (ops: count), "crossings"},
        or None (nothing written) when the whole model is one part.
    """
    parts, manifest = split_model(content, device_plan(check_model(bytes(content)), cpu_ops=cpu_ops,
                                                           min_gpu_run=min_gpu_run))
    if len(parts) < 2:
        return None
    write_partitioned(folder, parts, manifest)
    summary = [{"device": p["device"], "ops": len(p["ops"])} for p in manifest["parts"]]
    return {"folder": Path(folder).name, "parts": summary, "crossings": len(parts) - 1}


def read_partitioned(folder):
    """(parts, manifest) from a folder `write_partitioned` wrote; ValueError when it is not one."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{folder}: no manifest.json; expected a folder written by write_partitioned")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e}); expected a manifest written by write_partitioned") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        seen = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: format {seen!r}; expected {FORMAT!r}")
    return [read_file(folder / entry["file"]) for entry in manifest["parts"]], manifest


def is_package(path):
    """Whether `path` is a folder holding a manifest.json (a package, possibly a broken one)."""
    return Path(path).is_dir() and (Path(path) / "manifest.json").is_file()


def describe_path(path):
    """`describe` of a `.tflite` file or of a package folder, with "package" added.

    For a package: size_bytes, ops, num_ops and flops add up its parts (constants a part
    shares with another are counted in both); inputs, outputs, signature_outputs and metadata
    are the whole model's. "package" is {"parts": [{"device", "ops"}], "crossings"} (None for
    a file).

    Raises:
        ModelFileError: the file or a part does not verify, or the folder is no package.
    """
    if Path(path).is_dir() and not is_package(path):
        raise ModelFileError(f"{path}: a folder without manifest.json; expected a .tflite file or a GPU package "
                             "folder (NAME_VARIANT.gpu, written by kseg export)")
    if not is_package(path):
        return {**describe(read_model(path), name=str(path)), "package": None}
    parts, manifest = _read_package(path)
    try:
        each = []
        for part, entry in zip(parts, manifest["parts"]):
            check_model(part, name=f"{path}/{entry['file']}")
            each.append(describe(part, name=f"{path}/{entry['file']}"))
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: {e}; expected a package written by kseg export") from None
    ops, by_op = {}, {}
    for d in each:
        for k, v in d["ops"].items():
            ops[k] = ops.get(k, 0) + v
        for k, v in d["flops"]["by_op"].items():
            by_op[k] = by_op.get(k, 0) + v
    return {
        **each[0], "size_bytes": sum(d["size_bytes"] for d in each),
        "inputs": [_detail(d) for d in manifest["inputs"]], "outputs": [_detail(d) for d in manifest["outputs"]],
        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])), "num_ops": sum(ops.values()),
        "subgraphs": sum(d["subgraphs"] for d in each), "signatures": 1 if manifest.get("signature_outputs") else 0,
        "signature_outputs": dict(manifest.get("signature_outputs") or {}),
        "flops": {**each[0]["flops"], "total": int(sum(by_op.values())), "by_op": by_op},
        "metadata": manifest.get("metadata"),
        "package": {"parts": [{"device": e["device"], "ops": len(e["ops"])} for e in manifest["parts"]],
                    "crossings": len(parts) - 1},
    }


def open_model(path, accelerator="cpu", num_threads=2, runtime="interpreter"):
    """A `Runner` for a `.tflite` file (or its bytes), a `PartitionedRunner` for a package folder.

    Args: as `export.runtime.Runner`; for a package, accelerator "gpu" runs its GPU parts on
        LiteRT's GPU accelerator and `runtime` applies to its CPU parts.

    Raises:
        ModelFileError: a part or the file does not verify, or the folder is no package.
    """
    if isinstance(path, (bytes, bytearray, memoryview)) or not is_package(path):
        return Runner(path, accelerator=accelerator, num_threads=num_threads, runtime=runtime)
    return PartitionedRunner(_read_package(path), accelerator=accelerator, num_threads=num_threads, runtime=runtime)


def _read_package(path):
    """`read_partitioned(path)`, its errors as ModelFileError (what the edge tools report as bad input)."""
    try:
        return read_partitioned(path)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: {e}; expected a package written by kseg export") from None


class PartitionedRunner:
    """Parts of a split model run in sequence as one model, each on its manifest's device.

    It has `export.runtime.Runner`'s interface (set_inputs, invoke, get_outputs, run, inputs,
    outputs, fully_accelerated, init_ms, environment_ms), so the edge tools time and draw a
    package as they do a `.tflite`. Each part's outputs are read before the next part runs:
    `invoke` returns when the whole model has run, also on the GPU accelerator.

    Args:
        package: a folder from `write_partitioned`, or `(parts, manifest)` from `split_model`.
        accelerator: "gpu" runs the GPU parts on LiteRT's GPU accelerator (CompiledModel) and
            the CPU parts on the CPU; "cpu" runs every part on the CPU (the same values as the
            whole model's CPU run).
        num_threads: CPU threads of every part.
        runtime: the CPU parts' runtime, "interpreter" or "compiled" (`Runner`).

    Attributes:
        inputs, outputs: the whole model's tensor details, in its order.
        runners: one export.runtime.Runner per part.
        parts_fully_accelerated: per part, whether the GPU accelerator ran every op of it (parts
            run on the CPU: True).
        fully_accelerated: all of them.
        init_ms, environment_ms: summed over the parts.

    Example:
        >>> with PartitionedRunner("mask_rcnn_fp32.gpu", accelerator="gpu") as r:   # doctest: +SKIP
        ...     boxes, classes, scores, masks, count = r.run(image)    # image: [1, H, W, 3]
    """

    def __init__(self, package, accelerator="gpu", num_threads=2, runtime="interpreter"):
        if accelerator not in DEVICES:
            raise ValueError(f"accelerator must be 'gpu' or 'cpu', got {accelerator!r}")
        if isinstance(package, (str, Path)):
            parts, manifest = read_partitioned(package)
        else:
            parts, manifest = package
        if manifest.get("format") != FORMAT or len(parts) != len(manifest["parts"]):
            raise ValueError(f"package: {len(parts)} part(s) for a manifest of format {manifest.get('format')!r} "
                             f"with {len(manifest.get('parts', []))}; expected one part per manifest entry, "
                             f"format {FORMAT!r}")
        self.manifest = manifest
        self.inputs = [_detail(d) for d in manifest["inputs"]]
        self.outputs = [_detail(d) for d in manifest["outputs"]]
        self.accelerator = accelerator
        self.runners, self._inputs, self._values = [], None, {}
        try:
            for part, entry in zip(parts, manifest["parts"]):
                device = "gpu" if accelerator == "gpu" and entry["device"] == "gpu" else "cpu"
                self.runners.append(Runner(part, accelerator=device, num_threads=num_threads, runtime=runtime))
        except Exception:
            self.close()
            raise
        self.parts_fully_accelerated = [r.fully_accelerated or r.accelerator == "cpu" for r in self.runners]
        self.fully_accelerated = all(self.parts_fully_accelerated)
        self.init_ms = sum(r.init_ms for r in self.runners)
        self.environment_ms = sum(r.environment_ms for r in self.runners)

    def check_inputs(self, arrays):
        """Each array as a numpy array with the input's shape and dtype; ValueError otherwise."""
        return check_arrays(arrays, self.inputs)

    def set_inputs(self, *arrays):
        """Checks and keeps the inputs for the next `invoke` (see `check_inputs`)."""
        self._inputs = {d["index"]: a for a, d in zip(self.check_inputs(arrays), self.inputs)}

    def invoke(self):
        """Runs every part in order on the inputs last set."""
        if self._inputs is None:
            raise ValueError("no inputs set; call set_inputs (or run) first")
        values = dict(self._inputs)
        for runner, entry in zip(self.runners, self.manifest["parts"]):
            produced = runner.run(*[values[t] for t in entry["inputs"]])
            values.update(zip(entry["outputs"], produced))
        self._values = values

    def get_outputs(self):
        """The outputs of the last `invoke`, in the whole model's output order."""
        return [self._values[d["index"]] for d in self.outputs]

    def run(self, *arrays):
        """`set_inputs`, `invoke`, `get_outputs`: a list of output arrays."""
        self.set_inputs(*arrays)
        self.invoke()
        return self.get_outputs()

    def close(self):
        """Releases every part's runtime."""
        for runner in self.runners:
            runner.close()
        self.runners = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
