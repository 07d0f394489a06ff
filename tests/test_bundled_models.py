"""Both bundled real models load and score the built-in offline task through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", pytest.param("gemma3-270m", marks=pytest.mark.heavy)])
def test_bundled_model_scores_offline_task(model: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["eval", "--model", model, "--limit", "16", "--store", str(tmp_path / "s.sqlite"),
                                      "--output-json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    r = payload["results"]["arithmetic"]
    assert r["n"] == 16 and 0.0 <= r["acc"] <= 1.0 and 0.0 <= r["acc_norm"] <= 1.0
    assert payload["model"] == model
