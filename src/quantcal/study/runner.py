"""Plan and run a study: every (variant, task) job scored into the study's store, resuming what is done.

Variants are built (cached) and loaded once each, on first need; a failed job is recorded and the others go on.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from quantcal.errors import QuantcalError
from quantcal.evaluate import Job, ModelHolder, ScoringOptions, default_loader, run_job
from quantcal.models import ModelSource, resolve_source
from quantcal.store import Store
from quantcal.study.spec import REFERENCE_NAME, StudySpec, TaskSpec
from quantcal.tasks import get_task


@dataclass(frozen=True)
class PlannedJob:
    variant: str
    model: str
    recipe: Optional[str]
    task: TaskSpec


@dataclass
class JobOutcome:
    variant: str
    task: str
    ok: bool
    n_items: int = 0
    n_scored_now: int = 0
    n_errors: int = 0
    seconds: float = 0.0
    error: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan(spec: StudySpec) -> list[PlannedJob]:
    """Reference first, then each variant, each over every task."""
    jobs = [PlannedJob(REFERENCE_NAME, spec.reference, None, t) for t in spec.tasks]
    for v in spec.variants:
        jobs += [PlannedJob(v.name, v.model or spec.reference, v.recipe, t) for t in spec.tasks]
    return jobs


def check_plan(spec: StudySpec) -> None:
    """Fail before any work on what can be checked cheaply: task names, recipes, data files, templates."""
    from quantcal.recipes import parse_recipe

    for t in spec.tasks:
        get_task(t.name, t.template)
        if t.data_file and not Path(t.data_file).is_file():
            raise QuantcalError(f"task {t.name}: data file {t.data_file} not found")
    for v in spec.variants:
        if v.recipe:
            parse_recipe(v.recipe)
    for model in {spec.reference, *(v.model for v in spec.variants if v.model)}:
        resolve_source(model)


def _holder(job: PlannedJob, source: ModelSource, options: ScoringOptions, say: Callable[[str], None]) -> ModelHolder:
    if job.recipe is None:
        return ModelHolder(default_loader(source, options))
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.variants import load_variant

    spec = parse_recipe(job.recipe)
    return ModelHolder(lambda: load_variant(source, spec, options.dtype, options.device, progress=say))


def run_study(
    spec: StudySpec,
    store: Store,
    progress: Callable[[str, int], Any] | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> list[JobOutcome]:
    """Run every planned job; returns one outcome per job (``ok=False`` with the reason for a failed one)."""
    options = ScoringOptions(batch_size=spec.batch_size, dtype=spec.dtype, device=spec.device)
    jobs = plan(spec)
    outcomes: list[JobOutcome] = []
    holders: dict[str, tuple[ModelSource, ModelHolder]] = {}  # resolved (files hashed) once per variant
    for number, job in enumerate(jobs, start=1):
        say(f"[{number}/{len(jobs)}] {job.variant} · {job.task.name}")
        start = time.perf_counter()
        try:
            if job.variant not in holders:
                holders.clear()  # one model in memory at a time
                source = resolve_source(job.model)
                holders[job.variant] = (source, _holder(job, source, options, say))
            source, holder = holders[job.variant]
            extra = {"recipe": job.recipe} if job.recipe else {}
            task = get_task(job.task.name, job.task.template)
            result = run_job(store, Job(job.variant, source, task, job.task.data_file, job.task.limit, job.task.template, extra),
                             options, holder, progress)
            outcomes.append(JobOutcome(job.variant, job.task.name, result.n_items > result.n_errors, result.n_items,
                                       result.n_scored_now, result.n_errors, time.perf_counter() - start,
                                       None if result.n_items > result.n_errors else "no item could be scored"))
        except KeyboardInterrupt:
            raise
        except QuantcalError as exc:
            outcomes.append(JobOutcome(job.variant, job.task.name, False, seconds=time.perf_counter() - start, error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - a failed job must not stop the study; the reason is kept
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            outcomes.append(JobOutcome(job.variant, job.task.name, False, seconds=time.perf_counter() - start, error=detail))
        if not outcomes[-1].ok:
            say(f"  failed: {outcomes[-1].error}")
    return outcomes
