"""What `quantcal run` prints on a terminal and in logs (issue 34 item 9): findings one line per variant, warnings
that name their task and speak only of significant changes, a plan table that never wraps (whole values in
--dry-run --json), progress that prints each state once when stderr is not a terminal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from quantcal.cli.study import _print_summary
from tests.conftest import write_jsonl

runner = CliRunner()


def _interval(estimate: float, low: float, high: float) -> dict[str, float]:
    return {"estimate": estimate, "low": low, "high": high}


def _results(sure: bool) -> dict:
    variant = {"n": 50, "metrics": {"acc": _interval(0.5, 0.4, 0.6), "ece": _interval(0.1, 0.05, 0.15)}}
    acc, ece = (_interval(0.1, 0.02, 0.2), _interval(0.05, 0.01, 0.09)) if sure else \
        (_interval(0.1, -0.02, 0.2), _interval(0.05, -0.01, 0.09))
    flag = {"variant": "w4", "both_intervals_exclude_zero": sure,
            "message": "w4 is more accurate than reference but worse calibrated"}
    block = {"variants": {"reference": variant, "w4": variant}, "paired": {"w4": {"difference": {"acc": acc, "ece": ece}}},
             "deployment": {"flags": [flag]}}
    return {"tasks": {"piqa": {"none": block}}, "scope": [],
            "findings": {"blocks": [{"task": "piqa", "normalization": "none",
                                     "lines": ["w4: accuracy +10.0 points [+2.0, +20.0] (better)",
                                               "indistinguishable from the reference on every metric: w8"]}],
                         "caveats": ["a caveat"]}}


@pytest.mark.parametrize("sure", [True, False])
def test_findings_print_one_line_per_variant_and_warnings_name_their_task(sure: bool, capsys: pytest.CaptureFixture[str]) -> None:
    _print_summary(_results(sure))
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "  - w4: accuracy +10.0 points [+2.0, +20.0] (better)" in lines
    assert "  - indistinguishable from the reference on every metric: w8" in lines
    assert not any(" | " in line for line in lines)
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning")]
    if sure:
        assert warnings == ["warning: piqa (none): w4 is more accurate than reference but worse calibrated"]
    else:
        assert warnings == []  # not both significant: no warning


def test_the_plan_table_never_wraps_and_its_json_is_whole(tmp_path: Path, tiny_llama: Path) -> None:
    deep = tmp_path / ("a-very-long-folder-name-" * 4)
    deep.mkdir()
    model = deep / "model"
    model.symlink_to(tiny_llama, target_is_directory=True)
    write_jsonl(tmp_path / "q.jsonl", [{"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2} for i in range(4)])
    study = tmp_path / "study.yaml"
    recipe = "rtn:bits=4,group_size=16,sym=false,mode=simulated+kv:fp8,scale=calibrated,per=head"
    study.write_text(f"reference: {model}\nvariants:\n  - name: w4\n    recipe: {recipe}\n"
                     f"tasks:\n  - name: custom\n    data_file: q.jsonl\noutput: out\n")
    table = runner.invoke(app, ["run", str(study), "--dry-run"], env={"COLUMNS": "100"})
    assert table.exit_code == 0, table.output
    rows = [line for line in table.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2  # one line per job: nothing wrapped onto a second line
    assert sum(line.startswith("┃") for line in table.stdout.splitlines()) == 1
    assert "…" in table.stdout and str(model) not in table.stdout
    plan = runner.invoke(app, ["run", str(study), "--dry-run", "--json"])
    assert plan.exit_code == 0, plan.output
    jobs = json.loads(plan.stdout)["jobs"]
    assert [j["variant"] for j in jobs] == ["reference", "w4"]
    assert jobs[0]["model"] == str(model) and jobs[1]["how"] == recipe
    alone = runner.invoke(app, ["run", str(study), "--json"])
    assert alone.exit_code == 2 and "--json goes with --dry-run" in alone.output


def test_progress_in_a_log_prints_each_state_once(tmp_path: Path, tiny_llama: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "quantcal.cli", "eval", "--model", str(tiny_llama), "--task",
                             "arithmetic", "--limit", "6", "--store", str(tmp_path / "s.sqlite")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if "items (" in line or "items to do" in line]
    assert len(progress) == 2, result.stderr  # a start line and an end line, each once
    assert progress[0].endswith("0/6 items to do") and "6/6 items (" in progress[1]
