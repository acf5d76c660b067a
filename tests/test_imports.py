"""One direction of imports (issue 15): the checks of tests/import_graph.py on this tree.

The checks read every module with `ast`, imports inside functions included; the last test also
imports the edge modules in a fresh interpreter. `test_checks_find_each_forbidden_import` runs them
on a small made-up tree with one import of each forbidden kind, so a checker that found nothing
would fail there.
"""

import subprocess
import sys
import textwrap

from tests.import_graph import (
    ROOT,
    TENSORFLOW,
    edge_modules,
    forbidden_imports,
    foreign_chains,
    main,
    read_imports,
    tensorflow_chains,
    unlayered,
    upward_edges,
)


def _lines(items):
    return "\n".join(f"{i.path}:{i.line} {i.module} imports {i.target} {i.names or ''}" for i in items)


def test_core_imports_neither_cli_nor_export_and_export_takes_no_private_name():
    found = forbidden_imports(read_imports())
    assert not found, "\n".join(f"{item.path}:{item.line}: {why}" for item, why in found)


def test_no_import_runs_back_up_the_layers():
    found = upward_edges(read_imports())
    assert not found, _lines(found)


def test_every_package_has_a_layer():
    assert unlayered(read_imports()) == []


def test_edge_modules_reach_no_tensorflow_even_inside_functions():
    modules = edge_modules()
    assert {m.split(".")[1] for m in modules} >= {"runtime", "metadata", "video", "bench", "frames"}
    assert tensorflow_chains() == {}


def test_edge_modules_reach_only_the_packages_of_the_edge_install():
    found = foreign_chains()
    assert not found, "\n".join(" -> ".join(chain) for chain in found.values())


def test_edge_modules_import_without_tensorflow():
    modules = edge_modules()
    code = (f"import sys\nimport {', '.join(modules)}\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TENSORFLOW!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_checks_find_each_forbidden_import(tmp_path, capsys):
    _write(tmp_path, {
        "kseg/__init__.py": "",
        "kseg/cli.py": "import export.bench\n",  # the composition root may
        "kseg/utils/__init__.py": "def _hidden():\n    pass\n",
        "kseg/ops/__init__.py": "",
        "kseg/ops/boxes.py": "def area():\n    from kseg.models import heavy\n",
        "kseg/models/__init__.py": "",
        "kseg/models/heavy.py": "import keras\n",
        "kseg/data/__init__.py": "",
        "kseg/data/folder.py": "def read():\n    from export import bench\n    import kseg.cli\n",
        "export/__init__.py": "",
        "export/runtime.py": "import json\nimport numpy\nfrom PIL import Image\n",
        "export/metadata.py": "def read():\n    from scipy import ndimage\n",
        "export/bench.py": "from kseg.utils import _hidden\n",
        "export/video.py": "import kseg.utils as u\n\ndef f():\n    return u._hidden()\n",
        "export/frames.py": "def draw():\n    from kseg.ops import boxes\n",
        "export/report.py": "import tensorflow\nfrom . import runtime\n",
    })
    imports = read_imports(tmp_path)
    found = sorted((item.path, item.line, why) for item, why in forbidden_imports(imports, tmp_path))
    assert found == [
        ("export/bench.py", 1, "export/ uses the private kseg name _hidden"),
        ("export/video.py", 4, "export/ uses the private kseg name _hidden"),
        ("kseg/data/folder.py", 2, "kseg core imports export.bench"),
        ("kseg/data/folder.py", 3, "kseg core imports kseg.cli"),
    ]
    assert sorted((i.path, i.target) for i in upward_edges(imports)) == [
        ("kseg/data/folder.py", "export.bench"),
        ("kseg/data/folder.py", "kseg.cli"),
        ("kseg/ops/boxes.py", "kseg.models.heavy"),
    ]
    assert tensorflow_chains(tmp_path, imports) == {
        "export.frames": ["export.frames", "kseg.ops.boxes", "kseg.models.heavy", "keras"],
    }
    assert foreign_chains(tmp_path, imports) == {
        ("export.frames", "keras"): ["export.frames", "kseg.ops.boxes", "kseg.models.heavy", "keras"],
        ("export.metadata", "scipy"): ["export.metadata", "scipy"],
    }
    assert main([str(tmp_path)]) == 1
    assert "edges running back up: 3" in capsys.readouterr().out
