"""The project set-up that CI and users rely on: README commands, .ci/run, dependencies."""

import configparser
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", quick)


def test_readme_quick_start_has_exactly_two_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("kseg demo")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_dependencies_follow_the_stack():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requires = config["options"]["install_requires"].lower()
    for name in ("tensorflow==2.21", "numpy", "scipy", "pillow", "pycocotools", "ai-edge-litert"):
        assert name in requires
    for dropped in ("tensorflow-addons", "keras-cv", "tflite-runtime", "matplotlib"):
        assert dropped not in requires
    assert "kseg = kseg.cli:main" in config["options.entry_points"]["console_scripts"]


def test_embedded_isbi_sample_is_complete():
    from kseg.data import find_pairs
    from kseg.data.samples import isbi_sample_dirs

    pairs = find_pairs(*isbi_sample_dirs())
    assert len(pairs) == 10


def test_public_api_is_explicit():
    import kseg

    for name in kseg.__all__:
        assert getattr(kseg, name) is not None
    code = "import kseg, kseg.utils, kseg.viz, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
