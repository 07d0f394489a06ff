"""`quantcal metrics` and `quantcal compare` on a store holding a reference and a compressed variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from tests.conftest import write_jsonl

runner = CliRunner()


def test_metrics_and_compare(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    rows = [{"id": f"q{i}", "question": f"item {i} " * (1 + i % 5), "choices": ["alpha", "beta gamma", "delta"], "answer": i % 3}
            for i in range(40)]
    data = write_jsonl(tmp_path / "q.jsonl", rows)
    store = tmp_path / "s.sqlite"
    base = ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data), "--store", str(store)]
    assert runner.invoke(app, [*base, "--name", "ref"]).exit_code == 0
    quantized = runner.invoke(app, [*base, "--name", "w2", "--recipe", "rtn:bits=2,group_size=16"])
    assert quantized.exit_code == 0, quantized.output

    out = tmp_path / "m.json"
    result = runner.invoke(app, ["metrics", str(store), "--resamples", "50", "--output-json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert set(payload) == {"ref", "w2"} and payload["ref"]["custom"]["n"] == 40
    assert payload["ref"]["custom"]["ece"]["low"] <= payload["ref"]["custom"]["ece"]["high"]

    cmp_out = tmp_path / "c.json"
    result = runner.invoke(app, ["compare", str(store), "--ref", "ref", "--variant", "w2", "--task", "custom",
                                 "--resamples", "50", "--output-json", str(cmp_out)])
    assert result.exit_code == 0, result.output
    report = json.loads(cmp_out.read_text())
    assert report["n"] == 40 and report["analysis"]["mean_js_distance"] > 0  # 2-bit weights do change the answers
    assert "p(gold), all items" in result.output

    missing = runner.invoke(app, ["compare", str(store), "--ref", "ref", "--variant", "nope", "--task", "custom"])
    assert missing.exit_code == 2 and "no run for variant 'nope'" in missing.output
