"""`quantcal import-lm-eval` on samples files in lm-eval 0.4.x's --log_samples format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from quantcal.errors import QuantcalError
from quantcal.store.lm_eval_import import import_samples, samples_files
from quantcal.analysis.predictions import task_summary
from quantcal.store.database import open_store

runner = CliRunner()
DATE = "2026-11-22T19-16-38.122353"


def _write_run(folder: Path, task: str = "local_obqa", n: int = 12) -> Path:
    """A samples file and results file shaped like lm-eval 0.4.13's (strings for the responses, as it writes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, right, right_norm = [], 0, 0
    for i in range(n):
        choices = ["red", "green light", "blue sky above", "no"]
        lls = [-(3.0 + ((i * 7 + j * 3) % 5)) for j in range(4)]
        gold = i % 4
        right += max(range(4), key=lambda j: lls[j]) == gold
        right_norm += max(range(4), key=lambda j: lls[j] / len(choices[j])) == gold
        lines.append(json.dumps({
            "doc_id": i, "doc": {"q": f"question {i}"}, "target": gold,
            "arguments": {f"gen_args_{j}": {"arg_0": f"question {i}?", "arg_1": " " + c} for j, c in enumerate(choices)},
            "resps": [[[str(ll), "False"]] for ll in lls], "filtered_resps": [[str(ll), "False"] for ll in lls],
            "filter": "none", "metrics": ["acc", "acc_norm"], "doc_hash": f"h{i}",
        }))
    samples = folder / f"samples_{task}_{DATE}.jsonl"
    samples.write_text("\n".join(lines) + "\n")
    (folder / f"results_{DATE}.json").write_text(json.dumps({
        "results": {task: {"acc,none": right / n, "acc_norm,none": right_norm / n}},
        "model_name": "/some/dir/my-model", "lm_eval_version": "0.4.13"}))
    return samples


def test_import_gives_lm_evals_accuracies(tmp_path: Path) -> None:
    samples = _write_run(tmp_path / "run")
    with open_store(tmp_path / "s.sqlite") as db:
        got = import_samples(db, samples)
        ours = task_summary(db.scored_items(got.run_id))
        assert got.n_items == 12 and got.task == "local_obqa"
        assert ours["acc"] == pytest.approx(got.lm_eval_metrics["acc"]) and ours["acc_norm"] == pytest.approx(got.lm_eval_metrics["acc_norm"])
        assert db.runs()[0].variant == "my-model"
        again = import_samples(db, samples)  # idempotent: same run, nothing added twice
        assert again.run_id == got.run_id and again.n_items == 12


def test_import_cli_then_metrics_and_report(tmp_path: Path) -> None:
    _write_run(tmp_path / "run")
    store = tmp_path / "s.sqlite"
    result = runner.invoke(app, ["import-lm-eval", str(tmp_path / "run"), "--store", str(store), "--variant", "lm"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["metrics", str(store), "--resamples", "20"]).exit_code == 0
    report = runner.invoke(app, ["report", str(store), "--output", str(tmp_path / "rep"), "--resamples", "20"])
    assert report.exit_code == 0, report.output
    assert (tmp_path / "rep" / "report.html").is_file()


def test_bad_samples_input(tmp_path: Path) -> None:
    with pytest.raises(QuantcalError, match="no samples"):
        samples_files([tmp_path])
    bad = tmp_path / f"samples_x_{DATE}.jsonl"
    bad.write_text('{"doc_id": 0, "target": 0, "arguments": {"gen_args_0": {"arg_0": "q", "arg_1": " a"}}, "resps": [[["-1", "False"]]]}\n')
    with open_store(tmp_path / "s.sqlite") as db, pytest.raises(QuantcalError, match=":1: not a multiple-choice sample"):
        import_samples(db, bad)
    result = runner.invoke(app, ["import-lm-eval", str(tmp_path / "missing"), "--store", str(tmp_path / "t.sqlite")])
    assert result.exit_code == 2 and "no such file" in result.output
