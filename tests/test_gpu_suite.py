"""The prepared GPU script: its dry run checks every step's command against the script it calls, here on the CPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def suite():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_dry_run_checks_every_step(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--bundle",
                           str(tmp_path / "no-bundle"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                              "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    names = [s.name for s in suite().steps(tmp_path, tmp_path)]
    assert {"env", "hf-vs-lm-eval-gemma2-2b", "vllm-vs-hf", "w4a16-vllm-kernel"} <= set(names)
    for name in names:
        assert f"[  checked] {name}:" in done.stdout


def test_dry_run_refuses_a_flag_the_script_does_not_have(tmp_path: Path) -> None:
    module = suite()
    step = module.steps(tmp_path, tmp_path)[1]
    broken = module.Step(step.name, [*step.argv, "--no-such-flag"], step.timeout_s)
    outcome = module.check_args(broken)
    assert outcome.status == "failed" and "no-such-flag" in outcome.detail


def test_a_step_whose_engine_is_missing_is_skipped_with_its_reason(tmp_path: Path) -> None:
    module = suite()
    step = module.Step("needs-nothing-real", ["true"], 10, needs=("no_such_module_xyz",), why_needed="because")
    outcome = module.run_step(step, tmp_path, 100)
    assert outcome.status == "skipped" and "no_such_module_xyz not importable: because" == outcome.detail
