"""Short soaks of the live paths: benchmarks/soak.py's runs and checks at a few hundred frames.

The LiteRT runner (CPU, and the GPU accelerator on SwiftShader), `kseg demo-video` and the browser
demo each run long enough for ten latency windows after the warm-up, and must pass the same
checks as the full soak (benchmarks.soak.analyse): memory growth after the warm-up within the
bounds of benchmarks.soak.BOUNDS_MB, and the late windows' p99 within P99_RATIO of the first's.
The checks themselves are shown to fail on a drift and on a leak, with the runner's own loop.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import soak  # noqa: E402
from tests.mobile_demo.test_mobile_demo import browser_ready  # noqa: E402,F401  (a fixture: skips, or fails under KSEG_REQUIRE_BROWSER=1)
from tests.export.test_runtime import requires_swiftshader, tiny_models  # noqa: E402

pytestmark = pytest.mark.slow
WINDOW_S = 60.0  # as the full soak: every run here is shorter, so its windows are a tenth of it


def _passed(result):
    """A readable assertion message: what failed and by how much."""
    failed = [f"p99 ratio {result['p99_ratio']:.2f} > {soak.P99_RATIO}"] if not result["latency_passed"] else []
    failed += [f"{name} grew {m['growth_mb']:.2f} MB > {m['bound_mb']} MB"
               for name, m in result["memory"].items() if not m["passed"]]
    return not failed, "; ".join(failed)


# ----------------------------------------------------------------------------- the checks


def _steady(frames=3000, seconds=100.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, seconds, frames)
    return t, 10.0 + rng.exponential(1.0, frames), np.full(frames, 100.0) + rng.normal(0, 0.05, frames)


def test_a_steady_run_passes_and_one_noisy_window_does_not_fail_it():
    t, latency, rss = _steady()
    result = soak.analyse(t, latency, {"rss": (t, rss)}, WINDOW_S)
    assert result["passed"] and len(result["windows"]) == 10
    assert result["window_s"] == pytest.approx(0.95 * 100 / 10)
    noisy = latency.copy()
    noisy[(t > 63) & (t < 70)] *= 3  # another job on the machine, within one window
    result = soak.analyse(t, noisy, {"rss": (t, rss)}, WINDOW_S)
    assert result["passed"] and result["windows_over_ratio"] == 1


def test_a_latency_drift_fails():
    t, latency, rss = _steady()
    result = soak.analyse(t, latency * (1 + t / 100), {"rss": (t, rss)}, WINDOW_S)  # 2x slower by the end
    assert not result["latency_passed"] and result["p99_ratio"] > soak.P99_RATIO
    assert result["memory"]["rss"]["passed"] and result["latency_checked"] == "wall"


def test_with_cpu_times_the_check_is_on_them():
    """A frame's CPU time that drifts fails; wall-clock p99 raised by other jobs alone does not."""
    t, latency, rss = _steady()
    cpu = latency * 0.9
    waits = np.where(np.random.default_rng(1).random(t.size) < 0.02, 40.0 * (t > 50), 0.0)  # preempted, late on
    result = soak.analyse(t, latency + waits, {"rss": (t, rss)}, WINDOW_S, cpu_ms=cpu)
    assert result["latency_checked"] == "cpu" and result["passed"]
    assert result["wall"]["p99_ratio"] > soak.P99_RATIO  # reported, not checked
    result = soak.analyse(t, latency, {"rss": (t, rss)}, WINDOW_S, cpu_ms=cpu * (1 + t / 100))
    assert not result["latency_passed"] and result["wall"]["p99_ratio"] <= soak.P99_RATIO


def test_growth_after_the_warm_up_fails_but_the_warm_up_itself_does_not():
    t, latency, rss = _steady()
    leak = rss + np.linspace(0, 1.5 * soak.BOUNDS_MB["rss"], t.size)
    result = soak.analyse(t, latency, {"rss": (t, leak)}, WINDOW_S)
    assert result["latency_passed"] and not result["memory"]["rss"]["passed"]
    assert result["memory"]["rss"]["slope_kb_per_1000_frames"] > 0
    cache = rss + np.where(t < 4, 500.0 * t / 4, 500.0)  # fills in the warm-up (5 % = 5 s), then flat
    assert soak.analyse(t, latency, {"rss": (t, cache)}, WINDOW_S)["passed"]
    with pytest.raises(ValueError, match="warm-up"):
        soak.analyse(t, latency, {}, WINDOW_S, warmup_s=200)


def leaky_runner_loop(model, frames):
    """soak.runner_loop with Runner.run keeping every output (48 KB a frame); for in_subprocess."""
    from export import runtime

    kept, run = [], runtime.Runner.run
    runtime.Runner.run = lambda self, *a: kept.append(run(self, *a)) or kept[-1]
    out = soak.runner_loop(model, "cpu", frames)
    return {**out, "kept": len(kept)}


def test_the_runner_loop_catches_a_leak():
    """runner_loop in a fresh process (a test process reuses its freed pages), leaking: it fails."""
    from export import runtime

    out = runtime.in_subprocess(leaky_runner_loop, tiny_models()[0]["float"], 600, timeout=300)
    result = soak.analyse(out["t"], out["latency_ms"], {"rss": out["rss"]}, WINDOW_S, cpu_ms=out["cpu_ms"])
    assert out["kept"] == 600 and not result["memory"]["rss"]["passed"], result["memory"]
    assert result["memory"]["rss"]["growth_mb"] > 20  # 0.95 x 600 frames x 48 KB, less the warm-up's


# ----------------------------------------------------------------------------- the paths


def test_runner_cpu_soak():
    result, _ = soak.soak_runner(tiny_models()[0]["float"], "cpu", 2000, WINDOW_S)
    assert result["frames"] == 2000 and len(result["windows"]) >= 10
    ok, why = _passed(result)
    assert ok, why


@requires_swiftshader
def test_runner_gpu_soak_on_swiftshader():
    result, _ = soak.soak_runner(tiny_models()[0]["float"], "gpu", 200, WINDOW_S)
    assert result["fully_accelerated"] is True
    ok, why = _passed(result)
    assert ok, why


@pytest.mark.skipif(not all(map(__import__("shutil").which, ("ffmpeg", "ffprobe"))),
                    reason="ffmpeg/ffprobe not installed (apt-get install ffmpeg; CI installs it)")
def test_demo_video_soak(tmp_path):
    result, series = soak.soak_video(tiny_models()[0]["float"], 400, WINDOW_S, tmp_path)
    assert result["frames"] == 400 and len(series["latency_ms"]) == 400  # --timings: one line a frame
    assert np.all(np.diff(series["t"]) >= 0)
    ok, why = _passed(result)
    assert ok, why


def test_page_soak(browser_ready, trained_unet, tmp_path):  # noqa: F811
    """25 s of the page: the JS heap and LiteRT.js's WASM memory stay flat, and so does latency.

    Chromium's own PSS is measured but not checked here: its frame cache takes about two minutes
    to fill (benchmarks.soak.PAGE_WARMUP_S), longer than this test.
    """
    from export import page

    site = soak.export_site(tmp_path, model=trained_unet[0], gpu_model=False)
    with page.serve(site["dist"]) as url:
        result, _ = soak.soak_page({**site, "url": url}, 25, WINDOW_S, interval=1.0, warmup_s=None)
    assert result["frames"] >= 100 and result["dropped_timings"] == 0
    memory = result["memory"]
    assert memory["wasm_heap"]["baseline_mb"] > 1 and memory["js_heap"]["baseline_mb"] > 0.5  # measured, not zeros
    for name in ("js_heap", "wasm_heap"):
        assert memory[name]["passed"], (name, memory[name])
    assert result["latency_passed"], (result["p99_ratio"], result["windows"])
