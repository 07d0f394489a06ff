"""The store resumes: a run killed with SIGKILL part-way, then re-run, ends equal to an uninterrupted run,
with no duplicate rows; a finished job re-run scores nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantcal.study.jobs import Job, ScoringOptions, run_job
from quantcal.variants.definition import ModelHolder
from quantcal.sources.models import load_model, resolve_source
from quantcal.store.database import open_store
from quantcal.tasks import get_task
from tests.conftest import write_jsonl


def questions(n: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"What is {i} plus {i}? " + "Think. " * (i % 7),
             "choices": [str(2 * i), str(2 * i + 1), f"{i} and {i} more"], "answer": 0} for i in range(n)]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "quantcal.cli", *args]


def store_rows(path: Path) -> tuple[dict, int, int]:
    db = sqlite3.connect(path)
    scores = {(r[0], r[1]): r[2] for r in db.execute("SELECT item_id, choice, loglik FROM scores")}
    n_scores = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    n_items = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    db.close()
    return scores, n_scores, n_items


@pytest.mark.heavy
def test_kill_then_resume_equals_uninterrupted(tmp_path: Path, tiny_llama: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", questions(300))
    args = ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data), "--batch-size", "3"]
    reference = tmp_path / "reference.sqlite"
    subprocess.run(cli(*args, "--store", str(reference)), check=True, capture_output=True)

    killed = tmp_path / "killed.sqlite"
    proc = subprocess.Popen(cli(*args, "--store", str(killed)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    partial = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if killed.exists():
            try:
                partial = store_rows(killed)[2]
            except sqlite3.Error:
                continue
            if partial >= 20:
                break
    assert proc.poll() is None, "the run finished before it could be killed; make the job longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, _, n_after_kill = store_rows(killed)
    assert 20 <= n_after_kill < 300

    subprocess.run(cli(*args, "--store", str(killed)), check=True, capture_output=True)
    ref_scores, ref_n, ref_items = store_rows(reference)
    got_scores, got_n, got_items = store_rows(killed)
    assert (got_items, got_n) == (ref_items, ref_n) == (300, 900)  # every item, every choice, once
    assert got_scores.keys() == ref_scores.keys()
    for key, value in ref_scores.items():  # batches differ after the resume: float rounding only
        assert got_scores[key] == pytest.approx(value, abs=1e-4)


def test_finished_job_rescored_never_and_limit_extends(tmp_path: Path, tiny_llama: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", questions(12))
    source = resolve_source(str(tiny_llama))
    options = ScoringOptions(batch_size=4)
    loads = []

    def loader():  # noqa: ANN202
        loads.append(1)
        return load_model(source)

    with open_store(tmp_path / "s.sqlite") as store:
        first = run_job(store, Job("v", source, get_task("custom"), str(data), limit=5), options, ModelHolder(loader))
        assert (first.n_items, first.n_scored_now) == (5, 5)
        again = run_job(store, Job("v", source, get_task("custom"), str(data), limit=5), options, ModelHolder(loader))
        assert again.n_scored_now == 0 and len(loads) == 1  # no model load when nothing is left to do
        more = run_job(store, Job("v", source, get_task("custom"), str(data)), options, ModelHolder(loader))
        assert (more.run_id, more.n_scored_now) == (first.run_id, 7)
        assert [it.item_id for it in store.scored_items(first.run_id)] == [f"q{i}" for i in range(12)]
        other = run_job(store, Job("v", source, get_task("custom", "Q: {question}\nA:"), str(data), limit=2,
                                   template="Q: {question}\nA:"), options, ModelHolder(loader))
        assert other.run_id != first.run_id  # a different prompt is a different run


def test_export_formats_roundtrip(tmp_path: Path, tiny_llama: Path) -> None:
    import json

    import pandas as pd

    from quantcal.analysis.records import export_store

    data = write_jsonl(tmp_path / "q.jsonl", questions(6))
    source = resolve_source(str(tiny_llama))
    options = ScoringOptions()
    with open_store(tmp_path / "s.sqlite") as store:
        run_job(store, Job("v", source, get_task("custom"), str(data)), options, ModelHolder(lambda: load_model(source)))
        for fmt in ("jsonl", "csv", "parquet"):
            assert export_store(store, tmp_path / f"out.{fmt}", fmt) == 6
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    frame = pd.read_parquet(tmp_path / "out.parquet")
    csv = pd.read_csv(tmp_path / "out.csv")
    assert [r["item_id"] for r in records] == list(frame["item_id"]) == list(csv["item_id"]) == [f"q{i}" for i in range(6)]
    for r in records:
        assert len(r["logliks"]) == len(r["probs"]) == 3 and abs(sum(r["probs"]) - 1) < 1e-9
        assert r["pred"] == max(range(3), key=lambda j: (r["logliks"][j], -j))
    assert json.loads(csv["logliks"][0]) == pytest.approx(records[0]["logliks"])


def test_non_finite_loglik_is_an_item_error_not_a_number(tmp_path: Path, tiny_llama: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    weights_file = next(broken.glob("*.safetensors"))
    weights = load_file(weights_file)
    key = next(k for k in weights if k.endswith("embed_tokens.weight"))
    weights[key] = weights[key].clone()
    data = write_jsonl(tmp_path / "q.jsonl", [{"id": "ok", "question": "2+2?", "choices": ["4", "5"], "answer": 0},
                                             {"id": "bad", "question": "two plus two is four five", "choices": ["yes", "no"], "answer": 0}])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(broken)
    poisoned = tok.encode(" four five", add_special_tokens=False)
    weights[key][poisoned] = float("nan")  # these embeddings (in the bad item's prompt only) poison its log-likelihoods
    save_file(weights, weights_file, metadata={"format": "pt"})
    source = resolve_source(str(broken))
    options = ScoringOptions(batch_size=1)
    with open_store(tmp_path / "s.sqlite") as store:
        result = run_job(store, Job("v", source, get_task("custom"), str(data)), options, ModelHolder(lambda: load_model(source)))
        assert result.n_errors == 1
        (error,) = store.errors(result.run_id)
        assert error[0] == "bad" and "non-finite log-likelihood" in error[1]
        assert [s.item_id for s in store.scored_items(result.run_id)] == ["ok"]
        assert [r.status for r in store.runs()] == ["done-with-errors"]


def test_a_superseded_run_is_left_out_of_metrics_exports_and_reports(tmp_path: Path) -> None:
    """A variant re-run under the same name with another config (its recipe changed) starts a new run; the old run
    stays in the store, but metrics, exports and the report read only the latest, never both (before, an export
    carried both runs' rows under one variant name and the metrics listed the pair twice)."""
    import json

    import quantcal
    from quantcal.tasks.items import Item
    from quantcal.report.collect import collect
    from quantcal.report.collect import ReportSettings

    items = [Item(f"q{i}", "q", ("x", "y"), i % 2) for i in range(6)]
    with open_store(tmp_path / "s.sqlite") as db:
        ref = db.get_or_create_run("reference", "t", "h0", {}, {})
        db.write_scores(ref, [(i, it, [-1.0, -2.0], [1, 1], [True, False]) for i, it in enumerate(items)])
        old = db.get_or_create_run("v", "t", "h1", {"recipe": "rtn:bits=3"}, {})
        db.write_scores(old, [(i, it, [-1.0, -2.0], [1, 1], [True, False]) for i, it in enumerate(items)])
        new = db.get_or_create_run("v", "t", "h2", {"recipe": "rtn:bits=4"}, {})
        db.write_scores(new, [(i, it, [-2.0, -1.0], [1, 1], [False, True]) for i, it in enumerate(items)])
        assert [r.run_id for r in db.runs()] == [ref, old, new]
        assert [r.run_id for r in db.current_runs()] == [ref, new]
        report = collect(db, ReportSettings("reference", resamples=50, recalibration=False))
    path, n = quantcal.export(tmp_path / "s.sqlite", tmp_path / "x.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert n == 12 and {r["run_id"] for r in rows} == {ref, new}
    assert {r["recipe"] for r in rows if r["variant"] == "v"} == {"rtn:bits=4"}
    metrics = quantcal.store_metrics(tmp_path / "s.sqlite", ["acc"], resamples=50)
    assert [(m.variant, m.task) for m in metrics] == [("reference", "t"), ("v", "t")]
    assert metrics[1].values["acc"].estimate == pytest.approx(0.5)  # the new run: it picks y, gold of odd items
    assert [(r["variant"], r["config"].get("recipe")) for r in report["runs"]] == [("reference", None), ("v", "rtn:bits=4")]


def test_a_failed_run_leaves_no_empty_store_but_keeps_any_other(tmp_path: Path) -> None:
    """Issue 34 item 12: a store this call created, into which nothing was scored, is removed when the call fails
    (with its -wal/-shm); a store that existed before, one that holds a scored item, or one another process has
    open stays."""
    import subprocess
    import sys
    import time

    from quantcal.tasks.items import Item

    def fail(path: Path, score: bool = False) -> None:
        with pytest.raises(RuntimeError):
            with open_store(path) as db:
                run = db.get_or_create_run("v", "t", "h", {}, {})
                if score:
                    db.write_scores(run, [(0, Item("a", "q", ("x", "y"), 1), [-1.0, -2.0], [1, 1], [True, False])])
                raise RuntimeError("the model failed")
    new = tmp_path / "new" / "s.sqlite"
    fail(new)
    assert not new.exists() and not list(new.parent.iterdir())
    old = tmp_path / "old.sqlite"
    with open_store(old):
        pass
    fail(old)
    assert old.exists()
    scored = tmp_path / "scored.sqlite"
    fail(scored, score=True)
    assert scored.exists()

    shared = tmp_path / "shared.sqlite"
    code = ("import sys, time; from quantcal.store.database import open_store\n"
            "db = open_store(sys.argv[1]); print('open', flush=True); time.sleep(30)")
    other = subprocess.Popen([sys.executable, "-c", code, str(shared)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "open"
        before = time.perf_counter()
        with pytest.raises(RuntimeError):  # this call did not create it (the other process did): kept anyway
            with open_store(shared):
                raise RuntimeError("x")
        assert shared.exists() and time.perf_counter() - before < 5
    finally:
        other.kill()
        other.wait()


def test_a_store_created_beside_a_process_that_has_it_open_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The creator fails while another process opened the store it just made: the removal needs an exclusive
    lock no one else holds, so the store stays for the other process."""
    import subprocess
    import sys

    from quantcal.store import database

    path = tmp_path / "s.sqlite"
    code = ("import sys, time; from quantcal.store.database import open_store\n"
            "db = open_store(sys.argv[1]); print('open', flush=True); time.sleep(30)")
    with pytest.raises(RuntimeError):
        with open_store(path) as db:
            assert db.holder is not None and db.holder.created
            other = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
            assert other.stdout.readline().strip() == "open"
            raise RuntimeError("the model failed")
    try:
        assert path.exists()
        with database.open_store(path, readonly=True) as db:
            assert db.runs() == []
    finally:
        other.kill()
        other.wait()


def test_evaluate_that_fails_leaves_no_store(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import quantcal
    from quantcal import api

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("scoring failed")
    monkeypatch.setattr(api, "run_job", broken)
    store = tmp_path / "out" / "s.sqlite"
    with pytest.raises(RuntimeError):
        quantcal.evaluate(str(tiny_llama), "arithmetic", limit=4, store=store, progress=None)
    assert not store.exists()
