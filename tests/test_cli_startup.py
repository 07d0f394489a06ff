"""The CLI answers at once: help, the version, the catalogues and argument errors import no heavy library.

Each command runs in a fresh interpreter (as the console script does) and reports which of torch, transformers,
datasets, scipy and matplotlib it imported; the times themselves are measured by ``benchmarks/cli_startup.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "datasets", "scipy", "matplotlib", "pandas", "pyarrow", "lm_eval", "vllm")

PROBE = """
import json, sys
from quantcal.cli import app
try:
    app(sys.argv[1:], prog_name="quantcal")
except SystemExit as stop:
    code = stop.code
else:
    code = 0
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(HEAVY)))
print("\\nPROBE " + json.dumps({"code": code, "heavy": heavy}))
"""

def _commands() -> list[str]:
    """Every command and command group the CLI registers (a new one is covered without editing this file)."""
    import typer.main

    from quantcal.cli import app

    return sorted(typer.main.get_command(app).commands)


COMMANDS = _commands()


def probe(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE.replace("HEAVY", repr(json.dumps(HEAVY))), *args],
                            capture_output=True, text=True, timeout=120)
    line = [l for l in result.stdout.splitlines() if l.startswith("PROBE ")]
    assert line, f"quantcal {' '.join(args)} crashed:\n{result.stderr[-2000:]}"
    return json.loads(line[-1].removeprefix("PROBE "))


@pytest.mark.parametrize("args", [
    ("--help",), ("--version",), ("tasks",), ("models",), ("recipes",), ("metrics", "--list"),
    ("eval", "--no-such-flag"), ("run", "--limit", "not-a-number"), ("compare",), ("nonsense-command",),
])
def test_quick_commands_import_no_heavy_library(args: tuple[str, ...]) -> None:
    result = probe(*args)
    assert result["heavy"] == [], f"quantcal {' '.join(args)} imported {result['heavy']}"


def test_every_subcommand_help_imports_no_heavy_library() -> None:
    from quantcal.cli import app

    names = {command.name for command in app.registered_commands} | {group.name for group in app.registered_groups}
    assert names == set(COMMANDS)  # what the CLI registers, commands and groups (``cache``)
    for name in COMMANDS:
        result = probe(name, "--help")
        assert result["code"] == 0 and result["heavy"] == [], f"quantcal {name} --help: {result}"


def test_the_probe_sees_a_heavy_import() -> None:
    """The check can fail: a command that computes does import torch (``quantize`` of an unknown model fails after
    importing the API)."""
    result = probe("quantize", "--model", "no-such-model", "--recipe", "rtn:bits=4")
    assert result["code"] != 0 and "torch" in result["heavy"]
