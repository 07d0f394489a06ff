"""Leases are bounded by what the reader can check: a claim whose lease lies far in the future (a tampered store, a
host whose clock runs ahead) is taken over after at most the reader's own lease, and the waiting message says whose
claim it waits for and until when."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from quantcal.store.database import CLOCK_SKEW_S, open_store
from quantcal.study.jobs import Job, ScoringOptions, run_job
from quantcal.sources.models import load_model, resolve_source
from quantcal.tasks import get_task
from quantcal.variants.definition import ModelHolder
from tests.conftest import write_jsonl

IDS = [f"q{k}" for k in range(4)]


def _tamper(store: Path, run: int, expires: object, owner: str = "far-host:1:t") -> None:
    with open_store(store) as db, db.transaction() as conn:
        conn.executemany("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)", [(run, i, owner, expires) for i in IDS])


@pytest.mark.parametrize("expires", [1e12, float("inf"), "not a time"])
def test_a_lease_far_in_the_future_ends_after_the_readers_lease(tmp_path: Path, expires: object) -> None:
    with open_store(tmp_path / "s.sqlite") as db:
        run = db.get_or_create_run("v", "t", "h", {}, {})
    _tamper(tmp_path / "s.sqlite", run, expires)
    with open_store(tmp_path / "s.sqlite") as db:
        assert db.claim(run, IDS, "me:9:t", 10, 0.3) == []  # held for now: its owner may be alive on its host
        holders = db.claim_holders(run, "me:9:t")
        assert [(who, n) for who, n, _ in holders] == [("far-host:1:t", 4)]
        assert holders[0][2] <= time.time() + 0.3 + 1e-3  # cut to the reader's lease, not 1e12
        time.sleep(0.35)
        assert db.claim(run, IDS, "me:9:t", 10, 0.3) == IDS


def test_a_lease_within_the_clock_skew_is_kept(tmp_path: Path) -> None:
    with open_store(tmp_path / "s.sqlite") as db:
        run = db.get_or_create_run("v", "t", "h", {}, {})
    until = time.time() + 60 + CLOCK_SKEW_S / 2  # a peer's 60 s lease, its clock a little ahead
    _tamper(tmp_path / "s.sqlite", run, until)
    with open_store(tmp_path / "s.sqlite") as db:
        assert db.claim(run, IDS, "me:9:t", 10, 60) == []
        assert db.claim_holders(run, "me:9:t")[0][2] == pytest.approx(until)


def test_a_job_waiting_on_a_tampered_claim_names_it_and_finishes(tmp_path: Path, tiny_llama: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", [{"id": i, "question": f"{i}?", "choices": ["a", "b"], "answer": 0}
                                              for i in IDS])
    source = resolve_source(str(tiny_llama))
    job = Job("v", source, get_task("custom"), str(data))
    options = ScoringOptions(claim_lease_s=0.5)
    with open_store(tmp_path / "s.sqlite") as db:
        run = db.get_or_create_run("v", "custom", "x", {}, {})  # placeholder so the job's run gets another id
    messages: list[str] = []
    with open_store(tmp_path / "s.sqlite") as db:
        from quantcal.study.jobs import pending_job

        real_run = pending_job(db, job, options).run_id
        assert real_run != run
    _tamper(tmp_path / "s.sqlite", real_run, 1e12)
    start = time.perf_counter()
    with open_store(tmp_path / "s.sqlite") as db:
        result = run_job(db, job, options, ModelHolder(lambda: load_model(source)), say=messages.append)
    assert result.n_scored_now == 4 and time.perf_counter() - start < 30
    waiting = [m for m in messages if "waiting for" in m]
    assert waiting and "far-host:1:t" in waiting[0] and "lease until" in waiting[0], messages
