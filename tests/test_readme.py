"""README.md is a front door that works: its `reswise ...` commands run as written, in order.

The tour chains (sweep writes a run, select/cascade read it with --from, cascade saves a policy,
export and latency read the policy), so the commands run one after another, each its own
process, from the repository root (where `../shared/...` resolves). What they write is
redirected into a temporary folder: every `--out X` / `--save X` becomes a path there, and a later
argument naming X gets the same path. Sweeps (and the policy's latency) take a `--limit` so the
whole README runs in well under a minute on two cores.
"""

from __future__ import annotations

import re
import shlex
import string
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# per sweep: 300 calibration images (a 1-point budget needs 299) in 5 batches (auto: no probe)
SWEEP_LIMIT = "600"
LATENCY_LIMIT = "64"  # held-out images timed by `latency --policy` (one batch of 64)
WRITES = ("--out", "--save")  # flags whose value is a path the command writes


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, re.S | re.M)


def readme_commands(text: str) -> list[list[str]]:
    """The arguments after `reswise` of every reswise command in the shell blocks, in order,
    with the blocks' own variables (`B=.venv/bin; D=...`) substituted."""
    variables: dict[str, str] = {}
    commands = []
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            for statement in line.split(";"):
                words = shlex.split(
                    string.Template(statement).safe_substitute(variables), comments=True
                )
                if len(words) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
                    name, value = words[0].split("=", 1)
                    variables[name] = value
                elif words and Path(words[0]).name == "reswise":
                    commands.append(words[1:])
    return commands


def redirected(args: list[str], outputs: dict[str, str], tmp_path: Path) -> list[str]:
    """`args` with what the command writes moved into tmp_path, what an earlier command wrote
    read from there, and a --limit where the command reads images."""
    args = list(args)
    for i, arg in enumerate(args):
        key = arg.rstrip("/")
        if i and args[i - 1] in WRITES:
            outputs[key] = str(tmp_path / key.replace("/", "_"))
            args[i] = outputs[key]
        elif key in outputs:
            args[i] = outputs[key]
    if "--limit" not in args:
        if args[0] == "sweep":
            args += ["--limit", SWEEP_LIMIT]
        elif args[0] == "latency" and "--policy" in args:
            args += ["--limit", LATENCY_LIMIT]
    return args


def test_readme_commands_are_found() -> None:
    commands = readme_commands(README.read_text())
    names = [c[0] for c in commands]
    # the tour: sweep -> choose from its records -> ship the choice
    for name in ("sweep", "select", "cascade", "export", "latency"):
        assert name in names, f"README's tour lost `reswise {name}`"
    assert names.index("sweep") < names.index("cascade") < names.index("export")


def test_readme_links_resolve() -> None:
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which is not there"


@pytest.mark.slow
def test_readme_commands_run(tmp_path: Path) -> None:
    commands = readme_commands(README.read_text())
    missing = {
        arg
        for args in commands
        for arg in args
        if arg.startswith("../shared/") and not (ROOT / arg).exists()
    }
    if missing:
        pytest.skip(f"shared data not present: {sorted(missing)}")
    outputs: dict[str, str] = {}
    for args in commands:
        run = redirected(args, outputs, tmp_path)
        proc = subprocess.run(
            [sys.executable, "-m", "reswise", *run],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, (
            f"`reswise {shlex.join(args)}` (run as `{shlex.join(run)}`) exited "
            f"{proc.returncode}:\n{proc.stderr[-3000:]}"
        )
