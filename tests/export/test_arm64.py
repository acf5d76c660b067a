"""export.arm64: refused configurations, agreement rules, the plugin's log, and (marked `arm64`)
the ISBI U-Net's four variants and a Mask R-CNN on emulated cortex-a76 and cortex-a53 cores."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export import runtime
from export.arm64 import agreement, cpus, plugin
from export.arm64 import measure as arm_measure
from export.arm64 import root as arm_root

QEMU_7_2 = (7, 2, 22)
QEMU_10 = (10, 0, 2)
ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- refused configurations


@pytest.mark.parametrize("cpu", [None, "", "  "])
def test_an_unpinned_cpu_is_refused(cpu, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n")
    with pytest.raises(cpus.ConfigurationError, match="unpinned CPU"):
        cpus.check_configuration(QEMU_10, cpu, str(info))


def test_max_without_sme_off_is_refused_on_qemu_7_2(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n")
    with pytest.raises(cpus.ConfigurationError, match="sme=off"):
        cpus.check_configuration(QEMU_7_2, "max", str(info))
    with pytest.raises(cpus.ConfigurationError, match="sme=off"):
        cpus.check_configuration(QEMU_7_2, "max,sve=off", str(info))
    # With sme=off the int8 results are right, but 7.2 still needs a MIDR for the fake cpuinfo.
    with pytest.raises(cpus.ConfigurationError, match="no MIDR known"):
        cpus.check_configuration(QEMU_7_2, "max,sme=off", str(info))
    assert cpus.check_configuration(QEMU_10, "max", None) == "max"  # QEMU 10: exact on max, own cpuinfo


def test_qemu_7_2_without_a_fake_cpuinfo_is_refused(tmp_path):
    with pytest.raises(cpus.ConfigurationError, match="fake arm64 cpuinfo is required"):
        cpus.check_configuration(QEMU_7_2, "cortex-a76", None)
    with pytest.raises(cpus.ConfigurationError, match="fake arm64 cpuinfo is required"):
        cpus.check_configuration(QEMU_7_2, "cortex-a76", str(tmp_path / "absent"))
    info = tmp_path / "cpuinfo"
    info.write_text(cpus.fake_cpuinfo("cortex-a76", ["fp", "asimd"], 2))
    assert cpus.check_configuration(QEMU_7_2, "cortex-a76", str(info)) == "cortex-a76"
    assert cpus.check_configuration(QEMU_10, "cortex-a53", None) == "cortex-a53"


def test_measure_refuses_before_any_set_up(monkeypatch, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(runtime.empty_model({"shape": (1,), "dtype": "float32"}))
    built = []
    monkeypatch.setattr(arm_root, "check_host", lambda: None)
    monkeypatch.setattr(arm_root, "qemu_version", lambda: QEMU_7_2)
    monkeypatch.setattr(arm_root, "ensure_root", lambda log=None: built.append(1))
    for cpu, message in (("max", "sme=off"), (None, "unpinned"), ("cortex-x9", "no MIDR")):
        with pytest.raises(cpus.ConfigurationError, match=message):
            arm_measure.measure([str(model)], cpu_list=["cortex-a76", cpu])
    assert not built


def test_qemu_versions_are_read_and_checked():
    assert cpus.parse_qemu_version("qemu-aarch64 version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n") == (7, 2, 22)
    assert cpus.parse_qemu_version("qemu-aarch64 version 10.0.2") == (10, 0, 2)
    with pytest.raises(cpus.ConfigurationError, match="cannot read a QEMU version"):
        cpus.parse_qemu_version("command not found")
    assert cpus.needs_fake_cpuinfo(QEMU_7_2) and not cpus.needs_fake_cpuinfo(QEMU_10)
    assert plugin.api_version(QEMU_7_2) == 1 and plugin.api_version(QEMU_10) == 2


def test_fake_cpuinfo_carries_the_cores_midr_and_the_reported_features():
    auxv = np.array([6, 4096, 16, (1 << 0) | (1 << 1) | (1 << 20), 26, 1 << 13, 0, 0], dtype="<u8").tobytes()
    hwcap, hwcap2 = cpus.read_auxv_hwcaps(auxv)
    features = cpus.hwcap_features(hwcap, hwcap2)
    assert features == ["fp", "asimd", "asimddp", "i8mm"]
    text = cpus.fake_cpuinfo("cortex-a76", features, 2)
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 2 and blocks[1].startswith("processor\t: 1")
    assert "Features\t: fp asimd asimddp i8mm\n" in text
    assert "CPU implementer\t: 0x41\n" in text and "CPU variant\t: 0x4\n" in text and "CPU part\t: 0xd0b\n" in text
    assert "CPU part\t: 0xd03\n" in cpus.fake_cpuinfo("cortex-a53", features, 1)
    with pytest.raises(cpus.ConfigurationError, match="no known name"):
        cpus.hwcap_features(1 << 40)


# ----------------------------------------------------------------------------- agreement rules


def test_float_variants_agree_within_1e_5_absolute_or_relative():
    ref = np.array([[0.5, -3.0], [250.0, 0.0]], np.float32)
    for variant in ("fp32", "fp16"):
        assert agreement.compare_outputs([ref], [ref.copy()], variant)["agree"]
        small = ref + np.array([[8e-6, 0], [0, 0]], np.float32)
        assert agreement.compare_outputs([ref], [small], variant)["agree"]
        off = ref + np.array([[3e-5, 0], [0, 0]], np.float32)
        result = agreement.compare_outputs([ref], [off], variant)
        assert not result["agree"] and "exceeds" in result["problems"][0]
        large = ref + np.array([[0, 0], [2e-3, 0]], np.float32)  # 8e-6 relative on 250
        assert agreement.compare_outputs([ref], [large], variant)["agree"]
        too_large = ref + np.array([[0, 0], [5e-3, 0]], np.float32)
        assert not agreement.compare_outputs([ref], [too_large], variant)["agree"]


def test_integer_outputs_must_be_equal_and_int8_within_one_quantum():
    classes = np.array([[1, 2, 0]], np.int32)
    flipped = np.array([[1, 2, 1]], np.int32)
    assert agreement.compare_outputs([classes], [classes.copy()], "fp32")["agree"]
    assert not agreement.compare_outputs([classes], [flipped], "fp32")["agree"]
    assert not agreement.compare_outputs([classes], [flipped], "int8", quanta=[None])["agree"]
    q = np.array([[10, 200, 0]], np.uint8)
    one = agreement.compare_outputs([q], [np.array([[11, 199, 0]], np.uint8)], "int8", quanta=[0.05])
    assert one["agree"] and one["max_quanta"] == 1
    two = agreement.compare_outputs([q], [np.array([[12, 200, 0]], np.uint8)], "int8", quanta=[0.05])
    assert not two["agree"] and two["max_quanta"] == 2
    assert agreement.compare_outputs([q], [q.copy()], "int8", quanta=[0.05])["max_quanta"] == 0
    f = np.array([0.5, 1.0], np.float32)  # a float output read through DEQUANTIZE, scale 0.1
    assert agreement.compare_outputs([f], [f + np.float32(0.1)], "int8", quanta=[0.1])["agree"]
    assert not agreement.compare_outputs([f], [f + np.float32(0.25)], "int8", quanta=[0.1])["agree"]


def test_dynamic_range_uses_the_export_reports_argmax_tolerance():
    from export.report import TOLERANCES

    assert agreement.DYNAMIC_MIN_AGREEMENT == TOLERANCES["dynamic"]["min_agreement"]
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1, 10, 10, 2)).astype(np.float32)
    flip = ref.copy()
    flip[0, 0, 0] = flip[0, 0, 0, ::-1]  # 1 of 100 pixels changes class
    assert ref[0, 0, 0, 0] != ref[0, 0, 0, 1]
    result = agreement.compare_outputs([ref], [flip + 3e-3], "dynamic")
    assert result["agree"] and result["argmax_agreement"] == pytest.approx(0.99)
    flip[0, 0, :3] = ref[0, 0, :3, ::-1]  # 3 of 100
    assert not agreement.compare_outputs([ref], [flip], "dynamic")["agree"]
    assert not agreement.compare_outputs([ref], [flip], "fp32")["agree"]


def test_mismatched_outputs_never_agree():
    a = np.zeros((1, 4), np.float32)
    assert not agreement.compare_outputs([a], [np.zeros((1, 5), np.float32)], "fp32")["agree"]
    assert not agreement.compare_outputs([a], [a.astype(np.float16)], "fp32")["agree"]
    nan = a.copy()
    nan[0, 1] = np.nan
    assert not agreement.compare_outputs([a], [nan], "fp32")["agree"]
    assert agreement.compare_outputs([nan], [nan.copy()], "fp32")["agree"]
    with pytest.raises(ValueError, match="2 outputs"):
        agreement.compare_outputs([a, a], [a], "fp32")
    with pytest.raises(ValueError, match="variant"):
        agreement.compare_outputs([a], [a], "bf16")


# ----------------------------------------------------------------------------- plugin log, counts, cache


def test_the_plugins_marks_give_per_stage_instruction_counts():
    log = "\n".join(["some qemu line", "kseg-insn mark 100 1000", "kseg-insn mark 101 5000", "kseg-insn mark 102 9000",
                     "kseg-insn mark 103 12000", "kseg-insn mark 104 15010", "kseg-insn exit 0 16000"])
    marks, total = plugin.read_log(log)
    assert total == 16000 and marks[0] == (100, 1000)
    counts = arm_measure.counts_from_marks(marks, 0, runs=2)
    assert counts["insn_load"] == 4000 and counts["insn_first"] == 4000
    assert counts["insn_runs"] == [3000, 3010] and counts["insn_per_inference"] == 3005
    assert counts["insn_spread"] == pytest.approx(10 / 3005)
    assert arm_measure.counts_from_marks(marks, 0, runs=3) is None  # a mark is missing
    assert arm_measure.counts_from_marks(marks, 1, runs=1) is None


def test_the_plugin_builds_with_gcc(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    library = plugin.build(tmp_path / "insn.so", QEMU_7_2)
    symbols = subprocess.run(["nm", "-D", str(library)], capture_output=True, text=True).stdout
    assert " T qemu_plugin_install" in symbols and " D qemu_plugin_version" in symbols


def test_the_cache_key_follows_versions():
    config = {"suite": "bookworm", "mirror": "http://deb.debian.org/debian", "qemu": [7, 2, 22],
              "packages": {"ai-edge-litert": "2.3.0", "numpy": "2.4.6"}, "host_python": "3.11.7"}
    key = arm_root.setup_key(config)
    assert key == arm_root.setup_key(dict(config))
    assert key != arm_root.setup_key({**config, "packages": {"ai-edge-litert": "2.3.1", "numpy": "2.4.6"}})
    assert key != arm_root.setup_key({**config, "qemu": [10, 0, 2]})


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_deleting_a_root_unmounts_a_bound_dev_first(tmp_path):
    host_dev = tmp_path / "host_dev"
    host_dev.mkdir()
    (host_dev / "null").write_text("a host device file")
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    subprocess.run(["mount", "--rbind", str(host_dev), str(root / "dev")], check=True)
    try:
        arm_root.remove_tree(root)
    finally:
        subprocess.run(["umount", "-R", str(root / "dev")], capture_output=True)
    assert not root.exists()
    assert (host_dev / "null").read_text() == "a host device file"  # rm -r went nowhere near it


def test_variant_names_map_to_families():
    assert arm_measure.family("unet_int8.tflite") == "unet"
    assert arm_measure.family("mask_rcnn_fp32.tflite") == "mask_rcnn"
    assert arm_measure.family("selfie.tflite") == "selfie"
    rows = [{"family": "unet", "cpu": "a", "variant": "fp32", "insn_per_inference": 300.0},
            {"family": "unet", "cpu": "a", "variant": "int8", "insn_per_inference": 100.0},
            {"family": "unet", "cpu": "b", "variant": "fp32", "insn_per_inference": 50.0}]
    assert arm_measure.ratios(rows) == [{"family": "unet", "cpu": "a", "fp32_insn": 300.0, "int8_insn": 100.0,
                                         "fp32_over_int8": 3.0}]


# ----------------------------------------------------------------------------- on the emulated cores


def _require_arm64():
    """Skips (or with KSEG_REQUIRE_ARM64=1 fails) when this host cannot run the emulated cores."""
    try:
        arm_root.check_host()
    except arm_root.SetupError as e:
        if os.environ.get("KSEG_REQUIRE_ARM64") == "1":
            pytest.fail(f"KSEG_REQUIRE_ARM64=1 but the arm64 emulation cannot run: {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from arm64_models import export_models

    return export_models(tmp_path_factory.mktemp("arm64-models"), size=64, detector_size=64)


def test_variants_are_recognized_from_the_graph(exported):
    for name, path in exported.items():
        assert agreement.detect_variant(path.read_bytes()) == name.rsplit("_", 1)[1].split(".")[0], name
    quanta = agreement.output_quanta(exported["unet_int8.tflite"].read_bytes())
    assert len(quanta) == 1 and quanta[0] > 0
    assert agreement.output_quanta(exported["unet_fp32.tflite"].read_bytes()) == [None]


@pytest.mark.arm64
@pytest.mark.slow
def test_unet_variants_and_a_detector_agree_with_x86_on_emulated_arm_cores(exported):
    _require_arm64()
    report = arm_measure.measure([str(p) for p in exported.values()], cpu_list=("cortex-a76", "cortex-a53"), runs=2,
                                 timeout=1500)
    print(arm_measure.format_report(report))
    rows = {(r["model"], r["cpu"]): r for r in report["rows"]}
    assert len(rows) == 2 * len(exported)
    for (model, cpu), r in rows.items():
        assert r["error"] is None, (model, cpu, r["error"])
        assert r["agree"], (model, cpu, r["problems"])
        assert r["repeat_identical"], (model, cpu)
        assert r["insn_per_inference"] > 1e6 and r["insn_spread"] < 0.01, (model, cpu, r["insn_runs"])
    for cpu in ("cortex-a76", "cortex-a53"):
        assert rows[("unet_int8.tflite", cpu)]["max_quanta"] <= 1
        assert rows[("unet_fp32.tflite", cpu)]["max_abs_diff"] <= 1e-5
    # The int8 kernels differ by core: the a76's dot-product path runs far fewer instructions.
    a76, a53 = (rows[("unet_int8.tflite", c)]["insn_per_inference"] for c in ("cortex-a76", "cortex-a53"))
    assert a76 < 0.6 * a53, (a76, a53)
    ratio = {r["cpu"]: r["fp32_over_int8"] for r in report["ratios"] if r["family"] == "unet"}
    assert ratio["cortex-a76"] > 1.5, ratio


@pytest.mark.arm64
def test_the_edge_benchmark_itself_runs_on_an_emulated_core(exported):
    _require_arm64()
    argv = ["-m", "export.bench", "{model0}", "--threads", "1", "--runs", "2", "--warmup", "0", "--e2e-runs", "1"]
    result = arm_measure.guest_command([exported["unet_int8.tflite"]], "cortex-a76", argv, timeout=900)
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("model-0.tflite ")]
    assert [r[:3] for r in rows] == [["model-0.tflite", "cpu", "x1"]], result.stdout
    assert "FAILED" not in result.stdout


# ----------------------------------------------------------------------------- the instruction-count guard


def _guard():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import arm64_insn_guard

    return arm64_insn_guard


def test_the_guard_fails_on_an_increase_over_five_percent():
    guard = _guard()
    base = {"unet_int8.tflite@cortex-a76": 1000.0, "unet_fp32.tflite@cortex-a76": 3000.0}
    now = {"unet_int8.tflite@cortex-a76": 1049.0, "unet_fp32.tflite@cortex-a76": 3000.0}
    rows, failed = guard.compare(base, now, 0.05)
    assert not failed and [r[4] for r in rows] == ["ok", "ok"]
    now = {"unet_int8.tflite@cortex-a76": 1051.0, "unet_fp32.tflite@cortex-a76": 2000.0}
    rows, failed = guard.compare(base, now, 0.05)
    assert failed and {r[0]: r[4] for r in rows} == {"unet_int8.tflite@cortex-a76": "REGRESSION",
                                                    "unet_fp32.tflite@cortex-a76": "improved"}
    _, failed = guard.compare(base, {"unet_int8.tflite@cortex-a76": 1000.0}, 0.05)
    assert failed  # a count that is no longer measured fails too


def test_the_guard_records_and_checks_a_baseline_from_a_report(tmp_path):
    guard = _guard()

    def report(count, agree=True):
        row = {"model": "unet_int8.tflite", "cpu": "cortex-a76", "agree": agree, "error": None,
               "insn_per_inference": count}
        return {"rows": [row], "qemu": "7.2.22", "root": {"packages": {"ai-edge-litert": "2.3.0"}},
                "settings": {"size": 64, "detector_size": 64, "seed": 0, "detector": True, "threads": 1},
                "model_sha256": {"unet_int8.tflite": "ab"}}

    paths = {}
    for name, content in (("base", report(1000.0)), ("same", report(1040.0)), ("worse", report(1060.0)),
                          ("wrong", report(1000.0, agree=False))):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(content))
    baseline = tmp_path / "baseline.json"
    common = ["--baseline", str(baseline)]
    assert guard.main(["--report", str(paths["base"])] + common) == guard.EXIT_BAD_INPUT  # no baseline yet
    assert guard.main(["--update", "--report", str(paths["wrong"])] + common) == guard.EXIT_REGRESSION
    assert guard.main(["--update", "--report", str(paths["base"])] + common) == guard.EXIT_OK
    assert guard.main(["--report", str(paths["same"])] + common) == guard.EXIT_OK
    assert guard.main(["--report", str(paths["worse"])] + common) == guard.EXIT_REGRESSION
    other = report(1000.0)
    other["settings"]["size"] = 128  # counts at another input size are not comparable
    paths["other"] = tmp_path / "other.json"
    paths["other"].write_text(json.dumps(other))
    assert guard.main(["--report", str(paths["other"])] + common) == guard.EXIT_BAD_INPUT
