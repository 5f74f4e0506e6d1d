"""The package's import graph: layers whose arrows point one way, no cycles, and imports inside
functions only for heavy dependencies.

Read from the source with ``ast`` (nothing is imported), counting every ``import`` wherever it
stands: at module level, under ``TYPE_CHECKING`` and inside functions. A function-local import of
a gendeploy module is allowed only where that module pulls a heavy third-party dependency at
import time (directly or through its own module-level imports), or in a CLI command, which imports
the library only when it runs so that ``gendeploy --help`` stays fast. Anywhere else it would only
hide a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gendeploy

ROOT = Path(gendeploy.__file__).parent
# Third-party packages slow or optional enough that importing them only when used is worth it.
HEAVY = {
    "docker",
    "kubernetes",
    "matplotlib",
    "model_analyzer",
    "nncf",
    "onnx",
    "onnxconverter_common",
    "onnxruntime",
    "onnxscript",
    "openvino",
    "optuna",
    "safetensors",
    "scipy",
    "sklearn",
    "tensorrt",
    "torch",
    "tritonclient",
}

CLI = "gendeploy.cli"  # commands import the library when run: `gendeploy --help` stays fast

# The packages in layers, lowest first. A module imports its own package, the shared vocabulary
# (whose modules also import each other) and the layers below its own: never a layer above, never
# the other package of its own layer.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset(  # the shared vocabulary: the plan and the manifest, errors, the seed RNG, CPUs...
        {
            "gendeploy.cpus",
            "gendeploy.errors",
            "gendeploy.fileio",
            "gendeploy.images",
            "gendeploy.manifest",
            "gendeploy.protocol",
            "gendeploy.seeds",
        }
    ),
    frozenset({"gendeploy.trainer", "gendeploy.runtime"}),
    frozenset({"gendeploy.export", "gendeploy.serve"}),
    frozenset({"gendeploy.bench"}),
    frozenset({"gendeploy.tune", "gendeploy.deploy"}),
    frozenset({"gendeploy.cli"}),
    frozenset({"gendeploy.__main__"}),  # python -m gendeploy
)
# `gendeploy` itself: ``__version__`` for every layer, and ``export_generator`` imported on first
# use (the public API's front door), so it stands outside the layers.
PACKAGE = "gendeploy"


@dataclass(frozen=True)
class Import:
    target: str  # a gendeploy module, or a top-level third-party package
    line: int
    local: bool  # inside a function


def module_names(root: Path = ROOT) -> dict[str, Path]:
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """Every import in ``path``, resolved to the deepest gendeploy module it names (or the
    top-level package of a third-party import)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(dotted: str) -> str:
        if not dotted.startswith("gendeploy"):
            return dotted.partition(".")[0]
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted

    def walk(node: ast.AST, local: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(resolve(alias.name), child.lineno, inner)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                yield Import(resolve(base), child.lineno, inner)
                if base.startswith("gendeploy"):  # `from gendeploy.export import gate`
                    for alias in child.names:
                        if f"{base}.{alias.name}" in modules:
                            yield Import(f"{base}.{alias.name}", child.lineno, inner)
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text(), str(path)), False)


def import_graph(root: Path = ROOT) -> dict[str, list[Import]]:
    modules = module_names(root)
    return {name: list(imports_of(name, path, modules)) for name, path in modules.items()}


def _ancestor(package: str, module: str) -> bool:
    # Importing gendeploy.a.b runs gendeploy/__init__ and gendeploy/a/__init__ first anyway: an
    # edge to an enclosing package is implied and is not a cycle of the code's own making.
    return module.startswith(package + ".")


def find_cycle(graph: dict[str, list[Import]]) -> list[str]:
    """One import cycle among gendeploy modules ([] if none), as the list of modules around it."""
    edges = {
        name: sorted(
            {i.target for i in found if i.target in graph and not _ancestor(i.target, name)}
            - {name}
        )
        for name, found in graph.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def heavy_at_import(graph: dict[str, list[Import]]) -> dict[str, str]:
    """gendeploy modules whose import pulls a heavy dependency -> that dependency."""
    heavy: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for name, found in graph.items():
            if name in heavy:
                continue
            for i in found:
                if i.local:
                    continue
                pulled = i.target if i.target in HEAVY else heavy.get(i.target)
                if pulled:
                    heavy[name] = pulled
                    changed = True
                    break
    return heavy


def unjustified_local_imports(graph: dict[str, list[Import]], cli: str = CLI) -> list[str]:
    heavy = heavy_at_import(graph)
    return [
        f"{name}:{i.line} imports {i.target} inside a function"
        for name, found in sorted(graph.items())
        if not (name == cli or _ancestor(cli, name))
        for i in found
        if i.local and i.target in graph and i.target not in heavy and not _ancestor(i.target, name)
    ]


def layer_of(module: str) -> tuple[int, str]:
    """The layer of ``module`` and the package (or shared module) it belongs to."""
    for level, members in enumerate(LAYERS):
        for member in members:
            if module == member or module.startswith(member + "."):
                return level, member
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def upward_imports(graph: dict[str, list[Import]]) -> list[str]:
    """Imports of a layer above the importer's, or of the other package of its own layer (one
    line per import statement: the deepest module it names)."""
    found: dict[tuple[str, int], str] = {}
    for name, imports in sorted(graph.items()):
        if name == PACKAGE:
            continue
        level, home = layer_of(name)
        for i in imports:
            if not i.target.startswith(PACKAGE + "."):
                continue
            target_level, target_home = layer_of(i.target)
            if target_level > level:
                found[name, i.line] = f"{name}:{i.line} imports {i.target} (layer {target_level})"
            elif target_level == level and target_home != home and level > 0:
                found[name, i.line] = f"{name}:{i.line} imports its sibling {i.target}"
    return list(found.values())


def test_imports_point_down_the_layers_runtime_export_and_serve_never_up() -> None:
    assert upward_imports(import_graph()) == []


def test_an_import_from_a_higher_layer_or_a_sibling_is_found(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "gendeploy/__init__.py": "",
            "gendeploy/manifest.py": "",
            "gendeploy/runtime/__init__.py": "",
            "gendeploy/runtime/a.py": "from gendeploy.manifest import X\n"
            "def f():\n    from gendeploy.serve import b\n",
            "gendeploy/export/__init__.py": "",
            "gendeploy/export/c.py": "from gendeploy.serve.b import Y\n"
            "from gendeploy.runtime import a\n",
            "gendeploy/serve/__init__.py": "",
            "gendeploy/serve/b.py": "",
        },
    )
    assert upward_imports(import_graph(root)) == [
        "gendeploy.export.c:1 imports its sibling gendeploy.serve.b",
        "gendeploy.runtime.a:3 imports gendeploy.serve.b (layer 2)",
    ]


def test_the_package_has_no_import_cycle_even_through_imports_inside_functions() -> None:
    assert find_cycle(import_graph()) == []


def test_imports_inside_functions_are_only_for_heavy_dependencies() -> None:
    assert unjustified_local_imports(import_graph()) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "gendeploy"


def test_a_cycle_hidden_in_a_function_is_found(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "gendeploy/__init__.py": "",
            "gendeploy/a.py": "from gendeploy.b import g\n",
            "gendeploy/b.py": "def g():\n    from gendeploy import a\n",
        },
    )
    assert find_cycle(import_graph(root)) == ["gendeploy.a", "gendeploy.b", "gendeploy.a"]


def test_a_type_checking_only_cycle_is_found(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "gendeploy/__init__.py": "",
            "gendeploy/x/__init__.py": "",
            "gendeploy/x/a.py": "from .b import g\n",
            "gendeploy/x/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from gendeploy.x.a import T\n",
        },
    )
    assert find_cycle(import_graph(root)) == ["gendeploy.x.a", "gendeploy.x.b", "gendeploy.x.a"]


def test_a_local_import_is_allowed_only_when_the_module_pulls_a_heavy_dependency(
    tmp_path: Path,
) -> None:
    root = _write(
        tmp_path,
        {
            "gendeploy/__init__.py": "",
            "gendeploy/light.py": "import json\n",
            "gendeploy/model.py": "from gendeploy import deep\n",
            "gendeploy/deep.py": "import torch.nn\n",
            "gendeploy/run.py": "def main():\n    from gendeploy import model\n"
            "    from gendeploy.light import x\n",
        },
    )
    assert unjustified_local_imports(import_graph(root)) == [
        "gendeploy.run:3 imports gendeploy.light inside a function"
    ]


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in *_support.py modules or conftest.py, not in a test module."""
    tests = Path(__file__).parent
    found = [
        f"{path.name} imports {i.target}"
        for path in sorted(tests.glob("*.py"))
        for i in imports_of(path.stem, path, module_names())
        if i.target.startswith("test_")
    ]
    assert found == []
