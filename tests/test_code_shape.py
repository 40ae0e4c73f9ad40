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


def _imports(p: Path, mod: str | None = None) -> set[str]:
    """reswise modules ``p`` imports anywhere: a function-level import is an arrow too."""
    mod = mod or _module(p)
    pkg = mod if p.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
            names = [f"{target}.{a.name}" for a in node.names]
            out |= {n for n in names if n in MODULES} or {target}
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            out |= {n for n in names if n and n.split(".")[0] == "reswise"}
    return out


MODULES = {_module(p) for p in SOURCES}
GRAPH = {_module(p): _imports(p) & MODULES for p in SOURCES}

# what each stage may import besides itself: data/models <- measure <- choose <- ship, finetune
# beside ship; pipeline orchestrates them all and only cli knows pipeline
STAGE_DEPS = {
    "errors": set(),
    "records": {"errors"},
    "data": {"errors", "records"},
    "models": {"errors", "records", "data"},
    "measure": {"errors", "records", "data", "models"},
    "choose": {"errors", "records"},  # numpy only: nothing that imports torch
    "ship": {"errors", "records", "data", "models", "measure", "choose"},
    "finetune": {"errors", "records", "data", "models", "measure"},
    "pipeline": {"errors", "records", "data", "models", "measure", "choose", "ship", "finetune"},
    "cli": {
        "errors",
        "records",
        "data",
        "models",
        "measure",
        "choose",
        "ship",
        "finetune",
        "pipeline",
    },  # fmt: skip
    "__main__": {"cli"},
}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_at_most_14_entries_directly_under_the_package():
    entries = [p.name for p in SRC.iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 14, sorted(entries)
    assert {"measure", "choose", "ship", "finetune"} <= set(entries)


def test_stages_import_only_the_stages_below_them():
    wrong = []
    for m, targets in GRAPH.items():
        if _stage(m) == "__init__":  # the lazy front door names everything by string only
            assert targets <= {"reswise.errors"}, targets
            continue
        for t in targets:
            if _stage(t) != _stage(m) and _stage(t) not in STAGE_DEPS[_stage(m)]:
                wrong.append(f"{m} -> {t}")
    assert not wrong, wrong


def test_the_import_walk_sees_function_level_imports(tmp_path):
    f = tmp_path / "reswise" / "a.py"
    f.parent.mkdir()
    f.write_text("def g():\n    from .b import c\n    import reswise.d\n")
    global MODULES
    saved, MODULES = MODULES, {"reswise.a", "reswise.b", "reswise.b.c", "reswise.d"}
    try:
        assert _imports(f, "reswise.a") >= {"reswise.b.c", "reswise.d"}
    finally:
        MODULES = saved


def test_no_import_loop_between_modules():
    def parents(m: str) -> set[str]:  # importing a.b runs a/__init__ first
        parts = m.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            loop = path[path.index(m) :] + [m]
            if not any(parent in loop for x in loop for parent in parents(x)):
                pytest.fail(f"import loop: {' -> '.join(loop)}")
            return
        for n in GRAPH.get(m, ()):
            visit(n, [*path, m])

    for m in GRAPH:
        visit(m, [])


@pytest.mark.parametrize(
    "module",
    [
        # no package __init__ pulls in torch: each loads lazily (PEP 562) or holds nothing
        "reswise",
        "reswise.data",
        "reswise.measure",
        "reswise.finetune",
        "reswise.ship",
        "reswise.choose",
        "reswise.choose.policies",
        "reswise.choose.choices",
        "reswise.choose.frontier",
        "reswise.choose.crops",
        "reswise.records",
        "reswise.records.report",
        "reswise.ship.policy_file",
        "reswise.ship.runtime",
        "reswise.ship.fused",
        # the old paths README showed stay torch-free too
        "reswise.policies",
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
