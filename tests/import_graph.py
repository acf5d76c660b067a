"""The package-level import graph of kseg and export/, and every import that breaks the layering.

    python3 tests/import_graph.py [ROOT]        # ROOT: a checkout (default: this one)

Reads every module under kseg/ and export/ with `ast` (no code runs), including the imports inside
functions, and prints one line per package: its layer and what it imports. Then it lists:

- the edges that run back up (a package importing one from a higher layer), with file:line;
- the forbidden imports (`forbidden_imports`): kseg/ importing `export` or `kseg.cli` (only
  kseg/cli.py and kseg/launch.py may), export/ importing a private `_name` of kseg;
- the edge modules (`EDGE_MODULES`) that reach TensorFlow or Keras, or any package beyond the edge
  install's (`EDGE_PACKAGES`), following imports through kseg and export (also inside functions),
  with the chain.

It exits 1 when any of these lists is non-empty. tests/test_imports.py runs the same checks.

Layers, low to high (arch: utils/viz -> ops -> layers -> backbones -> models -> losses/metrics/data
-> training -> tasks -> export -> cli); a package may import its own layer and the ones below.
"""

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "kseg": 0,  # the package's __init__: the version and lazy attributes only
    "kseg.utils": 0,
    "kseg.viz": 0,
    "kseg.ops": 1,
    "kseg.layers": 2,
    "kseg.backbones": 3,
    "kseg.models": 4,
    "kseg.weights": 5,
    "kseg.losses": 5,
    "kseg.metrics": 5,
    "kseg.data": 5,
    "kseg.training": 6,
    "kseg.tasks": 7,
    "export": 8,
    "kseg.cli": 9,
    "kseg.cli_args": 9,  # the parser of kseg.cli
    "kseg.launch": 9,
}
COMPOSITION_ROOTS = ("kseg.cli", "kseg.launch")
EDGE_MODULES = ("runtime", "metadata", "video", "bench", "frames")  # export/<name>*.py or export/<name>*/
TENSORFLOW = ("tensorflow", "keras", "tf_keras")
EDGE_PACKAGES = ("numpy", "PIL", "ai_edge_litert", "flatbuffers")  # setup.cfg install_requires, as imported


@dataclass(frozen=True)
class Import:
    """One import statement's target, as written in a module.

    Attributes:
        module: the importing module, e.g. "kseg.cli".
        path: its file, relative to the root.
        line: the statement's line.
        target: the imported module, absolute, e.g. "export.bench" or "kseg.data.folder".
        names: the names taken with `from target import ...` (empty for `import target`).
    """

    module: str
    path: str
    line: int
    target: str
    names: tuple = ()


def module_files(root=ROOT):
    """The modules of kseg/ and export/: {dotted name: file path}."""
    files = {}
    for top in ("kseg", "export"):
        for path in sorted((Path(root) / top).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def _absolute(node, module, is_package):
    """The absolute module of an `ImportFrom` node (resolves `from . import x`)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def read_imports(root=ROOT):
    """Every import in kseg/ and export/, also inside functions: a list of `Import`.

    `from package import name` counts as an import of `package.name` when that is a module, and
    as an import of `package` (with `names`) for the names that are not modules.
    """
    files = module_files(root)
    imports = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = str(path.relative_to(root))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imports += [Import(module, rel, node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(node, module, is_package)
                names = tuple(alias.name for alias in node.names)
                submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in files]
                if len(submodules) < len(names):  # names taken from the package itself
                    imports.append(Import(module, rel, node.lineno, target, names))
                imports += [Import(module, rel, node.lineno, sub) for sub in submodules]
    return imports


def package_of(module):
    """The graph node of a module: kseg.<subpackage or module>, export.<module>, or None if outside."""
    parts = module.split(".")
    if parts[0] not in ("kseg", "export"):
        return None
    return ".".join(parts[:2])


def layer_of(package):
    """A package's layer (`LAYERS`; every export.* module is in the export layer), or None."""
    if package in LAYERS:
        return LAYERS[package]
    if package.startswith("export."):
        return LAYERS["export"]
    return None


def graph(imports):
    """{package: set of the kseg/export packages it imports} for every package that has modules."""
    edges = {}
    for item in imports:
        source = package_of(item.module)
        edges.setdefault(source, set())
        target = package_of(item.target)
        if target is not None and target != source:
            edges[source].add(target)
    return edges


def upward_edges(imports):
    """The imports from a package to one in a higher layer: a list of `Import`."""
    found = []
    for item in imports:
        source, target = package_of(item.module), package_of(item.target)
        if target is None or source == target:
            continue
        low, high = layer_of(source), layer_of(target)
        if low is not None and high is not None and low < high:
            found.append(item)
    return found


def unlayered(imports):
    """The packages that have no layer in `LAYERS` (a new one must be given its place)."""
    return sorted({package_of(item.module) for item in imports} - {None}
                  - {p for p in {package_of(item.module) for item in imports} if layer_of(p) is not None})


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def forbidden_imports(imports, root=ROOT):
    """The imports that issue 15 forbids: a list of (Import, reason).

    - a module under kseg/ other than kseg/cli.py and kseg/launch.py importing `export` or `kseg.cli`;
    - a module under export/ importing a private name (`_name`, or a `_module` on the way) of kseg,
      by `from ... import _name` or by `alias._name` on an imported kseg module.
    """
    found = []
    for item in imports:
        top = item.target.split(".")[0]
        in_core = item.module.split(".")[0] == "kseg" and package_of(item.module) not in COMPOSITION_ROOTS
        if in_core and (top == "export" or package_of(item.target) == "kseg.cli"):
            found.append((item, f"kseg core imports {item.target}"))
        if item.module.split(".")[0] == "export" and top == "kseg":
            private = [n for n in item.target.split(".") + list(item.names) if _is_private(n)]
            if private:
                found.append((item, f"export/ uses the private kseg name {private[0]}"))
    return found + _private_attributes(root)


def _private_attributes(root):
    """`alias._name` in export/ where `alias` is a kseg module imported in that file."""
    files = module_files(root)
    found = []
    for module, path in files.items():
        if not module.startswith("export"):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("kseg"):
                        aliases[alias.asname or alias.name.split(".")[0]] = alias.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kseg"):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in files:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in aliases:
                    item = Import(module, str(path.relative_to(root)), node.lineno, aliases[base.id], (node.attr,))
                    found.append((item, f"export/ uses the private kseg name {node.attr}"))
    return found


def edge_modules(root=ROOT):
    """The edge runtime's modules: export/runtime*, metadata*, video*, bench*, frames* (files or packages)."""
    return sorted(m for m in module_files(root)
                  if m.split(".")[0] == "export" and len(m.split(".")) > 1
                  and m.split(".")[1].startswith(EDGE_MODULES))


def _reached(root, imports, is_target):
    """{(edge module, package): chain} for every third-party package `is_target` accepts that an edge
    module reaches, with the shortest chain [edge module, ..., package].

    Follows every import through kseg/ and export/ (inside functions too) and the `__init__` of each
    package on the way (importing kseg.data.folder runs kseg/data/__init__.py).
    """
    files = module_files(root)
    imports = read_imports(root) if imports is None else imports
    direct = {}
    for item in imports:
        direct.setdefault(item.module, set()).add(item.target)

    def neighbours(module):
        out = set()
        for target in direct.get(module, ()):
            parts = target.split(".")
            if parts[0] not in ("kseg", "export"):
                out.add(parts[0])
            for i in range(1, len(parts) + 1):
                if ".".join(parts[:i]) in files:
                    out.add(".".join(parts[:i]))
        parts = module.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in files}
        return out

    chains = {}
    for start in edge_modules(root):
        parent, queue = {start: None}, [start]
        while queue:
            module = queue.pop(0)
            if module not in files:  # a third-party or standard module: not followed further
                if is_target(module):
                    chain = [module]
                    while parent[chain[-1]] is not None:
                        chain.append(parent[chain[-1]])
                    chains[start, module] = chain[::-1]
                continue
            for nxt in sorted(neighbours(module)):
                if nxt not in parent:
                    parent[nxt] = module
                    queue.append(nxt)
    return chains


def tensorflow_chains(root=ROOT, imports=None):
    """For each edge module that reaches TensorFlow or Keras: {module: [module, ..., "tensorflow"]}."""
    chains = {}
    for (start, _), chain in sorted(_reached(root, imports, lambda m: m in TENSORFLOW).items()):
        chains.setdefault(start, chain)
    return chains


def foreign_chains(root=ROOT, imports=None):
    """The third-party packages that edge modules reach beyond `EDGE_PACKAGES`: {(module, package): chain}.

    The edge install (`pip install kseg`) has only those packages and the standard library.
    """
    def foreign(module):
        return module not in sys.stdlib_module_names and module not in EDGE_PACKAGES

    return _reached(root, imports, foreign)


def main(argv):
    root = Path(argv[0]).resolve() if argv else ROOT
    imports = read_imports(root)
    edges = graph(imports)
    order = sorted(edges, key=lambda p: (layer_of(p) if layer_of(p) is not None else 99, p))
    width = max(len(p) for p in order)
    print(f"import graph of {root} (layer: package -> packages it imports)")
    for package in order:
        layer = layer_of(package)
        targets = ", ".join(sorted(edges[package], key=lambda p: (layer_of(p) or 0, p))) or "-"
        print(f"  {'?' if layer is None else layer}: {package:<{width}} -> {targets}")
    problems = 0
    sections = [
        ("packages without a layer", [(p, "") for p in unlayered(imports)]),
        ("edges running back up", [(f"{package_of(i.module)} -> {package_of(i.target)}",
                                    f"{i.path}:{i.line} imports {i.target}") for i in upward_edges(imports)]),
        ("forbidden imports", [(f"{i.path}:{i.line}", why) for i, why in forbidden_imports(imports, root)]),
        ("edge modules reaching TensorFlow/Keras", [(m, " -> ".join(chain))
                                                   for m, chain in tensorflow_chains(root, imports).items()]),
        ("edge modules reaching packages the edge install lacks",
         [(m, " -> ".join(chain)) for (m, _), chain in sorted(foreign_chains(root, imports).items())]),
    ]
    for title, rows in sections:
        print(f"{title}: {len(rows) or 'none'}")
        for what, why in rows:
            print(f"  {what}  {why}".rstrip())
        problems += len(rows)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
