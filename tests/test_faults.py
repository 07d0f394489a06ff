"""Faults and hostile input: each case ends in one user error (exit 2 through the CLI) that names the cause and what
was kept, and nothing already stored is lost. Disk-full and lock failures are injected where a test cannot make
them; the rest are real (files, stores, processes)."""

from __future__ import annotations

import errno
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import quantcal
from quantcal.cli import app
from quantcal.errors import QuantcalError
from quantcal.study.jobs import Job, ScoringOptions, pending_job, run_job, store_results
from quantcal.sources.models import load_model, resolve_source
from quantcal.store.database import open_store
from quantcal.tasks import get_task
from quantcal.variants.definition import ModelHolder
from tests.conftest import write_jsonl

runner = CliRunner()


def questions(n: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1), "seven"],
             "answer": 0} for i in range(n)]


def one_line_error(result, *fragments: str) -> str:  # noqa: ANN001
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error:" in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    return result.output


@pytest.fixture()
def scored_store(tmp_path: Path, tiny_llama: Path) -> Path:
    """A store with one finished run of 8 custom items."""
    data = write_jsonl(tmp_path / "q.jsonl", questions(8))
    result = runner.invoke(app, ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data),
                                 "--store", str(tmp_path / "s.sqlite"), "--name", "v"])
    assert result.exit_code == 0, result.output
    return tmp_path / "s.sqlite"


def _rows(store: Path) -> tuple[int, int]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT COUNT(*) FROM items").fetchone()[0], db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]


# 1. two writers on one job ----------------------------------------------------------------------------------------
def test_two_writers_of_the_same_items_store_each_once(tmp_path: Path, tiny_llama: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", questions(6))
    source = resolve_source(str(tiny_llama))
    job = Job("v", source, get_task("custom"), str(data))
    options = ScoringOptions(batch_size=4)
    holder = ModelHolder(lambda: load_model(source))
    with open_store(tmp_path / "s.sqlite") as a, open_store(tmp_path / "s.sqlite") as b:
        first, second = pending_job(a, job, options), pending_job(b, job, options)
        assert len(first.todo) == len(second.todo) == 6  # both started before either wrote
        run_job(a, job, options, holder)
        from quantcal.study.jobs import score_pending

        late = store_results(b, job, second, lambda: score_pending(holder.get(), second.todo, " ", options))
        assert late.n_items == 6
    assert _rows(tmp_path / "s.sqlite") == (6, 18)


def _open_at_once(path: str, barrier, answers) -> None:  # noqa: ANN001 - multiprocessing objects
    barrier.wait()
    try:
        with open_store(Path(path)):
            pass
        answers.put("ok")
    except QuantcalError as err:
        answers.put(str(err))


def test_processes_creating_one_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Six processes released together onto a store that does not exist yet: each opens it (the schema is laid in
    one transaction and the WAL switch waits for the lock), none sees half a schema or a lock error. Before, about
    one try in three had a process refusing the store as 'damaged' (tables missing)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for trial in range(20):
        barrier, answers = context.Barrier(6), context.Queue()
        processes = [context.Process(target=_open_at_once, args=(str(tmp_path / f"s{trial}.sqlite"), barrier, answers))
                     for _ in range(6)]
        for p in processes:
            p.start()
        for p in processes:
            p.join(timeout=60)
        assert [answers.get(timeout=5) for _ in processes] == ["ok"] * 6, trial


@pytest.mark.heavy
def test_processes_on_one_job_and_on_another_job_of_one_store(tmp_path: Path, tiny_llama: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", questions(40))
    args = [sys.executable, "-m", "quantcal.cli", "eval", "--model", str(tiny_llama), "--task", "custom",
            "--data-file", str(data), "--store", str(tmp_path / "s.sqlite"), "--batch-size", "4"]
    jobs = [args + ["--name", "v"], args + ["--name", "v"], args + ["--name", "other"]]  # two share a job
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for a in jobs]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert all("Traceback" not in o for o in outputs)
    assert _rows(tmp_path / "s.sqlite") == (80, 240)
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # every claim released


def test_claims_of_dead_or_expired_owners_are_taken_over_and_live_ones_are_not(tmp_path: Path) -> None:
    import os
    import socket
    import time

    host = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{host}:{finished.stdout.strip()}:t"
    alive = f"{host}:{os.getpid()}:t"
    ids = [f"i{k}" for k in range(8)]
    with open_store(tmp_path / "s.sqlite") as db:
        run = db.get_or_create_run("v", "t", "h", {}, {})
        assert db.claim(run, ids, alive, 2, 60) == ["i0", "i1"]
        assert db.claim(run, ids, "elsewhere:1:t", 2, 60) == ["i2", "i3"]
        assert db.claim(run, ids, "elsewhere:2:t", 1, 0.01) == ["i4"]
        with db.transaction() as conn:  # a local worker that died holding two claims
            conn.executemany("INSERT INTO claims VALUES (?, ?, ?, ?)", [(run, i, dead, time.time() + 60) for i in ("i5", "i6")])
        time.sleep(0.05)
        # a new worker skips the live local owner and the unexpired remote one; it takes the expired claim, the dead
        # owner's claims and the free item
        assert db.claim(run, ids, "me:9:t", 10, 60) == ["i4", "i5", "i6", "i7"]
        assert db.unfinished(run, ids) == 8 and db.unfinished(run, ids, {"i0"}) == 7


@pytest.mark.heavy
def test_two_processes_share_a_job_and_one_killed_still_ends_complete(tmp_path: Path, tiny_llama: Path) -> None:
    import os
    import signal
    import time

    data = write_jsonl(tmp_path / "q.jsonl", questions(300))
    store = tmp_path / "s.sqlite"
    args = [sys.executable, "-m", "quantcal.cli", "eval", "--model", str(tiny_llama), "--task", "custom",
            "--data-file", str(data), "--store", str(store), "--name", "v", "--batch-size", "3"]
    victim = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    survivor = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and victim.poll() is None:
        time.sleep(0.2)
        try:
            if _rows(store)[0] >= 30:
                break
        except sqlite3.Error:
            continue
    assert victim.poll() is None, "the job finished before a worker could be killed; make it longer"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    output = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0 and "Traceback" not in output, output
    assert _rows(store) == (300, 900)  # every item once, the killed worker's claims taken over


@pytest.mark.heavy
def test_a_truncated_variant_cache_entry_is_rebuilt(tmp_path: Path, tiny_llama: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.build import variant_dir

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "q.jsonl", questions(4))
    args = ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data), "--recipe",
            "rtn:bits=4,group_size=16"]
    assert runner.invoke(app, args + ["--store", str(tmp_path / "a.sqlite")]).exit_code == 0
    entry = variant_dir(resolve_source(str(tiny_llama)), parse_recipe("rtn:bits=4,group_size=16"))
    weights = next(entry.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    again = runner.invoke(app, args + ["--store", str(tmp_path / "b.sqlite")])
    assert again.exit_code == 0 and "is damaged" in again.output and "building it again" in again.output, again.output
    a = quantcal.load_items(tmp_path / "a.sqlite")
    b = quantcal.load_items(tmp_path / "b.sqlite")
    assert list(a["p_gold"]) == list(b["p_gold"])  # the rebuilt variant is the same variant


# 2. a store locked by another process -----------------------------------------------------------------------------
def test_locked_store_at_start_and_mid_run(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch,
                                            scored_store: Path) -> None:
    import quantcal.store.database as store_module

    monkeypatch.setattr(store_module, "LOCK_TIMEOUT_S", 0.2)
    data = write_jsonl(tmp_path / "more.jsonl", questions(12))
    holder = sqlite3.connect(scored_store)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = runner.invoke(app, ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data),
                                     "--store", str(scored_store)])
        one_line_error(result, "it is locked by another process", "nothing was scored", "wait for the other process")
    finally:
        holder.rollback()
        holder.close()

    source = resolve_source(str(tiny_llama))
    job = Job("w", source, get_task("custom"), str(data))
    options = ScoringOptions(batch_size=3)
    model = ModelHolder(lambda: load_model(source))
    with open_store(scored_store) as db:
        pending = pending_job(db, job, options)
        from quantcal.study.jobs import score_pending

        def batches():  # noqa: ANN202 - another process takes the lock after the first batch is stored
            for number, batch in enumerate(score_pending(model.get(), pending.todo, " ", options)):
                if number == 1:
                    other = sqlite3.connect(scored_store)
                    other.execute("BEGIN EXCLUSIVE")
                    batches.other = other  # type: ignore[attr-defined]
                yield batch
        with pytest.raises(QuantcalError) as caught:
            store_results(db, job, pending, batches)
        batches.other.rollback()  # type: ignore[attr-defined]
        batches.other.close()  # type: ignore[attr-defined]
        message = str(caught.value)
        assert "locked by another process" in message
        assert "of the 12 items scored by this run were stored" in message and "run the same command again" in message
        stored = len(db.done_item_ids(pending.run_id))
        assert 0 < stored < 12
        again = run_job(db, job, options, model)  # resuming completes it
        assert again.n_scored_now == 12 - stored and len(db.done_item_ids(pending.run_id)) == 12


# 3. a full disk ---------------------------------------------------------------------------------------------------
def test_disk_full_mid_scoring_says_what_was_kept_and_the_rerun_completes(tmp_path: Path, tiny_llama: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.store.database import Store

    data = write_jsonl(tmp_path / "q.jsonl", questions(10))
    store = tmp_path / "s.sqlite"
    original = Store.write_scores
    calls = {"n": 0}

    def full_after_two(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] > 2:
            raise sqlite3.OperationalError("database or disk is full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Store, "write_scores", full_after_two)
    args = ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data), "--store", str(store),
            "--batch-size", "6"]
    one_line_error(runner.invoke(app, args), "the disk is full", "4 of the 10 items scored by this run were stored",
                   "free space", "run the same command again to resume")
    monkeypatch.setattr(Store, "write_scores", original)
    assert runner.invoke(app, args).exit_code == 0
    assert _rows(store) == (10, 30)


def test_report_onto_a_full_disk_leaves_no_partial_file(scored_store: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.report import figures

    calls = {"n": 0}
    real_save = figures._save

    def fail_on_second_figure(fig, folder, key, title):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            import matplotlib.pyplot as plt

            plt.close(fig)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(fig, folder, key, title)

    monkeypatch.setattr(figures, "_save", fail_on_second_figure)
    out = tmp_path / "rep"
    one_line_error(runner.invoke(app, ["report", str(scored_store), "--output", str(out), "--resamples", "20"]),
                   "cannot write the report to", "the disk is full", "free space")
    assert not list(out.rglob("*.partial")) and not (out / "report.html").exists()


def test_report_rebuilds_other_normalizations_without_rescoring(scored_store: Path, tmp_path: Path) -> None:
    before = _rows(scored_store)
    result = runner.invoke(app, ["report", str(scored_store), "--output", str(tmp_path / "rep"), "--resamples", "20",
                                 "--normalization", "none,tokens"])
    assert result.exit_code == 0, result.output
    task = quantcal.rebuild_report(scored_store, output=tmp_path / "rep2", resamples=20,
                                   normalization=["tokens"]).results["tasks"]["custom"]
    written = json.loads((tmp_path / "rep" / "results.json").read_text())["tasks"]["custom"]
    assert list(written) == ["none", "tokens"] and list(task) == ["tokens"]
    assert written["tokens"]["variants"]["v"] == task["tokens"]["variants"]["v"]
    assert written["none"]["variants"]["v"] != written["tokens"]["variants"]["v"]  # scores divided by length differ
    assert _rows(scored_store) == before
    one_line_error(runner.invoke(app, ["report", str(scored_store), "--output", str(tmp_path / "rep3"),
                                       "--normalization", "none,words"]), "'words'", "none, tokens, chars, bytes")


def test_ctrl_c_while_the_report_is_written_keeps_the_store_and_leaves_no_partial_file(
        scored_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.report import figures

    real_save, calls = figures._save, {"n": 0}

    def interrupted(fig, folder, key, title):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_save(fig, folder, key, title)

    monkeypatch.setattr(figures, "_save", interrupted)
    before = _rows(scored_store)
    result = runner.invoke(app, ["report", str(scored_store), "--output", str(tmp_path / "rep"), "--resamples", "20"])
    assert result.exit_code == 130 and "interrupted" in result.output
    assert not list((tmp_path / "rep").rglob("*.partial")) and _rows(scored_store) == before
    monkeypatch.setattr(figures, "_save", real_save)
    assert runner.invoke(app, ["report", str(scored_store), "--output", str(tmp_path / "rep"), "--resamples", "20"]).exit_code == 0


# 4. unwritable output ---------------------------------------------------------------------------------------------
def test_unwritable_outputs_are_refused_before_the_work(scored_store: Path, tmp_path: Path, tiny_llama: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    one_line_error(runner.invoke(app, ["export", "--store", str(scored_store), "--out", str(blocker / "x.jsonl")]),
                   "a part of the path is a file, not a folder")
    data = write_jsonl(tmp_path / "q2.jsonl", questions(3))
    result = runner.invoke(app, ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data),
                                 "--store", str(tmp_path / "new.sqlite"), "--output-json", str(blocker / "r.json")])
    one_line_error(result, "a part of the path is a file")
    assert not (tmp_path / "new.sqlite").exists()  # refused before any scoring
    study = tmp_path / "study.yaml"
    study.write_text(f"reference: {tiny_llama}\nvariants: [{{name: w4, recipe: 'rtn:bits=4,group_size=16'}}]\n"
                     f"tasks: [{{name: custom, data_file: {data}}}]\noutput: {blocker / 'rep'}\n")
    one_line_error(runner.invoke(app, ["run", str(study)]), "cannot write to", "a part of the path is a file")


# 5. a read-only store ---------------------------------------------------------------------------------------------
def test_reading_commands_open_the_store_read_only(scored_store: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with sqlite3.connect(scored_store) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        Path(str(scored_store) + suffix).unlink(missing_ok=True)
    before = scored_store.read_bytes()
    import quantcal.store.database as store_module

    monkeypatch.setattr(store_module, "_writable", lambda path: False)  # as for a file we may not write
    assert quantcal.store_metrics(scored_store, ["acc"], resamples=20)[0].n == 8
    assert quantcal.export(scored_store, tmp_path / "x.jsonl")[1] == 8
    assert len(quantcal.load_items(scored_store)) == 8
    quantcal.rebuild_report(scored_store, output=tmp_path / "rep", resamples=20)
    assert scored_store.read_bytes() == before
    assert not Path(str(scored_store) + "-wal").exists() and not Path(str(scored_store) + "-shm").exists()
    with open_store(scored_store, readonly=True) as db, pytest.raises(QuantcalError, match="read-only"):
        db.set_status(1, "x")


# 6. tampered stores -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tamper, words", [
    ("DROP TABLE scores", "table scores missing"),
    ("DROP TABLE items", "table items missing"),
    ("ALTER TABLE scores DROP COLUMN greedy", "table scores lacks column greedy"),
    ("DELETE FROM meta", "no schema version"),
])
def test_tampered_store_is_refused_not_repaired(scored_store: Path, tamper: str, words: str) -> None:
    with sqlite3.connect(scored_store) as db:
        db.execute(tamper)
    for command in (["metrics", str(scored_store)], ["export", "--store", str(scored_store)],
                    ["eval", "--task", "arithmetic", "--store", str(scored_store)]):
        one_line_error(runner.invoke(app, command), words)
    with sqlite3.connect(scored_store) as db:  # nothing was re-created
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert ("scores" in tables) == ("DROP TABLE scores" not in tamper)


def test_a_foreign_sqlite_file_is_not_taken_over(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    one_line_error(runner.invoke(app, ["eval", "--store", str(other)]), "not a quantcal store")
    with sqlite3.connect(other) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["people"]


# 7. a data file that is not UTF-8 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_invalid_utf8_names_file_and_line(tmp_path: Path, tiny_llama: Path, suffix: str) -> None:
    good = json.dumps({"question": "a", "choices": ["x", "y"], "answer": 0}).encode()
    bad = good.replace(b'"a"', b'"a\xff"')
    path = tmp_path / f"q.{suffix}"
    path.write_bytes(good + b"\n" + bad + b"\n" if suffix == "jsonl" else b"[" + good + b",\n" + bad + b"]")
    result = runner.invoke(app, ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(path),
                                 "--store", str(tmp_path / "s.sqlite")])
    one_line_error(result, f"q.{suffix}:2: not UTF-8", "0xff")


# 8. resamples beyond memory ---------------------------------------------------------------------------------------
def test_huge_resamples_are_refused_before_scoring(tmp_path: Path, tiny_llama: Path, scored_store: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", questions(5))
    study = tmp_path / "study.yaml"
    body = (f"reference: {tiny_llama}\nvariants: [{{name: w4, recipe: 'rtn:bits=4,group_size=16'}}]\n"
            f"tasks: [{{name: custom, data_file: {data}}}]\noutput: {tmp_path / 'rep'}\n")
    study.write_text(body + "bootstrap: {resamples: 1000000000}\n")
    one_line_error(runner.invoke(app, ["run", str(study), "--dry-run"]), "bootstrap.resamples")
    one_line_error(runner.invoke(app, ["report", str(scored_store), "--resamples", "1000000000"]), "--resamples")
    from quantcal.metrics.bootstrap import check_resamples

    with pytest.raises(QuantcalError, match="needs about .* GiB"):
        check_resamples(100_000, 10_000)


# 9. a limit larger than a generated task --------------------------------------------------------------------------
def test_huge_limit_on_the_generated_task_is_refused_at_once(tmp_path: Path) -> None:
    one_line_error(runner.invoke(app, ["eval", "--task", "arithmetic", "--limit", "1000000000000",
                                       "--store", str(tmp_path / "s.sqlite")]), "--limit 1000000000000", "at most")


# 10. pickled adapters ---------------------------------------------------------------------------------------------
def test_a_pickled_adapter_is_never_loaded(tmp_path: Path, tiny_llama: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_llama)}))
    (adapter / "adapter_model.bin").write_bytes(b"not even a pickle")
    result = runner.invoke(app, ["eval", "--adapter", str(adapter), "--store", str(tmp_path / "s.sqlite")])
    one_line_error(result, "adapter_model.bin", "never loads")
    assert not (tmp_path / "s.sqlite").exists()


# 11. names that are formulas or markup ----------------------------------------------------------------------------
def test_csv_cells_and_markdown_tables_are_inert(tmp_path: Path, tiny_llama: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", [dict(q, id=f"=cmd{i}") for i, q in enumerate(questions(4))])
    store = tmp_path / "s.sqlite"
    name = '=HYPERLINK("http://x","<script>alert(1)</script>")'
    assert runner.invoke(app, ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data),
                               "--store", str(store), "--name", name]).exit_code == 0
    assert runner.invoke(app, ["export", "--store", str(store), "--format", "csv", "--out", str(tmp_path / "x.csv")]).exit_code == 0
    import csv

    rows = list(csv.DictReader((tmp_path / "x.csv").open()))
    cells = [c for r in rows for c in r.values()]
    assert not [c for c in cells if c[:1] in ("=", "+", "@")]
    assert rows[0]["variant"] == "'" + name and rows[0]["item_id"] == "'=cmd0"
    quantcal.rebuild_report(store, output=tmp_path / "rep", resamples=20)
    md = (tmp_path / "rep" / "tables.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md


# 12. variant names as folder names --------------------------------------------------------------------------------
def test_a_finetune_variant_name_cannot_leave_the_adapters_folder(tmp_path: Path) -> None:
    spec = quantcal.study_spec({"reference": "smollm2-135m-instruct", "output": str(tmp_path / "out"),
                                "tasks": [{"name": "arithmetic"}],
                                "variants": [{"name": "../../x", "finetune": {"data": "task:arithmetic"}}]})
    folder = Path(spec.adapter_of(spec.variants[0]))
    assert folder.parent == tmp_path / "out" / "adapters" and ".." not in folder.parts


# 13. items that could not be scored -------------------------------------------------------------------------------
def test_unscored_items_are_exported_with_their_error_and_eval_exits_1(tmp_path: Path, tiny_llama: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.study import jobs

    real = jobs.score_pending

    def one_fails(lm, todo, delimiter, options, say=None):  # noqa: ANN001, ANN202
        for entries, errors in real(lm, todo, delimiter, options, say):
            bad = [e for e in entries if e[1].id == "q2"]
            yield [e for e in entries if e[1].id != "q2"], errors + [(e[1], "non-finite log-likelihood") for e in bad]

    monkeypatch.setattr(jobs, "score_pending", one_fails)
    data = write_jsonl(tmp_path / "q.jsonl", questions(5))
    store = tmp_path / "s.sqlite"
    result = runner.invoke(app, ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data),
                                 "--store", str(store)])
    assert result.exit_code == 1 and "1 item(s) could not be scored" in result.output and "Traceback" not in result.output
    path, n = quantcal.export(store, tmp_path / "x.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert n == 5 and [r["error"] for r in records if r["error"]] == ["non-finite log-likelihood"]
    assert {r["item_id"] for r in records} == {f"q{i}" for i in range(5)}
    assert len(quantcal.load_items(store)) == 4  # the analysis frame holds scored items only


# 14. malformed lm-eval samples ------------------------------------------------------------------------------------
SAMPLE = {"doc_id": 0, "target": 0, "arguments": {"gen_args_0": {"arg_0": "q", "arg_1": " a"},
                                                  "gen_args_1": {"arg_0": "q", "arg_1": " b"}},
          "resps": [[["-1.0", "False"]], [["-2.0", "False"]]], "filtered_resps": [["-1.0", "False"], ["-2.0", "False"]]}


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("doc_id"), "'doc_id' is None"),
    (lambda s: s.update(filtered_resps=[["nan", "False"], ["-2.0", "False"]]), "not a finite number"),
    (lambda s: s.update(filtered_resps=[["-inf", "False"], ["-2.0", "False"]]), "not a finite number"),
    (lambda s: s.update(filtered_resps=[["abc", "False"], ["-2.0", "False"]]), "not a number"),
    (lambda s: s["arguments"].update(gen_args_x={"arg_0": "q", "arg_1": " c"}), "not an lm-eval log-likelihood sample"),
    (None, "doc_id 0 repeats"),
])
def test_bad_lm_eval_samples_leave_no_run(tmp_path: Path, change, words: str) -> None:  # noqa: ANN001
    import copy

    lines = []
    for doc in range(3):
        sample = copy.deepcopy(SAMPLE)
        sample["doc_id"] = doc if change is not None else 0
        if doc == 1 and change is not None:
            change(sample)
        lines.append(json.dumps(sample))
    path = tmp_path / "samples_x_2026-01-01T00-00-00.000000.jsonl"
    path.write_text("\n".join(lines) + "\n")
    store = tmp_path / "s.sqlite"
    one_line_error(runner.invoke(app, ["import-lm-eval", str(path), "--store", str(store)]), words)
    assert not store.exists()  # the store this import created holds nothing: removed (a failed run leaves no store)


# 15. escapes in a template typed on the command line --------------------------------------------------------------
def test_a_typed_backslash_n_in_a_template_is_a_newline(tmp_path: Path, tiny_llama: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", questions(2))
    store = tmp_path / "s.sqlite"
    result = runner.invoke(app, ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data),
                                 "--store", str(store), "--template", "Q: {question}\\nA:"])
    assert result.exit_code == 0, result.output
    items = quantcal.load_items(store)
    assert items.loc[0, "question"] == "Q: What is 0 plus 0?\nA:"


# 16. items cut to the model window --------------------------------------------------------------------------------
def test_truncated_items_are_counted_in_a_warning(tmp_path: Path, tiny_llama: Path) -> None:
    rows = questions(3)
    rows[1]["question"] = "word " * 600
    data = write_jsonl(tmp_path / "q.jsonl", rows)
    result = runner.invoke(app, ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data),
                                 "--store", str(tmp_path / "s.sqlite"), "--max-length", "64"])
    assert result.exit_code == 0, result.output
    assert "1 of 3 items are longer than the model window (64 tokens)" in result.output


# 17. probabilities that underflow ---------------------------------------------------------------------------------
def test_exported_log_probabilities_stay_finite_where_probabilities_underflow(tmp_path: Path) -> None:
    from quantcal.tasks.items import Item

    with open_store(tmp_path / "s.sqlite") as db:
        run = db.get_or_create_run("v", "t", "h", {}, {})
        db.write_scores(run, [(0, Item("a", "q", ("x", "y"), 1), [-1.0, -900.0], [1, 1], [True, False])])
    path, _ = quantcal.export(tmp_path / "s.sqlite", tmp_path / "x.jsonl")
    record = json.loads(path.read_text())
    assert record["p_gold"] == 0.0 and record["logprobs"][1] == pytest.approx(-899.0)


# stopped at a random point ----------------------------------------------------------------------------------------
def _study(folder: Path, tiny_llama: Path, data: Path) -> Path:
    study = folder / "study.yaml"
    study.write_text(f"reference: {tiny_llama}\nvariants: [{{name: w4, recipe: 'rtn:bits=4,group_size=16'}}]\n"
                     f"tasks: [{{name: custom, data_file: {data}}}]\nbootstrap: {{resamples: 50}}\n"
                     f"batch_size: 3\noutput: {folder / 'out'}\n")
    return study


def _scores(store: Path) -> dict[tuple[str, str, int], float]:
    with sqlite3.connect(store) as db:
        return {(v, i, c): ll for v, i, c, ll in db.execute(
            "SELECT r.variant, s.item_id, s.choice, s.loglik FROM scores s JOIN runs r ON r.run_id = s.run_id")}


@pytest.mark.heavy
@pytest.mark.parametrize("signame, seed", [("SIGKILL", 0), ("SIGKILL", 1), ("SIGTERM", 2)])
def test_run_stopped_at_a_random_point_resumes_to_the_uninterrupted_result(tmp_path: Path, tiny_llama: Path,
                                                                            signame: str, seed: int) -> None:
    import os
    import random
    import signal
    import time

    data = write_jsonl(tmp_path / "q.jsonl", questions(120))
    env = {**os.environ, "QUANTCAL_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "quantcal.cli", "run"]
    for folder in ("whole", "cut"):
        (tmp_path / folder).mkdir()
    whole, cut = _study(tmp_path / "whole", tiny_llama, data), _study(tmp_path / "cut", tiny_llama, data)
    subprocess.run(cli + [str(whole)], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(cli + [str(cut)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if signame == "SIGKILL":
        time.sleep(random.Random(seed).uniform(3.0, 8.0))  # before, during or after the variant build and scoring
    else:  # mid-scoring, so the interruption path runs
        store = tmp_path / "cut" / "out" / "study.sqlite"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
            try:
                if store.exists() and _rows(store)[0] >= 20:
                    break
            except sqlite3.Error:
                continue
    stopped = proc.poll() is None
    if stopped:
        os.kill(proc.pid, getattr(signal, signame))
    output = proc.communicate(timeout=300)[0]
    if signame == "SIGTERM":  # sent mid-scoring: ends as Ctrl-C does, finished items kept
        assert stopped and proc.returncode == 130 and "interrupted" in output and "Traceback" not in output, output
    again = subprocess.run(cli + [str(cut)], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    expected, got = _scores(tmp_path / "whole" / "out" / "study.sqlite"), _scores(tmp_path / "cut" / "out" / "study.sqlite")
    assert got.keys() == expected.keys() and len(got) == 2 * 120 * 3
    assert max(abs(got[k] - expected[k]) for k in got) < 1e-4
    assert (tmp_path / "cut" / "out" / "report.html").is_file()
    assert not list((tmp_path / "cut").rglob("*.partial"))
