"""Every fuzz target by name, and how many inputs each gets by default (benchmark, test)."""

from tests.fuzzing import targets_data, targets_models, targets_runs

TARGETS = {**targets_data.TARGETS, **targets_runs.TARGETS, **targets_models.TARGETS}
TARGETS["yolo"] = TARGETS.pop("yolo")  # the newest reader last

# Inputs per target: the benchmark's default (slow native parsers fewer) and the test's sample.
BENCHMARK_COUNTS = {name: 3000 for name in TARGETS} | {"keras": 1000, "tflite": 2000, "bench": 300}
TEST_COUNTS = {name: 24 for name in TARGETS} | {"keras": 10, "bench": 4, "image_mask_pair": 16}
