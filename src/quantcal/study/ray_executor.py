"""Running a study's jobs as Ray tasks, so a sweep spreads over a cluster (``quantcal run --executor ray``).

The driver plans, reads the store to find what each job still has to score, and ships those items (not file
paths) to the tasks; each task loads its variant (building it into the worker's variant cache when needed) and
returns the scores; the driver alone writes the store, so SQLite never sees two writers. The first job of each
variant runs before that variant's other jobs, so a variant is built once, not once per task, when the workers
share a cache (one machine, or a shared ``QUANTCAL_CACHE``). Each task declares its CPUs and GPUs to Ray.

Ray is an optional dependency (``pip install 'quantcal[ray]'``); the default executor needs none of this.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from quantcal.errors import QuantcalError
from quantcal.study.jobs import BatchResult, Job, PendingJob, ScoringOptions, pending_job, score_pending, store_results
from quantcal.tasks.items import Item
from quantcal.store.database import Store
from quantcal.study.runner import JobOutcome, PlannedJob, load_options, plan, scoring_options
from quantcal.study.spec import StudySpec
from quantcal.variants.definition import LoadOptions, PreparedVariant, VariantDef, prepare


@dataclass(frozen=True)
class RaySettings:
    address: Optional[str] = None  # None: start a local Ray instance
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0


def score_remote_job(defn: VariantDef, todo: Sequence[tuple[int, Item]], target_delimiter: str,
                     options: ScoringOptions, load: LoadOptions, threads: int) -> list[BatchResult]:
    """The body of one Ray task: load the variant, score the items, return every batch's results."""
    import torch

    torch.set_num_threads(max(1, threads))
    return list(score_pending(prepare(defn, load).holder.get(), todo, target_delimiter, options))


def run_study_ray(
    spec: StudySpec,
    store: Store,
    settings: RaySettings,
    progress: Callable[[str, int], Any] | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> list[JobOutcome]:
    """Run every planned job as a Ray task; returns one outcome per job, as the local runner does."""
    try:
        import ray
    except ImportError as exc:
        raise QuantcalError("`executor` ray needs Ray: pip install 'quantcal[ray]'") from exc
    if settings.cpus_per_job <= 0 or settings.gpus_per_job < 0:
        raise QuantcalError("`cpus_per_job` must be positive and `gpus_per_job` at least 0")
    options, load = scoring_options(spec), load_options(spec)
    if load.device.startswith("cuda") and settings.gpus_per_job == 0:
        settings = RaySettings(settings.address, settings.cpus_per_job, 1.0)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=settings.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        except Exception as exc:  # noqa: BLE001 - Ray raises several kinds; the user needs the reason
            raise QuantcalError(f"cannot start or reach Ray ({settings.address or 'local'}): {exc}") from exc
    remote = ray.remote(num_cpus=settings.cpus_per_job, num_gpus=settings.gpus_per_job, max_retries=0)(score_remote_job)
    try:
        return _drive(ray, remote, plan(spec), store, options, load, settings, progress, say)
    finally:
        if started_here:
            ray.shutdown()


def _drive(ray: Any, remote: Any, jobs: list[PlannedJob], store: Store, options: ScoringOptions, load: LoadOptions,
           settings: RaySettings, progress: Callable[[str, int], Any] | None, say: Callable[[str], None]) -> list[JobOutcome]:
    outcomes: dict[int, JobOutcome] = {}
    prepared: dict[int, tuple[Job, PendingJob]] = {}
    waiting: dict[str, deque[int]] = defaultdict(deque)  # per variant, the jobs after its first
    heads: list[int] = []
    headed: set[str] = set()
    variants: dict[str, PreparedVariant] = {}  # resolved here for the store's records; loaded by the tasks
    for number, job in enumerate(jobs):
        try:
            if job.variant not in variants:
                variants[job.variant] = prepare(job.definition, load)
            full = job.job(variants[job.variant], load.dtype)
            prepared[number] = (full, pending_job(store, full, options))
        except QuantcalError as exc:
            outcomes[number] = JobOutcome.failed(job.variant, job.label, exc)
            continue
        (waiting[job.variant] if job.variant in headed else heads).append(number)
        headed.add(job.variant)
    in_flight: dict[Any, tuple[int, float]] = {}

    def submit(number: int) -> None:
        full, pending = prepared[number]
        if not pending.todo:  # nothing left to score: no task, no model load
            outcomes[number] = JobOutcome.of(store_results(store, full, pending, lambda: []), full.variant, full.label, 0.0)
            for follower in list(waiting.pop(full.variant, ())):
                submit(follower)
            return
        ref = remote.remote(jobs[number].definition, pending.todo, full.target_delimiter, options, load,
                            int(settings.cpus_per_job))
        in_flight[ref] = (number, time.perf_counter())

    for number in heads:
        submit(number)
    while in_flight:
        (ref,), _ = ray.wait(list(in_flight), num_returns=1)
        number, t0 = in_flight.pop(ref)
        full, pending = prepared[number]
        try:
            batches = ray.get(ref)
            result = store_results(store, full, pending, lambda: batches, progress)
            outcomes[number] = JobOutcome.of(result, full.variant, full.label, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - a failed job must not stop the study; the reason is kept
            cause = getattr(exc, "cause", None)  # RayTaskError carries the task's own exception
            outcomes[number] = JobOutcome.failed(full.variant, full.label,
                                                 cause if isinstance(cause, BaseException) else exc, time.perf_counter() - t0)
        say(f"[{len(outcomes)}/{len(jobs)}] {full.variant} · {full.label}"
            + ("" if outcomes[number].ok else f" failed: {outcomes[number].error}"))
        for follower in list(waiting.pop(full.variant, ())):
            submit(follower)
    return [outcomes[i] for i in sorted(outcomes)]

