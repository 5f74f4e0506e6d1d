"""The export package reads a screen at a time: no function in ``gendeploy/export/`` reaches 80
lines (measured from the source with ``ast``, signature and docstring included)."""

from __future__ import annotations

import ast
from pathlib import Path

import gendeploy

EXPORT = Path(gendeploy.__file__).parent / "export"
MAX_LINES = 80


def function_lengths(root: Path) -> list[tuple[int, str]]:
    """(lines, "file:line name") of every function and method under ``root``, longest first."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                found.append((lines, f"{path.relative_to(root)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def test_no_function_in_export_reaches_80_lines() -> None:
    too_long = [f"{where}: {n} lines" for n, where in function_lengths(EXPORT) if n >= MAX_LINES]
    assert too_long == []


def test_a_function_is_measured_from_its_def_to_its_last_line(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "def f():\n    x = 1\n\n    return x\n\n\nclass C:\n    def g(self):\n        pass\n"
    )
    assert function_lengths(tmp_path) == [(4, "m.py:1 f"), (2, "m.py:8 g")]
