"""Runs `.tflite` models on emulated ARM64 cores and on x86, on the same inputs, and compares.

    report = measure(["unet_fp32.tflite", "unet_int8.tflite"], cpu_list=("cortex-a76", "cortex-a53"))
    print(format_report(report))

Per (model, CPU) a row holds the agreement with the x86 outputs (export.arm64.agreement's
rule for the model's variant) and the guest instructions executed: per inference (the mean
over `runs` inferences after the first, each recorded separately, so `insn_spread` shows how
deterministic the count is), for the first inference and for loading the model. Both sides
run LiteRT's Interpreter (XNNPACK) with `threads` threads (1 by default: with more, the
idle workers' spinning makes the count vary).
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from export import runtime
from export.arm64 import agreement, cpus, plugin
from export.arm64 import root as arm_root
from export.arm64.guest import TAG_STRIDE

_VARIANT_SUFFIXES = tuple(f"_{v}" for v in agreement.VARIANTS)


def family(name):
    """"unet" for "unet_int8.tflite": the model a variant was exported from (its file stem otherwise)."""
    stem = Path(name).stem
    for suffix in _VARIANT_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def model_inputs(info, image=None, seed=0):
    """The arrays both sides run: the prepared image for an image model (the ISBI sample by
    default, as export.bench), seeded uniform values for other float inputs, zeros otherwise."""
    from export import frames

    detail, _ = frames.image_input(info)
    if detail is not None and len(info["inputs"]) == 1:
        norm = frames.normalization(info["metadata"], detail["shape"][3])
        return [frames.prepare_image(frames.load_image(Path(image) if image else frames.default_image()), detail, norm)]
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, d["shape"]).astype(d["dtype"]) if np.dtype(d["dtype"]).kind == "f"
            else np.zeros(d["shape"], d["dtype"]) for d in info["inputs"]]


def _copy_sources(target):
    """kseg's edge tools (export/, and kseg's TensorFlow-free __init__, utils and viz, and the
    embedded sample images) into `target`."""
    repo = Path(__file__).resolve().parents[2]
    for package in ("export", "kseg/utils", "kseg/viz"):
        for source in (repo / package).rglob("*.py"):
            dest = target / source.relative_to(repo)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
    shutil.copy2(repo / "kseg" / "__init__.py", target / "kseg" / "__init__.py")
    shutil.copytree(repo / "kseg" / "data" / "samples", target / "kseg" / "data" / "samples")  # bench's default image


def guest_command(models, cpu, argv, timeout=3600.0):
    """Runs `python3 ARGV` in the arm64 root on `cpu` with kseg's edge tools and `models` at hand.

    The models are copied to the guest's work folder; "{model0}", "{model1}", ... in `argv`
    become their guest paths. E.g. `guest_command(["m.tflite"], "cortex-a76", ["-m",
    "export.bench", "{model0}", "--threads", "1"])` runs the edge benchmark itself on ARM.

    Returns:
        subprocess.CompletedProcess (text stdout/stderr).
    """
    root = arm_root.ensure_root()
    model = cpus.check_cpu(root.qemu, cpu)
    info = root.cpuinfo(model) if cpus.needs_fake_cpuinfo(root.qemu) else None
    cpus.check_configuration(root.qemu, cpu, info)
    work = Path(tempfile.mkdtemp(prefix="kseg-arm64-"))
    try:
        _copy_sources(work / "src")
        names = {}
        for i, path in enumerate(models):
            shutil.copy2(path, work / f"model-{i}{Path(path).suffix}")
            names[f"model{i}"] = f"{arm_root.GUEST_WORK}/model-{i}{Path(path).suffix}"
        argv = [a.format(**names) for a in argv]
        return arm_root.run_guest(root, cpu, argv, work=work, cpuinfo=info, timeout=timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def counts_from_marks(marks, index, runs):
    """Instruction counts of model `index` from the plugin's (tag, count) marks (see export.arm64.guest)."""
    at = dict(marks)
    base = TAG_STRIDE * (index + 1)
    needed = [base + k for k in range(3 + runs)]
    if any(t not in at for t in needed):
        return None
    per_run = [at[base + 3 + j] - at[base + 2 + j] for j in range(runs)]
    mean = (at[base + 2 + runs] - at[base + 2]) / runs
    return {"insn_per_inference": mean, "insn_runs": per_run,
            "insn_spread": (max(per_run) - min(per_run)) / mean if mean else None,
            "insn_first": at[base + 2] - at[base + 1], "insn_load": at[base + 1] - at[base]}


def _guest_cpu(root, cpu, entries, work, runs, threads, timeout, log):
    """Runs `entries` in the guest on `cpu`, restarting after a crash; {name: guest result}."""
    model = cpus.check_cpu(root.qemu, cpu)
    info = root.cpuinfo(model) if cpus.needs_fake_cpuinfo(root.qemu) else None
    cpus.check_configuration(root.qemu, cpu, info)
    results, pending, attempt = {}, list(entries), 0
    while pending:
        attempt += 1
        tag = f"{cpu.replace(',', '_')}-{attempt}"
        job = work / f"job-{tag}.json"
        for e in pending:
            e["result"] = f"{arm_root.GUEST_WORK}/result-{tag}-{e['index']}.json"
        seen = work / f"cpuinfo-{tag}.json"
        job.write_text(json.dumps({"threads": threads, "runs": runs, "models": pending,
                                   "cpuinfo_result": f"{arm_root.GUEST_WORK}/{seen.name}"}))
        log(f"arm64: {cpu}: {len(pending)} model(s) in the guest ...")
        start = time.perf_counter()
        try:
            proc = arm_root.run_guest(root, cpu, ["-m", "export.arm64.guest", f"{arm_root.GUEST_WORK}/{job.name}"],
                                      work=work, cpuinfo=info, timeout=timeout,
                                      plugin_log=f"{arm_root.GUEST_WORK}/insn-{tag}.log")
            failure = None if proc.returncode == 0 else f"guest exit {proc.returncode}: {proc.stderr.strip()[-400:]}"
        except Exception as e:  # a timeout: the model that was running fails
            failure = f"{type(e).__name__}: {e}"
        if info is not None and seen.exists():  # XNNPACK picks its kernels from what the guest reads there
            part = json.loads(seen.read_text())["cpu_part"]
            if part != cpus.CPUS[model]["part"]:
                raise cpus.ConfigurationError(f"the guest's /proc/cpuinfo shows CPU part {part}, not {model}'s "
                                              f"{cpus.CPUS[model]['part']:#x}: the fake cpuinfo is not in place")
        log_file = work / f"insn-{tag}.log"
        marks, _ = plugin.read_log(log_file.read_text() if log_file.exists() else "")
        done = []
        for e in pending:
            path = work / Path(e["result"]).name
            if not path.exists():
                break
            result = json.loads(path.read_text())
            result["counts"] = counts_from_marks(marks, pending.index(e), runs)
            result["guest_s"] = time.perf_counter() - start
            results[e["name"]] = result
            done.append(e)
        pending = pending[len(done):]
        if pending:  # the first model without a result crashed the guest (or timed out)
            crashed = pending.pop(0)
            results[crashed["name"]] = {"name": crashed["name"], "error": failure or "no result written"}
    return results


def measure(models, cpu_list=cpus.DEFAULT_CPUS, runs=2, threads=1, image=None, timeout=3600.0, log=None):
    """Runs each model on x86 and on each emulated core; compares outputs and counts instructions.

    Args:
        models: paths of `.tflite` files.
        cpu_list: QEMU -cpu values (checked by export.arm64.cpus; unpinned or known-wrong refused).
        runs: inferences counted after the first (>= 1).
        threads: LiteRT CPU threads on both sides.
        image: image file for image models (default: the embedded ISBI sample).
        timeout: seconds for one guest process.
        log: callable taking a progress line (default: stderr).

    Returns:
        dict: `qemu`, `root` (key, folder, build time, whether it was cached), `settings`,
        `models` (name, path, variant, size, ops, inputs), `rows` (one per model and CPU)
        and `ratios` (fp32 over int8 instructions per inference, per model family and CPU).
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if int(runs) < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if not cpu_list:
        raise cpus.ConfigurationError("no CPU given: name one or more of " + ", ".join(cpus.CPUS))
    infos, names = [], [Path(m).name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"models must have distinct file names, got {names}")
    for path in models:
        content = runtime.read_model(path)
        infos.append({"name": Path(path).name, "path": str(path), "variant": agreement.detect_variant(content),
                      "quanta": agreement.output_quanta(content), **runtime.describe(content)})
    arm_root.check_host()
    version = arm_root.qemu_version()
    for cpu in cpu_list:  # refused before minutes of set-up
        cpus.check_cpu(version, cpu)
    start = time.perf_counter()
    root = arm_root.ensure_root(log)
    setup_s = time.perf_counter() - start
    built = json.loads((root.folder / "ready.json").read_text())

    work = Path(tempfile.mkdtemp(prefix="kseg-arm64-"))
    try:
        _copy_sources(work / "src")
        entries, reference = [], {}
        for i, info in enumerate(infos):
            arrays = model_inputs(info, image)
            shutil.copy2(info["path"], work / f"model-{i}.tflite")
            paths = []
            for j, a in enumerate(arrays):
                np.save(work / f"input-{i}-{j}.npy", a)
                paths.append(f"{arm_root.GUEST_WORK}/input-{i}-{j}.npy")
            with runtime.Runner(info["path"], accelerator="cpu", num_threads=threads) as runner:
                reference[info["name"]] = runner.run(*arrays)
            entries.append({"index": i, "name": info["name"], "path": f"{arm_root.GUEST_WORK}/model-{i}.tflite",
                            "inputs": paths, "outputs": f"{arm_root.GUEST_WORK}/outputs-{i}.npz"})
        rows = []
        for cpu in cpu_list:
            for e in entries:
                (work / f"outputs-{e['index']}.npz").unlink(missing_ok=True)
            results = _guest_cpu(root, cpu, [dict(e) for e in entries], work, runs, threads, timeout, log)
            for info, e in zip(infos, entries):
                rows.append(_row(info, cpu, results.get(info["name"]), reference[info["name"]],
                                 work / f"outputs-{e['index']}.npz"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"tool": "export.arm64", "qemu": ".".join(map(str, version)),
            "root": {"key": root.key, "folder": str(root.folder), "build_s": built.get("build_s"),
                     "packages": root.config["packages"],
                     "cached": not root.built_now,
                     "setup_s": setup_s},
            "settings": {"cpus": list(cpu_list), "runs": runs, "threads": threads, "image": image},
            "models": [{k: i[k] for k in ("name", "path", "variant", "size_bytes", "num_ops", "inputs")}
                       for i in infos],
            "rows": rows, "ratios": ratios(rows)}


def _row(info, cpu, result, reference, outputs_path):
    row = {"model": info["name"], "family": family(info["name"]), "variant": info["variant"], "cpu": cpu,
           "error": None, "agree": False}
    if result is None or result.get("error"):
        row["error"] = (result or {}).get("error") or "not run"
        return row
    with np.load(outputs_path, allow_pickle=False) as data:
        candidate = [data[f"arr_{k}"] for k in range(len(data.files))]
    check = agreement.compare_outputs(reference, candidate, info["variant"], info["quanta"])
    counts = result.get("counts") or {}
    if not counts:
        row["error"] = "no instruction counts in the plugin's log"
    row.update({k: check[k] for k in ("agree", "rule", "max_abs_diff", "max_quanta", "argmax_agreement", "problems")})
    row.update(counts)
    row.update({"repeat_identical": result.get("repeat_identical"), "guest_load_s": result.get("load_s"),
                "guest_first_s": result.get("first_s")})
    return row


def ratios(rows):
    """fp32 / int8 instructions per inference for each (family, CPU) that has both."""
    by = {(r["family"], r["cpu"], r["variant"]): r.get("insn_per_inference") for r in rows if not r.get("error")}
    out = []
    for (fam, cpu, variant), count in by.items():
        int8 = by.get((fam, cpu, "int8"))
        if variant == "fp32" and count and int8:
            out.append({"family": fam, "cpu": cpu, "fp32_insn": count, "int8_insn": int8,
                        "fp32_over_int8": count / int8})
    return out


def format_report(report):
    """The ARM table as text: one line per model and CPU, then the fp32/int8 ratios."""
    columns = ["model", "variant", "cpu", "agrees", "max |diff|", "quanta", "argmax agr.", "Minsn/inference",
               "spread", "Minsn first", "Minsn load"]
    lines = []
    for r in report["rows"]:
        if r.get("error") and r.get("insn_per_inference") is None:
            lines.append([r["model"], r["variant"], r["cpu"], "FAILED: " + r["error"].splitlines()[0][:90]] + [""] * 7)
            continue
        fmt = lambda v, f: "-" if v is None else format(v, f)
        lines.append([r["model"], r["variant"], r["cpu"], "yes" if r["agree"] else "NO",
                      fmt(r.get("max_abs_diff"), ".2g"),
                      fmt(r.get("max_quanta"), "d"), fmt(r.get("argmax_agreement"), ".4f"),
                      fmt(r["insn_per_inference"] / 1e6, ".2f"), fmt(r.get("insn_spread"), ".2%"),
                      fmt(r["insn_first"] / 1e6, ".2f"), fmt(r["insn_load"] / 1e6, ".2f")])
    widths = [max([len(c)] + [len(str(line[i])) for line in lines]) for i, c in enumerate(columns)]
    text = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    text += ["  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]
    for r in report["ratios"]:
        text.append(f"{r['family']} on {r['cpu']}: fp32 / int8 instructions per inference = {r['fp32_over_int8']:.2f}")
    root = report["root"]
    settings = report["settings"]
    text.append(f"QEMU {report['qemu']}, {settings['threads']} thread(s), {settings['runs']} counted "
                f"inferences per row; root {root['folder']} ({'cached' if root['cached'] else 'built'}, "
                f"set-up {root['setup_s']:.0f} s)")
    for r in report["rows"]:
        for problem in r.get("problems") or []:
            text.append(f"disagreement: {r['model']} on {r['cpu']}: {problem}")
    return "\n".join(text)
