"""``quantcal run --executor ray`` on a local Ray instance: same store as the local executor, failures contained."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from tests.test_study import _study

pytest.importorskip("ray")
runner = CliRunner()


def _scores(path: Path) -> dict[tuple[str, str, int], float]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT r.variant, s.item_id, s.choice, s.loglik FROM scores s JOIN runs r ON r.run_id = s.run_id").fetchall()
    return {(variant, item, choice): loglik for variant, item, choice, loglik in rows}


@pytest.mark.heavy
def test_ray_executor_matches_local_and_contains_failures(tmp_path: Path, tiny_llama: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    study = _study(tmp_path, tiny_llama)
    (tmp_path / "empty_model").mkdir()
    (tmp_path / "empty_model" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    study.write_text(study.read_text().replace("tasks:", "  - name: broken\n    model: empty_model\n"
                                                          "  - name: w4\n    recipe: rtn:bits=4,group_size=16\ntasks:"))
    local = runner.invoke(app, ["run", str(study), "--output", str(tmp_path / "local")])
    assert local.exit_code == 1, local.output  # the broken variant
    distributed = runner.invoke(app, ["run", str(study), "--output", str(tmp_path / "ray"), "--executor", "ray",
                                      "--job-cpus", "1"])
    assert distributed.exit_code == 1, distributed.output
    a, b = _scores(tmp_path / "local" / "study.sqlite"), _scores(tmp_path / "ray" / "study.sqlite")
    assert len(a) == 3 * 30 * 3 and a.keys() == b.keys()  # reference, w2, w4 x 30 items x 3 choices
    assert max(abs(a[k] - b[k]) for k in a) < 1e-4
    results = json.loads((tmp_path / "ray" / "results.json").read_text())
    failures = results["study"]["failures"]
    assert [f["variant"] for f in failures] == ["broken"] and "cannot load model" in failures[0]["error"]
    again = runner.invoke(app, ["run", str(study), "--output", str(tmp_path / "ray"), "--executor", "ray"])
    assert again.exit_code == 1
    assert len(_scores(tmp_path / "ray" / "study.sqlite")) == len(b)  # resumed: nothing scored twice


def test_ray_options_need_the_ray_executor(tmp_path: Path, tiny_llama: Path) -> None:
    study = _study(tmp_path, tiny_llama)
    result = runner.invoke(app, ["run", str(study), "--job-cpus", "2"])
    assert result.exit_code == 2 and "--executor ray" in result.output
