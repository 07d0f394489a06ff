"""The habits of lm-eval users and a first command that shows calibration: lm-eval's flag spellings work where the
meaning matches, `quantcal eval` prints acc, ECE, Brier and NLL with intervals (and writes them), a dry run's plan is
on stdout, and an interval prints compactly."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from quantcal.cli import app
from quantcal.metrics import Interval
from tests.conftest import write_jsonl

runner = CliRunner()


def _questions(n: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1), "seven"],
             "answer": 0} for i in range(n)]


def test_lm_eval_spellings_and_calibration_in_the_first_command(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", _questions(12))
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    result = runner.invoke(app, ["eval", "--model_args", f"pretrained={tiny_llama},dtype=float32", "--tasks", "custom",
                                 "--data-file", str(data), "--batch_size", "8", "--num_fewshot", "0",
                                 "--output_path", str(out_dir), "--log_samples", "--store", str(tmp_path / "s.sqlite")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "ECE" in result.output and "Brier" in result.output and "NLL" in result.output
    assert "every sample is in the store" in result.output
    written = json.loads((out_dir / "results.json").read_text())["results"]["custom"]
    assert set(written["metrics"]) == {"acc", "ece", "brier", "nll"}
    ece = written["metrics"]["ece"]
    assert ece["low"] <= ece["estimate"] <= ece["high"] or ece["method"] == "basic"
    assert written["metrics"]["acc"]["estimate"] == written["acc"]


def test_model_args_that_quantcal_does_not_take_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--model_args", "pretrained=x,revision=main", "--limit", "1"])
    assert result.exit_code == 2 and "revision" in result.output and "Traceback" not in result.output


def test_a_dry_runs_plan_is_on_stdout(tiny_llama: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "q.jsonl", _questions(4))
    study = tmp_path / "study.yaml"
    study.write_text(f"reference: {tiny_llama}\nvariants:\n  - name: w2\n    recipe: rtn:bits=2,group_size=16\n"
                     "tasks:\n  - name: custom\n    data_file: q.jsonl\n")
    result = runner.invoke(app, ["run", str(study), "--dry-run"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "w2" in result.stdout and "plan" in result.stdout, (result.stdout, result.stderr)


def test_an_interval_prints_compactly() -> None:
    interval = Interval(0.1971427338882965, 0.05, 0.2531, 0.95, 1000)
    assert str(interval) == "0.197 [0.050, 0.253]"
    assert "0.1971427338882965" in repr(interval)  # repr keeps every field


def test_reading_commands_leave_no_wal_or_shm_files(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", _questions(4))
    store = tmp_path / "s.sqlite"
    assert runner.invoke(app, ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data),
                               "--store", str(store)]).exit_code == 0
    for command in (["metrics", str(store), "--resamples", "20"], ["export", str(store), "--out", str(tmp_path / "x.jsonl")],
                    ["compare", str(store), "--resamples", "20"]):
        runner.invoke(app, command)
        assert sorted(p.name for p in tmp_path.glob("s.sqlite*")) == ["s.sqlite"], command
