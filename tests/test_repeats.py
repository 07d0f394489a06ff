"""Repeated builds of a calibrated recipe: study keys, plan, the method-effect block of the report, and caching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import quantcal
from quantcal.cli import app
from tests.conftest import write_jsonl

RECIPE = "gptq:bits=4,group_size=16,nsamples=4,seqlen=32"


@pytest.mark.parametrize("variant, words", [
    ({"name": "r", "recipe": "rtn:bits=4", "repeats": 3}, "meaningless for rtn: the recipe is deterministic"),
    ({"name": "g", "recipe": RECIPE, "repeats": 2, "seeds": [0, 1]}, "repeats or seeds, not both"),
    ({"name": "g", "recipe": RECIPE + ",seed=3", "repeats": 2}, "the recipe names a seed"),
    ({"name": "g", "recipe": RECIPE, "seeds": [1, 1]}, "distinct"),
    ({"name": "g", "model": "x", "repeats": 2}, "give a recipe"),
    ({"name": "g", "recipe": RECIPE, "repeats": 1}, "greater than or equal to 2"),
])
def test_repeats_are_checked(variant: dict, words: str) -> None:
    with pytest.raises(quantcal.QuantcalError, match=words):
        quantcal.study_spec({"reference": "smollm2-135m-instruct", "variants": [variant], "tasks": ["arithmetic"]})


@pytest.mark.heavy
def test_repeated_builds_are_planned_scored_and_reported(tmp_path: Path, tiny_llama: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": f"{i} plus {i}?", "choices": [str(2 * i), str(i), "no"],
                                              "answer": 0} for i in range(24)])
    study = {"reference": str(tiny_llama), "output": str(tmp_path / "out"), "bootstrap": {"resamples": 50},
             "variants": [{"name": "gptq", "recipe": RECIPE, "seeds": [0, 5]},
                          {"name": "rtn", "recipe": "rtn:bits=4,group_size=16"}],
             "tasks": [{"name": "custom", "data_file": str(data)}]}
    plan = quantcal.plan_study(study)
    assert [(j.variant, j.definition.recipe) for j in plan.jobs] == [
        ("reference", None), ("gptq@seed0", RECIPE + ",seed=0"), ("gptq@seed5", RECIPE + ",seed=5"),
        ("rtn", "rtn:bits=4,group_size=16")]
    result = quantcal.run_study(study)
    block = result.report.results["tasks"]["custom"]["none"]
    effect = block["method_effects"]["gptq"]
    assert effect["builds"] == ["gptq@seed0", "gptq@seed5"] and effect["n"] == 24
    acc = effect["effects"]["acc"]
    singles = [block["paired"][b]["difference"]["acc"]["estimate"] for b in effect["builds"]]
    assert acc["per_build"] == pytest.approx(singles) and acc["mean"] == pytest.approx(sum(singles) / 2)
    assert acc["interval"]["method"].startswith("two-level") and acc["interval"]["low"] <= acc["mean"] <= acc["interval"]["high"]
    assert "rtn" not in block["method_effects"]
    assert "the method over 2 builds" in result.page.read_text()
    assert any("gptq, the method over 2 builds" in line for b in result.report.results["findings"]["blocks"]
               for line in b["lines"])
    again = CliRunner().invoke(app, ["run", str(_yaml(tmp_path, study))])
    assert again.exit_code == 0 and "building" not in again.output  # every build cached, per seed


def _yaml(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(study))  # JSON is YAML
    return path
