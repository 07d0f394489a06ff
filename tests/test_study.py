"""`quantcal run study.yaml` and `quantcal report`: study validation, the plan, resuming, failures, report files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from quantcal.errors import QuantcalError
from quantcal.study.runner import plan
from quantcal.study.spec import default_study, parse_study
from tests.conftest import write_jsonl

runner = CliRunner()
SCRIPT = "<script>alert('x')</script>"


def _questions(path: Path, n: int = 30) -> Path:
    rows = [{"id": f"q{i}", "question": f"item {i} {SCRIPT} " + "word " * (i % 4), "choices": ["alpha", "beta gamma", "delta"],
             "answer": i % 3} for i in range(n)]
    return write_jsonl(path, rows)


def _study(tmp_path: Path, model: Path, extra: str = "") -> Path:
    _questions(tmp_path / "questions.jsonl")
    study = tmp_path / "study.yaml"
    study.write_text(f"""reference: {model}
variants:
  - name: w2
    recipe: rtn:bits=2,group_size=16
tasks:
  - name: custom
    data_file: questions.jsonl
output: report_dir
bootstrap: {{resamples: 50}}
{extra}""")
    return study


def test_minimal_study_is_accepted_as_written_in_the_issue(tmp_path: Path) -> None:
    spec = parse_study({"reference": "smollm2-135m-instruct", "variants": [{"name": "rtn4", "recipe": "rtn:bits=4,group_size=64"}],
                        "tasks": [{"name": "custom", "data_file": "questions.jsonl"}], "output": "report_dir"}, tmp_path)
    assert spec.tasks[0].data_file == str(tmp_path / "questions.jsonl")
    assert spec.output == str(tmp_path / "report_dir")
    assert spec.normalizations == ["none"] and "ece" in spec.metrics and spec.bootstrap.resamples == 1000
    assert spec.batch_size == 64 and spec.max_batch_tokens == "auto"  # 2048 on CPU, from free memory on CUDA
    assert [(j.variant, j.definition.recipe) for j in plan(spec)] == [("reference", None), ("rtn4", "rtn:bits=4,group_size=64")]


@pytest.mark.parametrize("data, message", [
    ({"reference": "m", "variants": [], "tasks": [{"name": "piqa"}]}, "variants"),
    ({"reference": "m", "variants": [{"name": "a"}], "tasks": [{"name": "piqa"}]}, "needs a recipe, a model, an adapter or a finetune block"),
    ({"reference": "m", "variants": [{"name": "a", "recipe": "rtn"}, {"name": "a", "recipe": "rtn"}], "tasks": [{"name": "piqa"}]}, "unique"),
    ({"reference": "m", "variants": [{"name": "a", "recipe": "rtn"}], "tasks": [{"name": "piqa"}], "metrics": ["eec"]}, "unknown metric"),
    ({"reference": "m", "variants": [{"name": "a", "recipe": "rtn"}], "tasks": [{"name": "piqa"}], "normalization": "words"}, "normalization"),
    ({"reference": "m", "variants": [{"name": "a", "recipe": "rtn"}], "tasks": [{"name": "piqa", "limit": 0}]}, "limit"),
    ({"reference": "m", "variants": [{"name": "a", "recipe": "rtn"}], "tasks": [{"name": "piqa"}], "colour": "red"}, "colour"),
    ({"reference": "m", "variants": [{"name": "a", "recipe": "rtn"}], "tasks": [{"name": "piqa"}], "max_batch_tokens": 0}, "max_batch_tokens"),
    (["not", "a", "mapping"], "mapping"),
])
def test_invalid_studies_say_what_is_wrong(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(QuantcalError, match=message):
        parse_study(data, tmp_path)


def test_bad_study_file_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("reference: m\nvariants:\n  - name: a\n    recipe: awq:bits=4\ntasks:\n  - name: piqa\n")
    result = runner.invoke(app, ["run", str(bad), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    no_model = tmp_path / "m.yaml"
    no_model.write_text("reference: /no/such/dir\nvariants:\n  - name: a\n    recipe: rtn:bits=4\ntasks:\n  - name: arithmetic\n")
    result = runner.invoke(app, ["run", str(no_model), "--dry-run"])
    assert result.exit_code == 2 and "unknown model" in result.output
    missing = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_default_study_adds_the_benchmarks_found_in_data_dir(shared_data: Path) -> None:
    spec = default_study(shared_data)
    assert [t.name for t in spec.tasks][0] == "arithmetic" and {"piqa", "hellaswag"} <= {t.name for t in spec.tasks}
    assert spec.reference == "smollm2-135m-instruct" and len(spec.variants) >= 2


def test_run_writes_the_report_and_resumes(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    study = _study(tmp_path, tiny_llama, "normalization: [none, tokens]\n")
    dry = runner.invoke(app, ["run", str(study), "--dry-run"])
    assert dry.exit_code == 0 and not (tmp_path / "report_dir" / "study.sqlite").exists()

    result = runner.invoke(app, ["run", str(study)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "report_dir"
    for name in ("report.html", "results.json", "tables.md", "tables.tex", "items.parquet", "study.sqlite",
                 "figures/custom_reliability.png", "figures/custom_reliability.svg", "figures/custom_shift.svg"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    block = results["tasks"]["custom"]["none"]
    assert set(block["variants"]) == {"reference", "w2"} and block["variants"]["reference"]["n"] == 30
    assert set(results["tasks"]["custom"]) == {"none", "tokens"}
    diff = block["paired"]["w2"]["difference"]["acc"]
    expected = block["variants"]["w2"]["metrics"]["acc"]["estimate"] - block["variants"]["reference"]["metrics"]["acc"]["estimate"]
    assert diff["estimate"] == pytest.approx(expected)
    assert block["variants"]["w2"]["recalibration"]["after"]["acc"] == pytest.approx(block["variants"]["w2"]["metrics"]["acc"]["estimate"])
    after = block["paired"]["w2"]["difference_recalibrated"]["ece"]["estimate"]  # both recalibrated, same folds
    own = {v: block["variants"][v]["recalibration"]["after"]["ece"] for v in ("reference", "w2")}
    assert after == pytest.approx(own["w2"] - own["reference"])
    ranked = {r["variant"]: r for r in block["deployment"]["recalibrated"]}
    assert ranked["w2"]["delta_after"]["estimate"] == after and ranked["reference"]["delta_after"] is None
    items = pd.read_parquet(out / "items.parquet")
    assert len(items) == 2 * 2 * 30 and set(items["variant"]) == {"reference", "w2"}

    page = (out / "report.html").read_text()
    assert SCRIPT not in page and "&lt;script&gt;" in page  # dataset text escaped
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page

    with sqlite3.connect(out / "study.sqlite") as db:
        rows = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    again = runner.invoke(app, ["run", str(study)])
    assert again.exit_code == 0
    with sqlite3.connect(out / "study.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == rows  # resumed: nothing scored twice

    rebuilt = tmp_path / "rebuilt"
    report = runner.invoke(app, ["report", str(out / "study.sqlite"), "--output", str(rebuilt)])
    assert report.exit_code == 0, report.output
    again_results = json.loads((rebuilt / "results.json").read_text())
    assert again_results["tasks"]["custom"]["none"]["paired"]["w2"]["difference"] == block["paired"]["w2"]["difference"]


def test_a_failed_job_is_reported_and_the_others_go_on(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    study = _study(tmp_path, tiny_llama)
    (tmp_path / "empty_model").mkdir()  # looks like a checkpoint, so the plan accepts it; loading it fails
    (tmp_path / "empty_model" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    text = study.read_text().replace("tasks:", "  - name: broken\n    model: empty_model\ntasks:")
    study.write_text(text)
    result = runner.invoke(app, ["run", str(study)])
    assert result.exit_code == 1, result.output
    results = json.loads((tmp_path / "report_dir" / "results.json").read_text())
    assert results["study"]["failures"][0]["variant"] == "broken"
    assert set(results["tasks"]["custom"]["none"]["variants"]) == {"reference", "w2"}


@pytest.mark.parametrize("name", ["study_b_gptq.yaml", "study_a_ptq_vs_qlora.yaml", "qlora_heldout_hellaswag.yaml",
                                  "study_gptq_seeds.yaml", "study_fewshot.yaml",
                                  "study_calibration_source.yaml", "study_b_seeds.yaml"])
def test_example_studies_are_valid(name: str) -> None:
    from quantcal.study.runner import check_plan
    from quantcal.study.spec import load_study

    from tests.conftest import SHARED_DATA

    path = Path(__file__).resolve().parent.parent / "examples" / name
    uses_data = "${data_dir}" in path.read_text()
    if uses_data and not (SHARED_DATA / "piqa" / "validation.jsonl").is_file():
        pytest.skip("the shared data is not next to this checkout")
    spec = load_study(path, SHARED_DATA if uses_data else None)
    check_plan(spec)
    assert len(plan(spec)) == (1 + sum(len(v.builds()) for v in spec.variants)) * len(spec.tasks)


def test_prompt_setups_are_tasks_of_their_own(tmp_path: Path) -> None:
    """The same task at two few-shot counts: two runs with their own names; the same one twice is refused."""
    from quantcal.errors import QuantcalError
    from quantcal.study.spec import parse_study

    base = {"reference": "smollm2-135m-instruct", "variants": [{"name": "w4", "recipe": "rtn:bits=4"}]}
    spec = parse_study(base | {"tasks": [{"name": "piqa"}, {"name": "piqa", "num_fewshot": 5}],
                               "apply_chat_template": True}, tmp_path)
    assert [j.label for j in plan(spec)[:2]] == ["piqa[0-shot chat]", "piqa[5-shot chat]"]
    assert plan(spec)[1].setup.num_fewshot == 5 and plan(spec)[1].setup.fewshot_as_multiturn
    with pytest.raises(QuantcalError, match=r"each task once \(per few-shot setup\)"):
        parse_study(base | {"tasks": [{"name": "piqa", "num_fewshot": 5}, "piqa"], "num_fewshot": 5}, tmp_path)
    with pytest.raises(QuantcalError, match="fewshot_as_multiturn"):
        parse_study(base | {"tasks": ["piqa"], "fewshot_as_multiturn": True}, tmp_path)


def test_mixed_precision_example_is_valid_with_its_committed_ranking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example reads the ranking committed beside it (`quantcal sensitivity` on PIQA's first 800 and hellaswag's
    first 1000, merged): run from elsewhere, the one error names the file and the command; from the checkout's root
    the plan passes, including the check that the evaluation items (PIQA skip 800, hellaswag skip 1000) are not the
    ranking's, which fails at skip 700 and 900."""
    from quantcal.errors import QuantcalError
    from quantcal.study.runner import check_plan
    from quantcal.study.spec import load_study

    from tests.conftest import SHARED_DATA

    root = Path(__file__).resolve().parent.parent
    if not (SHARED_DATA / "piqa" / "validation.jsonl").is_file():
        pytest.skip("the shared data is not next to this checkout")
    spec = load_study(root / "examples" / "study_mixed_precision.yaml", SHARED_DATA)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QuantcalError, match="rtn3-linear-piqa800-hellaswag1000/sensitivity.json: file not found .*quantcal sensitivity"):
        check_plan(spec)
    monkeypatch.chdir(root)
    check_plan(spec)
    sensitivity = spec.sensitivity
    spec.sensitivity = [str(tmp_path / "absent")]
    with pytest.raises(QuantcalError, match="`sensitivity`: .*absent: no sensitivity.json"):
        check_plan(spec)  # the report's sensitivity run is checked before any work too
    spec.sensitivity = sensitivity
    spec.tasks[0].skip = 700  # the first 100 evaluation items would be ranking items
    with pytest.raises(QuantcalError, match="variant mixed-4.5 · task piqa: 100 of 1138 items .* were used to rank"):
        check_plan(spec)
    spec.tasks[0].skip, spec.tasks[1].skip = 800, 900
    with pytest.raises(QuantcalError, match="variant mixed-4.5 · task hellaswag: 100 of 2000 items .* were used to rank"):
        check_plan(spec)


def test_limit_is_what_the_report_covers_and_an_earlier_larger_run_is_named(tmp_path: Path, tiny_llama: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 34 item 4: `run --limit 10` after a run of 30 items reports 10 items (not the 30 the store holds), says
    so in the first screen, and `report --all-items` reports all 30."""
    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    study = _study(tmp_path, tiny_llama)
    out = tmp_path / "report_dir"
    assert runner.invoke(app, ["run", str(study)]).exit_code == 0
    small = runner.invoke(app, ["run", str(study), "--limit", "10"])
    assert small.exit_code == 0, small.output
    results = json.loads((out / "results.json").read_text())
    block = results["tasks"]["custom"]["none"]
    assert block["variants"]["reference"]["n"] == 10 and block["paired"]["w2"]["n"] == 10
    assert {r["n"] for r in results["runs"]} == {10}
    assert len(results["scope"]) == 1 and "20 other scored items" in results["scope"][0]
    assert len(pd.read_parquet(out / "items.parquet")) == 2 * 10
    page = (out / "report.html").read_text()
    assert page.index("20 other scored items") < page.index('id="summary"')  # in the findings box, first screen
    assert "20 other scored items" in small.output  # and on the terminal

    rebuilt = runner.invoke(app, ["report", str(out / "study.sqlite")])  # the study's last plan, again
    assert rebuilt.exit_code == 0 and json.loads((out / "results.json").read_text())["runs"][0]["n"] == 10
    every = runner.invoke(app, ["report", str(out / "study.sqlite"), "--all-items", "-o", str(tmp_path / "all")])
    assert every.exit_code == 0, every.output
    whole = json.loads((tmp_path / "all" / "results.json").read_text())
    assert whole["tasks"]["custom"]["none"]["variants"]["reference"]["n"] == 30 and whole["scope"] == []
