"""One evaluation job: score a task's items with a model into the store, resuming what is done.

The model is loaded only if some item still needs scoring, so re-running a finished job is instant.
How a variant becomes that model is :mod:`quantcal.variants.definition`'s business; this module only scores and stores.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

from quantcal.sources.cache import file_sha256
from quantcal.engines.encoding import Encoder
from quantcal.tasks.items import Item
from quantcal.errors import QuantcalError
from quantcal.faults import describe, sqlite_cause
from quantcal.sources.models import LoadedModel, ModelSource, load_tokenizer, model_max_length
from quantcal.tasks.prompts import PromptSetup, chat_template_hash, require_chat_template, scored_delimiter, task_label
from quantcal.engines.hf_scorer import score_items
from quantcal.engines.vllm import VLLMModel
from quantcal.store.database import Store
from quantcal.tasks import Task, load_items
from quantcal.tasks.lm_eval_tasks import items_fingerprint
from quantcal.variants.definition import ModelHolder
from quantcal.versions import package_versions

#: Bumped when the scorer's numbers could change for the same inputs (a new run, not a resumed one).
SCORER_VERSION = 1


@dataclass(frozen=True)
class ScoringOptions:
    """How items are batched and encoded (how the model is loaded is :class:`quantcal.variants.definition.LoadOptions`)."""

    batch_size: int = 64  # choice rows per forward pass
    #: padded token positions per pass; None: no cap; "auto": from the device (scoring.auto_batch_tokens)
    max_batch_tokens: int | None | str = "auto"
    max_length: int | None = None  # model window for left truncation; None: from the model config
    add_special_tokens: bool | None = None
    claim_size: int = 64  # items a process claims at a time when several share a job
    claim_lease_s: float = 120.0  # a claim not renewed for this long is taken over (its process died)

    def __post_init__(self) -> None:
        require_positive(self.batch_size, "batch_size")
        require_positive(self.claim_size, "claim_size")
        if self.claim_lease_s <= 0:
            raise QuantcalError(f"`claim_lease_s` must be positive, got {self.claim_lease_s}")
        tokens = self.max_batch_tokens
        if tokens is not None and tokens != "auto" and not (isinstance(tokens, int) and tokens >= 1):
            raise QuantcalError(f"`max_batch_tokens` must be a positive number, \"auto\" or none (no cap), got {tokens!r}")
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
    setup: PromptSetup = field(default_factory=PromptSetup)  # few-shot examples, chat template
    skip: int = 0  # leave out the task's first items (then ``limit`` more); like ``limit``, not part of the run's key
    #: Zero-shot content hashes of items this variant must not be evaluated on (its recipe was tuned on them).
    forbidden: frozenset[str] = frozenset()
    forbidden_reason: str = ""

    @property
    def label(self) -> str:
        """The task's name in the store: ``openbookqa``, or with its prompt setup, ``openbookqa[5-shot chat]``."""
        return task_label(self.task.name, self.setup)

    @property
    def target_delimiter(self) -> str:
        """What goes between the context and each choice (nothing under a chat template)."""
        return scored_delimiter(self.setup, self.task.target_delimiter)

    def tokenizer(self) -> Any:
        """The tokenizer whose chat template renders the prompts (None when no chat template is asked for)."""
        return load_tokenizer(self.source) if self.setup.apply_chat_template else None


@dataclass
class JobResult:
    run_id: int
    item_ids: list[str]
    n_scored_now: int
    n_errors: int
    seconds: float  # scoring and storing (from the first item to the last)
    load_seconds: float = 0.0  # loading (and building) the model before, when this job did it

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def summary(self, name: str) -> str:
        """The job's line for the terminal: what was scored, in how long, at what rate (loading apart)."""
        if not self.n_scored_now:
            return f"{name}: all {self.n_items} items already in the store"
        scoring = max(self.seconds, 1e-9)
        loading = f" after {self.load_seconds:.1f} s loading" if self.load_seconds >= 0.05 else ""
        errors = f", {self.n_errors} could not be scored" if self.n_errors else ""
        return (f"{name}: {self.n_scored_now} items scored in {scoring:.1f} s ({self.n_scored_now / scoring:.1f} items/s)"
                f"{loading}{errors}; {self.n_items - self.n_errors} of {self.n_items} in the store")


def data_fingerprint(task: Task, data_file: str | None, items: Sequence[Item] = ()) -> str:
    if task.loader is not None:  # lm-eval renders the items: they are the data
        return items_fingerprint(items)
    if data_file:
        return "file:" + file_sha256(data_file)[:16]
    if task.generate is not None:
        return f"generated:{task.name}"
    return f"hub:{task.source}"


def prompt_config(setup: PromptSetup, tokenizer: Any = None) -> dict[str, Any]:
    """What identifies a prompt setup in a run's key (empty for the zero-shot plain prompt, so older runs resume)."""
    if setup.is_default:
        return {}
    config: dict[str, Any] = {"num_fewshot": setup.num_fewshot}
    if setup.num_fewshot:
        config["fewshot_seed"] = setup.fewshot_seed
        config["fewshot_source"] = "file:" + file_sha256(setup.fewshot_file)[:16] if setup.fewshot_file else "task"
    if setup.apply_chat_template:
        config["chat_template"] = chat_template_hash(tokenizer)
        config["fewshot_as_multiturn"] = setup.fewshot_as_multiturn
    if setup.system_instruction is not None:
        config["system_instruction"] = setup.system_instruction
    return {"prompt": config}


def job_config(job: Job, options: ScoringOptions, tokenizer: Any = None, items: Sequence[Item] = ()) -> dict[str, Any]:
    return {
        "model": job.source.to_json() | {"location": None},
        "task": job.task.name,
        "template": job.template,
        "target_delimiter": job.target_delimiter,
        "data": data_fingerprint(job.task, job.data_file, items),
        "dtype": job.dtype,
        "max_length": options.max_length,
        "add_special_tokens": options.add_special_tokens,
        "scorer_version": SCORER_VERSION,
        **job.extra_config,
        **prompt_config(job.setup, tokenizer),
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
    tokenizer = job.tokenizer()
    if tokenizer is not None:
        require_chat_template(tokenizer, job.source.spec)
    items = load_items(job.task, job.data_file, job.limit, job.setup, tokenizer, job.skip)
    check_allowed(job, items)
    config = job_config(job, options, tokenizer, items)
    try:
        run_id = store.get_or_create_run(job.variant, job.label, config_hash(config), config, package_versions())
    except sqlite3.Error as exc:
        if sqlite_cause(exc) is None:
            raise
        raise QuantcalError(describe(exc, f"start {job.variant} · {job.label} in the store {store.path}",
                                     "nothing was scored")) from exc
    done = store.done_item_ids(run_id)
    return PendingJob(run_id, items, [(pos, it) for pos, it in enumerate(items) if it.id not in done])


def check_allowed(job: Job, items: Sequence[Item]) -> None:
    """Refuse a job whose items include any the variant was tuned on (``job.forbidden``), compared by the
    zero-shot item's content, so a few-shot or chat-template rendering of the same question is caught too."""
    if not job.forbidden:
        return
    plain = items if job.setup.is_default else load_items(job.task, job.data_file, job.limit, skip=job.skip)
    problem = forbidden_overlap(plain, job.forbidden, job.forbidden_reason)
    if problem:
        raise QuantcalError(f"{job.variant} · {job.label}: {problem}")


def forbidden_overlap(items: Sequence[Item], forbidden: frozenset[str], reason: str) -> str | None:
    """What is wrong when some of ``items`` (zero-shot) are among the ``forbidden`` content hashes, else None."""
    overlap = [it.id for it in items if it.content_hash in forbidden]
    if not overlap:
        return None
    shown = ", ".join(overlap[:5]) + (", ..." if len(overlap) > 5 else "")
    return (f"{len(overlap)} of {len(items)} items ({shown}) {reason}; evaluate it on other items "
            "(`skip` past them, or another file)")


@dataclass
class Truncation:
    """Items seen and items cut to the model window (lm-eval's left truncation keeps the end of the context)."""

    items: int = 0
    truncated: int = 0
    window: int = 0

    def warning(self) -> str | None:
        if not self.truncated:
            return None
        return (f"warning: {self.truncated} of {self.items} items are longer than the model window ({self.window} "
                "tokens) and lose the start of their context (left truncation, as lm-eval does)")


def score_pending(lm: LoadedModel, todo: Sequence[tuple[int, Item]], target_delimiter: str,
                  options: ScoringOptions, truncation: Truncation | None = None) -> Iterator[BatchResult]:
    """Score ``todo`` with a loaded model; yields each batch's results as soon as they are complete. Items longer
    than the model window keep the end of their context; ``truncation`` counts them."""
    window = options.max_length or model_max_length(lm.model, lm.tokenizer)
    encoder = Encoder(lm.tokenizer, window, options.add_special_tokens)
    encoded = [encoder.encode_item(k, it, target_delimiter) for k, (_, it) in enumerate(todo)]
    if truncation is not None:
        truncation.items += len(encoded)
        truncation.truncated += sum(e.truncated for e in encoded)
        truncation.window = window
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    if isinstance(lm.model, VLLMModel):  # --backend vllm: the engine scores the same encoded items
        batches = lm.model.score(encoded)
    else:
        batches = score_items(lm.model, encoded, options.batch_size, pad, max_batch_tokens=options.max_batch_tokens)
    for batch in batches:
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
    ``say`` takes warnings (items cut to the model window).

    Several processes may run the same job on one store at once: each claims ``options.claim_size`` pending items at
    a time (see :meth:`Store.claim`), so every item is scored once, and each waits at the end for the others' claims
    to be stored or to expire (a killed process's items are then taken over)."""
    pending = pending_job(store, job, options)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    loaded_before = model.load_seconds
    if pending.todo:
        digest = model.get().weights_digest  # loading and building are their own phase: the item bar starts after
        if digest is not None:
            job, pending = same_weights(store, job, options, pending, digest, say)
    try:
        result = store_results(store, job, pending,
                               lambda: _claimed_batches(store, pending, job, options, model, owner, say), progress)
    finally:
        if pending.todo:
            store.release_claims(pending.run_id, owner)
    result.load_seconds = model.load_seconds if not loaded_before else 0.0
    return result


def same_weights(store: Store, job: Job, options: ScoringOptions, pending: PendingJob, digest: str,
                 say: Callable[[str], None] | None) -> tuple[Job, PendingJob]:
    """The job and run that score with weights of ``digest``: the run found, when it is new or was scored with the
    same weights; otherwise (its cache entry was edited or built again differently since) a new run of the job, whose
    key holds the digest, so that no run mixes the items of two models."""
    recorded = store.record_run_weights(pending.run_id, digest)
    if recorded == digest:
        return job, pending
    job = replace(job, extra_config={**job.extra_config, "weights": digest})
    pending = pending_job(store, job, options)
    store.record_run_weights(pending.run_id, digest)
    if say is not None:
        fresh = len(pending.todo) == len(pending.items)
        say(f"{job.variant} · {job.label}: the variant's files differ from those of its first run (digest {digest}, "
            f"was {recorded}); " + ("scoring its items again in a new run" if fresh else
                                    "continuing the run scored with these files"))
    return job, pending


def describe_holders(holders: Sequence[tuple[str, int, float]]) -> str:
    """``host:pid:token`` (3 items, lease until 12:04:05) and ...: whose claims a process waits for, and when each is
    taken over unless its owner renews it."""
    if not holders:
        return "another process (its claims just ended)"
    return " and ".join(f"{who} ({n} item(s), lease until {time.strftime('%H:%M:%S', time.localtime(until))}; taken "
                        "over then unless renewed)" for who, n, until in holders)


#: How often a process with nothing left to claim looks again while others hold live claims.
CLAIM_POLL_S = 0.5


def _claimed_batches(store: Store, pending: PendingJob, job: Job, options: ScoringOptions, model: ModelHolder,
                     owner: str, say: Callable[[str], None] | None) -> Iterator[BatchResult]:
    """Claim, score and yield slices of the pending items until none is left unstored (others' included)."""
    by_id = {it.id: (pos, it) for pos, it in pending.todo}
    order = list(by_id)
    failed: set[str] = set()  # items this process could not score: not claimed again in this run
    truncation = Truncation()
    waiting = False
    while True:
        ids = store.claim(pending.run_id, order, owner, options.claim_size, options.claim_lease_s, failed)
        if not ids:
            left = store.unfinished(pending.run_id, order, failed)
            if not left:
                break
            if not waiting and say is not None:
                say(f"{job.variant} · {job.label}: waiting for {left} item(s) claimed by "
                    + describe_holders(store.claim_holders(pending.run_id, owner)))
            waiting = True
            time.sleep(CLAIM_POLL_S)  # the rest is claimed by other processes: wait for it, or for their leases
            continue
        waiting = False
        chunk = [by_id[i] for i in ids]
        for entries, errors in score_pending(model.get(), chunk, job.target_delimiter, options, truncation):
            failed.update(item.id for item, _ in errors)
            yield entries, errors
            store.renew_claims(pending.run_id, owner, options.claim_lease_s)
    message = truncation.warning()
    if message and say is not None:
        say(message)


def store_results(store: Store, job: Job, pending: PendingJob, batches: Callable[[], Iterable[BatchResult]],
                  progress: Callable[[str, int], Any] | None = None) -> JobResult:
    """Write each batch of results as it comes (a crash keeps what was written) and close the run's status."""
    run_id = pending.run_id
    ids = [it.id for it in pending.items]
    if not pending.todo:
        return JobResult(run_id, ids, 0, len(store.errors(run_id)), 0.0)
    bar = progress(f"{job.variant} · {job.label}", len(pending.todo)) if progress else None
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
        raise QuantcalError(describe(exc, f"write {job.variant} · {job.label} to the store {store.path}", kept)
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

