"""The Python API: a notebook's session on the bundled model, the README's "From Python" block run as written,
the package surface, and the CLI's seams (thin over the API, flags mapped from parameter names)."""

from __future__ import annotations

import ast
import json
import re
import sqlite3
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI_DIR = ROOT / "src" / "quantcal" / "cli"


def test_version_exports_and_a_light_import() -> None:
    import quantcal

    assert quantcal.__version__ == version("quantcal")
    for name in ("evaluate", "run_study", "load_items", "store_metrics", "compare", "quantize", "QuantcalError"):
        assert name in quantcal.__all__ and name in dir(quantcal), name
    assert callable(quantcal.evaluate) and callable(quantcal.run_study)
    with pytest.raises(AttributeError):
        quantcal.no_such_thing  # noqa: B018
    code = "import sys, quantcal; print('torch' in sys.modules, 'transformers' in sys.modules)"
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert light.stdout.split() == ["False", "False"]


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path: Path) -> None:
    import quantcal
    from quantcal.cli.common import as_flags

    with pytest.raises(quantcal.QuantcalError, match="`limit` must be at least 1"):
        quantcal.evaluate("smollm2-135m-instruct", ["arithmetic"], limit=0, store=tmp_path / "s.sqlite")
    with pytest.raises(quantcal.QuantcalError, match="`batch_size`"):
        quantcal.ScoringOptions(batch_size=0)
    with pytest.raises(quantcal.QuantcalError, match="`tasks` is empty"):
        quantcal.evaluate(tasks=[])
    assert as_flags("`max_batch_tokens` must be 0 and `tasks` and `cpus_per_job`") == \
        "--max-batch-tokens must be 0 and --task and --job-cpus"
    src = ROOT / "src" / "quantcal"
    flags_in_library = [f"{p.relative_to(src)}:{i}" for p in src.rglob("*.py") if CLI_DIR not in p.parents
                        for i, line in enumerate(p.read_text().splitlines(), 1)
                        if "QuantcalError(" in line and re.search(r"[\"' (]--(?!log_samples)[a-z]", line)]  # lm-eval's own flag
    assert flags_in_library == []


def test_cli_is_a_thin_shell_over_the_api() -> None:
    """cli/ imports no store, job, record or study-runner internals: it parses, calls quantcal.api, renders."""
    internals = ("quantcal.store.database", "quantcal.study.jobs", "quantcal.analysis.records", "quantcal.analysis.summary", "quantcal.study.runner",
                 "quantcal.report", "quantcal.variants.definition", "quantcal.analysis.predictions")
    offending = []
    for path in CLI_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offending += [f"{path.name}: {n}" for n in names if n.startswith(internals)]
    assert offending == []


def _store_p_gold(store: Path) -> dict[tuple[str, str, str], float]:
    """p(gold) computed straight from the store's rows: softmax over an item's summed log-likelihoods."""
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT r.variant, r.task, s.item_id, s.choice, s.loglik, i.gold FROM scores s "
                          "JOIN runs r ON r.run_id = s.run_id JOIN items i ON i.run_id = s.run_id AND i.item_id = s.item_id "
                          "ORDER BY s.run_id, s.item_id, s.choice").fetchall()
    per_item: dict[tuple[str, str, str], tuple[list[float], int]] = {}
    for variant, task, item_id, _, ll, gold in rows:
        per_item.setdefault((variant, task, item_id), ([], gold))[0].append(ll)
    out = {}
    for key, (lls, gold) in per_item.items():
        z = np.exp(np.array(lls) - max(lls))
        out[key] = float(z[gold] / z.sum())
    return out


@pytest.mark.heavy
def test_notebook_session_on_the_bundled_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import quantcal

    monkeypatch.chdir(tmp_path)
    r = quantcal.evaluate("smollm2-135m-instruct", ["arithmetic"], limit=20)
    t = r.tasks["arithmetic"]
    assert isinstance(r, quantcal.EvalResult) and t.n == 20 and t.n_scored_now == 20 and 0 <= t.acc <= 1
    assert r.store == Path("quantcal-out/smollm2-135m-instruct.sqlite") and r.store.is_file()
    again = quantcal.evaluate("smollm2-135m-instruct", "arithmetic", limit=20)
    assert again.tasks["arithmetic"].n_scored_now == 0 and again.tasks["arithmetic"].acc == t.acc  # resumed
    own = r.items()
    assert len(own) == 20 and list(own["position"]) == list(range(20))

    study = quantcal.run_study({
        "reference": "smollm2-135m-instruct",
        "variants": [{"name": "rtn-w8", "recipe": "rtn:bits=8,group_size=64"},
                     {"name": "rtn-w2", "recipe": "rtn:bits=2,group_size=64"}],
        "tasks": [{"name": "arithmetic", "limit": 30}],
        "bootstrap": {"resamples": 50},
    }, output="nb-study")
    assert isinstance(study, quantcal.StudyResult) and study.failures == [] and len(study.jobs) == 3
    assert study.page.is_file() and study.store.resolve() == tmp_path / "nb-study" / "study.sqlite"
    table = study.metrics()
    assert set(table["variant"]) == {"reference", "rtn-w8", "rtn-w2"}
    ref_ece = table.query("variant == 'reference' and metric == 'ece'")
    assert ref_ece["delta"].isna().all()
    w2 = table.query("variant == 'rtn-w2' and metric == 'acc'").iloc[0]
    ref_acc = table.query("variant == 'reference' and metric == 'acc'").iloc[0]
    assert w2["delta"] == pytest.approx(w2["estimate"] - ref_acc["estimate"])

    items = quantcal.load_items(study.output)
    assert len(items) == 3 * 30 and set(items["variant"]) == {"reference", "rtn-w8", "rtn-w2"}
    from quantcal.recipes import parse_recipe

    recipes = items.drop_duplicates("variant").set_index("variant")["recipe"]
    assert recipes["rtn-w8"] == parse_recipe("rtn:bits=8,group_size=64").key
    assert recipes["rtn-w2"] == parse_recipe("rtn:bits=2,group_size=64").key
    assert items.loc[items["variant"] == "reference", "recipe"].isna().all()
    for column in ("position", "gold", "pred", "n_choices", "run_id"):
        assert items[column].dtype == np.int64, column
    for column in ("confidence", "p_gold"):
        assert items[column].dtype == np.float64, column
    assert items["correct"].dtype == bool
    expected = _store_p_gold(study.store)
    got = {(v, t, i): p for v, t, i, p in zip(items["variant"], items["task"], items["item_id"], items["p_gold"])}
    assert got.keys() == expected.keys()
    assert max(abs(got[k] - expected[k]) for k in got) < 1e-12
    first = items.iloc[0]
    assert first["question"] and len(first["choices"]) == first["n_choices"] == len(first["probs"])
    assert first["p_gold"] == pytest.approx(first["probs"][first["gold"]])
    assert (items.groupby("run_id")["position"].apply(lambda s: list(s) == sorted(s))).all()

    runs = quantcal.store_metrics(study.store, ["acc", "ece"], resamples=50)
    by = {(m.variant, m.task): m for m in runs}
    assert by[("reference", "arithmetic")].values["ece"].estimate == pytest.approx(
        ref_ece["estimate"].iloc[0])
    paired = quantcal.compare(study.store, "reference", "rtn-w2", "arithmetic", resamples=50)
    assert paired.n == 30 and paired.differences["acc"].estimate == pytest.approx(w2["delta"])
    assert json.loads(json.dumps(paired.to_json()))["paired_difference"]["acc"]["estimate"] == paired.differences["acc"].estimate

    path, n = quantcal.export(study.store, tmp_path / "items.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert n == len(records) == 90
    assert [r["p_gold"] for r in records] == list(items["p_gold"])  # one record builder for both


def _readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.heavy
def test_readme_from_python_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_python_block(), "README.md#from-python", "exec"), {})  # noqa: S102 - our own README
    printed = capsys.readouterr().out
    assert (tmp_path / "api-demo" / "study" / "report.html").is_file()
    assert "rtn-w4" in printed and re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", printed)  # intervals print compactly


def test_eval_result_items_are_this_calls_items(tiny_llama: Path, tmp_path: Path) -> None:
    """A store may hold more of a run than a call asked for (a larger limit before, another skip): the call's
    records are its own items, as its TaskResult numbers are."""
    import quantcal

    store = tmp_path / "s.sqlite"
    quantcal.evaluate(str(tiny_llama), "arithmetic", limit=12, store=store)
    small = quantcal.evaluate(str(tiny_llama), "arithmetic", limit=5, store=store)
    later = quantcal.evaluate(str(tiny_llama), "arithmetic", limit=4, skip=6, store=store)
    assert small.tasks["arithmetic"].n == 5 and len(small.items()) == 5
    assert list(small.items()["position"]) == [0, 1, 2, 3, 4]
    assert later.tasks["arithmetic"].n == 4 and sorted(later.items()["item_id"]) == sorted(f"arith-{i}" for i in range(6, 10))
    assert small.tasks["arithmetic"].n_scored_now == later.tasks["arithmetic"].n_scored_now == 0
