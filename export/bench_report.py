"""The benchmark's report: the text table printed on stdout and the JSON, CSV and chart files."""

import csv

import numpy as np

CSV_FIELDS = (
    "model", "backend", "runtime", "threads", "cores", "fully_accelerated", "size_bytes", "init_ms",
    "first_inference_ms", "runs", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "fps",
    "e2e_runs", "e2e_mean_ms", "e2e_p50_ms", "e2e_fps", "rss_start_mb", "rss_before_load_mb", "peak_rss_mb",
    "model_rss_mb", "error",
)


def _fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(rows, columns):
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def format_report(report):
    """The human-readable summary printed on stdout.

    Args:
        report: the benchmark's report dict: models (export.runtime.describe plus name),
            results (export.measure.measure rows) and profiles (profile_ops rows).

    Returns:
        The text: one line per model, the latency table, then each per-op profile.
    """
    out = []
    for m in report["models"]:
        (inp,) = m["inputs"][:1] or [None]
        spec = f"input {list(inp['shape'])} {inp['dtype']}" if inp else "no inputs"
        package = m.get("package")
        parts = "" if not package else (
            f", GPU package of {len(package['parts'])} parts ("
            + " ".join(f"{p['device']}:{p['ops']}" for p in package["parts"]) + f"), {package['crossings']} crossings")
        out.append(f"{m['name']}: {m['size_bytes'] / 1024:.1f} KiB, {m['num_ops']} ops, "
                   f"{m['flops']['total'] / 1e9:.3f} GFLOP (conv/matmul), {spec}{parts}")
    columns = ["model", "config", "full", "init ms", "first ms", "mean", "std", "p50", "p90", "p99", "FPS",
               "e2e mean", "RSS pre-model MB", "peak RSS MB"]
    rows = []
    for r in report["results"]:
        if r.get("error"):
            rows.append([r["model"], r["label"]] + ["-"] * (len(columns) - 3) + ["FAILED: " + r["error"].splitlines()[0][:80]])
            continue
        i, e = r["invoke"], r["end_to_end"] or {}
        rows.append([r["model"], r["label"], _fmt(r["fully_accelerated"]), _fmt(r["init_ms"], 1), _fmt(r["first_inference_ms"]),
                     _fmt(i["mean_ms"], 3), _fmt(i["std_ms"], 3), _fmt(i["p50_ms"], 3), _fmt(i["p90_ms"], 3),
                     _fmt(i["p99_ms"], 3), _fmt(i["fps"], 1), _fmt(e.get("mean_ms"), 3), _fmt(r["rss_before_load_mb"], 1),
                     _fmt(r["peak_rss_mb"], 1)])
    out += ["", "latency in ms: invoke only (gpu: with the output read that waits for it) and end to end "
            "(decode + prepare + invoke + class map + overlay)",
            _table(rows, columns)]
    for p in report["profiles"]:
        out.append("")
        if p.get("error"):
            out.append(f"profile {p['model']} {p['label']}: FAILED: {p['error'].splitlines()[0]}")
            continue
        out.append(f"per-op profile {p['model']} {p['label']} (interpreter, ops timed alone):")
        rows = [[op, str(v["count"]), _fmt(v["ms"], 3), f"{100 * v['share']:.1f}%"] for op, v in p["by_type"].items()]
        out.append(_table(rows, ["op", "count", "ms", "share"]))
        out.append(f"sum of ops {p['sum_ms']:.3f} ms vs whole model {p['whole_model_ms']:.3f} ms "
                   f"(ratio {p['sum_over_whole']:.2f}; invoke overhead {1000 * p['invoke_overhead_ms']:.1f} us)")
        skipped = {}
        for s in p["skipped"]:
            skipped.setdefault((s["op"], s["reason"]), []).append(s["index"])
        for (op, reason), indices in skipped.items():
            out.append(f"  not profiled: {len(indices)} x {op} (ops {_ranges(indices)}): {reason}")
    return "\n".join(out)


def _ranges(indices):
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts, start = [], None
    for i, k in enumerate(indices):
        if start is None:
            start = k
        if i + 1 == len(indices) or indices[i + 1] != k + 1:
            parts.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ", ".join(parts)


def csv_rows(report):
    """One flat dict per configuration, keyed by `CSV_FIELDS` (the CSV's rows).

    Args:
        report: the benchmark's report dict (see `format_report`).

    Returns:
        list of dicts, in the order of report["results"].
    """
    rows = []
    for r in report["results"]:
        i, e = r.get("invoke") or {}, r.get("end_to_end") or {}
        row = {k: r.get(k) for k in CSV_FIELDS}
        row.update({k: i.get(k) for k in ("runs", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "fps")})
        row.update({"e2e_runs": e.get("runs"), "e2e_mean_ms": e.get("mean_ms"), "e2e_p50_ms": e.get("p50_ms"),
                    "e2e_fps": e.get("fps"), "cores": " ".join(map(str, r.get("cores") or [])) or None})
        rows.append(row)
    return rows


def write_outputs(report, json_path=None, csv_path=None, chart_path=None):
    """Writes the report's files, each atomically; a None path is skipped.

    Args:
        report: the benchmark's report dict (export.bench.run).
        json_path: everything, as JSON.
        csv_path: one row per configuration (`csv_rows`).
        chart_path: a PNG bar chart of mean invoke latency per configuration.
    """
    from kseg.utils import atomic_write, write_json

    if json_path:
        write_json(json_path, _jsonable(report))
    if csv_path:
        with atomic_write(csv_path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(csv_rows(report))
    if chart_path:
        from kseg.viz import save_bar_chart

        groups = {}
        for r in report["results"]:
            groups.setdefault(r["model"], {})[r["label"]] = (r.get("invoke") or {}).get("mean_ms", float("nan"))
        save_bar_chart(chart_path, groups, title="Mean invoke latency per configuration", ylabel="ms (lower is better)",
                       size=(max(640, 160 * len(groups) * max(len(g) for g in groups.values())), 480))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
