"""The house rules that keep the code readable: short files and functions, no import loops,
numpy-only choosing, and error messages that name flags which exist."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "reswise"
SOURCES = sorted(SRC.rglob("*.py"))


def test_no_source_file_over_450_lines_nor_function_over_80():
    long_files = [(p.name, n) for p in SOURCES if (n := len(p.read_text().splitlines())) > 450]
    assert not long_files
    long_funcs = []
    for p in SOURCES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long_funcs.append((p.name, node.name, n))
    assert not long_funcs


def _module(p: Path) -> str:
    parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(p: Path) -> set[str]:
    """reswise modules imported at module level (function-level imports are deferred)."""
    mod = _module(p)
    pkg = mod if p.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.parse(p.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
            names = [f"{target}.{a.name}" for a in node.names]
            out |= {n for n in names if n in MODULES} or {target}
    return out


MODULES = {_module(p) for p in SOURCES}


def test_no_import_loop_between_modules():
    graph = {_module(p): _imports(p) & MODULES for p in SOURCES}

    def parents(m: str) -> set[str]:  # importing a.b runs a/__init__ first
        parts = m.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            loop = path[path.index(m) :] + [m]
            if not any(parent in loop for x in loop for parent in parents(x)):
                pytest.fail(f"import loop: {' -> '.join(loop)}")
            return
        for n in graph.get(m, ()):
            visit(n, [*path, m])

    for m in graph:
        visit(m, [])


@pytest.mark.parametrize(
    "module",
    [
        "reswise.policies",
        "reswise.records",
        "reswise.choices",
        "reswise.policy_file",
        "reswise.runtime",
    ],
)
def test_choosing_imports_no_torch(module):
    code = f"import {module}, sys; assert 'torch' not in sys.modules, 'torch imported'"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_error_messages_name_only_flags_that_exist():
    from reswise.cli import build_parser

    flags = set()
    parser = build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            flags |= set(action.option_strings)
    named = set()
    for p in SOURCES:
        tree = ast.parse(p.read_text())
        docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
            ):
                named |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", node.value))
    assert named and not (named - flags)
