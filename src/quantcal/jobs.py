"""One evaluation job: score a task's items with a model into the store, resuming what is done.

The model is loaded only if some item still needs scoring, so re-running a finished job is instant.
How a variant becomes that model is :mod:`quantcal.variant`'s business; this module only scores and stores.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from quantcal.cache import file_sha256
from quantcal.encoding import Encoder
from quantcal.items import Item
from quantcal.errors import QuantcalError
from quantcal.faults import describe, sqlite_cause
from quantcal.models import LoadedModel, ModelSource, model_max_length
from quantcal.scoring import DEFAULT_MAX_BATCH_TOKENS, score_items
from quantcal.store import Store
from quantcal.tasks import Task, load_items
from quantcal.variant import ModelHolder
from quantcal.versions import package_versions

#: Bumped when the scorer's numbers could change for the same inputs (a new run, not a resumed one).
SCORER_VERSION = 1


@dataclass(frozen=True)
class ScoringOptions:
    """How items are batched and encoded (how the model is loaded is :class:`quantcal.variant.LoadOptions`)."""

    batch_size: int = 64  # choice rows per forward pass
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS  # padded token positions per pass; None: no cap
    max_length: int | None = None  # model window for left truncation; None: from the model config
    add_special_tokens: bool | None = None

    def __post_init__(self) -> None:
        require_positive(self.batch_size, "batch_size")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise QuantcalError(f"`max_batch_tokens` must be positive (or none for no cap), got {self.max_batch_tokens}")
        if self.max_length is not None:
            require_positive(self.max_length, "max_length")


@dataclass
class Job:
    """One (variant, task) job: ``extra_config`` holds what identifies the variant beyond its base model."""

    variant: str
    source: ModelSource
    task: Task
    data_file: str | None = None
    limit: int | None = None
    template: str | None = None
    extra_config: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"


@dataclass
class JobResult:
    run_id: int
    item_ids: list[str]
    n_scored_now: int
    n_errors: int
    seconds: float

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def data_fingerprint(task: Task, data_file: str | None) -> str:
    if data_file:
        return "file:" + file_sha256(data_file)[:16]
    if task.generate is not None:
        return f"generated:{task.name}"
    return f"hub:{task.source}"


def job_config(job: Job, options: ScoringOptions) -> dict[str, Any]:
    return {
        "model": job.source.to_json() | {"location": None},
        "task": job.task.name,
        "template": job.template,
        "target_delimiter": job.task.target_delimiter,
        "data": data_fingerprint(job.task, job.data_file),
        "dtype": job.dtype,
        "max_length": options.max_length,
        "add_special_tokens": options.add_special_tokens,
        "scorer_version": SCORER_VERSION,
        **job.extra_config,
    }


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PendingJob:
    """What a job still has to score: its run in the store, all its items, and the ``(position, item)`` to do."""

    run_id: int
    items: list[Item]
    todo: list[tuple[int, Item]]


#: One batch of results: ``(position, item, logliks, n_tokens, greedy)`` entries and ``(item, error)`` pairs.
BatchResult = tuple[list[tuple[int, Item, Sequence[float], Sequence[int], Sequence[bool]]], list[tuple[Item, str]]]


def pending_job(store: Store, job: Job, options: ScoringOptions) -> PendingJob:
    """Open (or find) the job's run in the store and list the items it has not scored yet."""
    items = load_items(job.task, job.data_file, job.limit)
    config = job_config(job, options)
    try:
        run_id = store.get_or_create_run(job.variant, job.task.name, config_hash(config), config, package_versions())
    except sqlite3.Error as exc:
        if sqlite_cause(exc) is None:
            raise
        raise QuantcalError(describe(exc, f"start {job.variant} · {job.task.name} in the store {store.path}",
                                     "nothing was scored")) from exc
    done = store.done_item_ids(run_id)
    return PendingJob(run_id, items, [(pos, it) for pos, it in enumerate(items) if it.id not in done])


def score_pending(lm: LoadedModel, todo: Sequence[tuple[int, Item]], target_delimiter: str,
                  options: ScoringOptions, say: Callable[[str], None] | None = None) -> Iterator[BatchResult]:
    """Score ``todo`` with a loaded model; yields each batch's results as soon as they are complete. Items longer
    than the model window keep the end of their context (lm-eval's left truncation); ``say`` hears how many."""
    window = options.max_length or model_max_length(lm.model, lm.tokenizer)
    encoder = Encoder(lm.tokenizer, window, options.add_special_tokens)
    encoded = [encoder.encode_item(k, it, target_delimiter) for k, (_, it) in enumerate(todo)]
    truncated = sum(e.truncated for e in encoded)
    if truncated and say is not None:
        say(f"warning: {truncated} of {len(encoded)} items are longer than the model window ({window} tokens) and "
            "lose the start of their context (left truncation, as lm-eval does)")
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    for batch in score_items(lm.model, encoded, options.batch_size, pad,
                             max_batch_tokens=options.max_batch_tokens):
        entries, errors = [], []
        for s in batch:
            position, item = todo[s.item_index]
            if s.error:
                errors.append((item, s.error))
            else:
                entries.append((position, item, s.logliks, s.n_tokens, s.greedy))
        yield entries, errors


def run_job(
    store: Store,
    job: Job,
    options: ScoringOptions,
    model: ModelHolder,
    progress: Callable[[str, int], Any] | None = None,
    say: Callable[[str], None] | None = None,
) -> JobResult:
    """Score every item of ``job`` not yet in the store. ``progress(description, total)`` returns a tqdm-like bar;
    ``say`` takes warnings (items cut to the model window)."""
    pending = pending_job(store, job, options)
    return store_results(store, job, pending,
                         lambda: score_pending(model.get(), pending.todo, job.task.target_delimiter, options, say),
                         progress)


def store_results(store: Store, job: Job, pending: PendingJob, batches: Callable[[], Iterable[BatchResult]],
                  progress: Callable[[str, int], Any] | None = None) -> JobResult:
    """Write each batch of results as it comes (a crash keeps what was written) and close the run's status."""
    run_id = pending.run_id
    ids = [it.id for it in pending.items]
    if not pending.todo:
        return JobResult(run_id, ids, 0, len(store.errors(run_id)), 0.0)
    bar = progress(f"{job.variant} · {job.task.name}", len(pending.todo)) if progress else None
    start = time.perf_counter()
    store.set_status(run_id, "running")
    scored_now = 0
    try:
        for entries, errors in batches():
            store.write_scores(run_id, entries, errors)
            scored_now += len(entries)
            if bar is not None:
                bar.update(len(entries) + len(errors))
    except KeyboardInterrupt:
        store.set_status(run_id, "interrupted", time.perf_counter() - start)
        raise
    except sqlite3.Error as exc:
        if sqlite_cause(exc) is None:
            raise
        stored = len(store.done_item_ids(run_id))
        kept = (f"{scored_now} of the {len(pending.todo)} items scored by this run were stored "
                f"({stored} of {len(ids)} in the store)")
        raise QuantcalError(describe(exc, f"write {job.variant} · {job.task.name} to the store {store.path}", kept)
                            + "; then run the same command again to resume") from exc
    finally:
        if bar is not None:
            bar.close()
    n_errors = len(store.errors(run_id))
    store.set_status(run_id, "done" if not n_errors else "done-with-errors", time.perf_counter() - start)
    return JobResult(run_id, ids, scored_now, n_errors, time.perf_counter() - start)


def require_positive(value: int, name: str) -> int:
    """``value`` if it is at least 1; else an error naming the parameter ``name``."""
    if value < 1:
        raise QuantcalError(f"`{name}` must be at least 1, got {value}")
    return value

