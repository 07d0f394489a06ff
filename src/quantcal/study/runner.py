"""Plan and run a study: every (variant, task) job scored into the study's store, resuming what is done.

Variants are built (cached) and loaded once each, on first need; a failed job is recorded and the others go on.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from quantcal.analysis.sensitivity import read_sensitivity
from quantcal.errors import QuantcalError
from quantcal.versions import environment_problem
from quantcal.study.jobs import Job, JobResult, ScoringOptions, forbidden_overlap, run_job
from quantcal.metrics.bootstrap import check_resamples
from quantcal.finetune.base import BaseConfig
from quantcal.finetune.data import check_disjoint, load_examples
from quantcal.finetune.train import FinetuneRun, LoraSettings, TrainSettings, finetune
from quantcal.sources.models import load_tokenizer, resolve_source
from quantcal.tasks.prompts import PromptSetup, require_chat_template, task_label
from quantcal.store.database import Store
from quantcal.study.spec import REFERENCE_NAME, StudySpec, TaskSpec
from quantcal.tasks import get_task, load_items
from quantcal.tasks.lm_eval_tasks import code_consent_error
from quantcal.recipes import FAMILIES
from quantcal.variants.definition import LoadOptions, Phase, PreparedVariant, VariantDef, prepare


@dataclass(frozen=True)
class PlannedJob:
    variant: str
    definition: VariantDef
    task: TaskSpec
    setup: PromptSetup = PromptSetup()

    @property
    def label(self) -> str:
        """The task's name in the store (with its prompt setup when not zero-shot plain)."""
        return task_label(self.task.name, self.setup)

    def job(self, prepared: PreparedVariant, dtype: str = "auto") -> Job:
        """The evaluation job: this task's items scored with the prepared variant."""
        forbidden, reason = prepared.forbidden()
        return Job(self.variant, prepared.source, get_task(self.task.name, self.task.template, self.task.include,
                                                                  self.task.trust_task_code),
                   self.task.data_file, self.task.limit, self.task.template, prepared.config, dtype, self.setup,
                   self.task.skip, forbidden, reason)


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
    item_ids: list[str] = field(default_factory=list, repr=False)  # the items this job covers (its plan's)

    @classmethod
    def of(cls, result: JobResult, variant: str, task: str, seconds: float) -> "JobOutcome":
        """A job that ran: it failed only if no item could be scored."""
        ok = result.n_items > result.n_errors
        return cls(variant, task, ok, result.n_items, result.n_scored_now, result.n_errors, seconds,
                   None if ok else "no item could be scored", list(result.item_ids))

    @classmethod
    def failed(cls, variant: str, task: str, exc: BaseException, seconds: float = 0.0) -> "JobOutcome":
        return cls(variant, task, False, seconds=seconds, error=failure_reason(exc))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("item_ids")
        return out


def planned_items(outcomes: list[JobOutcome]) -> dict[str, list[str]]:
    """Per task label, the items the plan covers (every job of a task covers the same ones; their union, in order)."""
    items: dict[str, dict[str, None]] = {}
    for o in outcomes:
        if o.item_ids:
            items.setdefault(o.task, {}).update(dict.fromkeys(o.item_ids))
    return {task: list(ids) for task, ids in items.items()}


def failure_reason(exc: BaseException) -> str:
    """One line for a failed job: a user error's own message, else the exception's type and message."""
    if isinstance(exc, QuantcalError):
        return str(exc)
    if isinstance(exc, (ImportError, RuntimeError, OSError)):
        problem = environment_problem()  # a broken install (a torch companion) shows as transformers' import error
        if problem:
            return problem
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def plan(spec: StudySpec) -> list[PlannedJob]:
    """Reference first, then each variant, each over every task."""
    jobs = [PlannedJob(REFERENCE_NAME, VariantDef(spec.reference), t, spec.prompt_setup(t)) for t in spec.tasks]
    for v in spec.variants:
        jobs += [PlannedJob(name, spec.definition(v, recipe), t, spec.prompt_setup(t))
                 for name, recipe in v.builds() for t in spec.tasks]
    return jobs


def check_plan(spec: StudySpec) -> None:
    """Fail before any work on what can be checked: task names, recipes, data files, templates, tasks whose data
    cannot be reached (hub tasks offline), and whether the report's bootstrap fits in memory for each task."""
    for t in spec.tasks:
        task = get_task(t.name, t.template, t.include, t.trust_task_code)
        if task.code:  # its items come from code: never run while planning, and only with consent when scoring
            if not t.trust_task_code:
                raise code_consent_error(t.name.removeprefix("lm-eval:"), list(task.code))
            continue
        setup = spec.prompt_setup(t)
        for what, path in (("data file", t.data_file), ("few-shot file", t.fewshot_file)):
            if path and not Path(path).is_file():
                raise QuantcalError(f"task {t.name}: {what} {path} not found")
        try:
            n_items = len(load_items(task, t.data_file, t.limit, replace(setup, apply_chat_template=False,
                                                                          fewshot_as_multiturn=False), skip=t.skip))
        except QuantcalError as exc:
            unreachable = t.data_file is None and task.generate is None  # the hub, offline: every job would fail
            if unreachable or task.loader is not None or setup.num_fewshot:  # so would every job of these
                raise QuantcalError(f"task {t.name}: {exc}") from None
            continue  # a bad row in a local file fails its own jobs, reported with the others
        try:
            check_resamples(spec.bootstrap.resamples, n_items)
        except QuantcalError as exc:
            raise QuantcalError(f"task {t.name}: {exc}") from None
    for g in spec.generation:  # free-text tasks: their items (and few-shot pools) load now, or the study stops
        from quantcal.tasks.free_text import load_free_text

        for what, path in (("data file", g.data_file), ("few-shot file", g.fewshot_file)):
            if path and not Path(path).is_file():
                raise QuantcalError(f"generation task {g.name}: {what} {path} not found")
        try:
            if g.name.startswith("lm-eval:") and not g.trust_task_code:
                from quantcal.tasks.lm_eval_tasks import task_code

                code = task_code(g.name.removeprefix("lm-eval:"), g.include)
                if code:  # never run while planning
                    raise code_consent_error(g.name.removeprefix("lm-eval:"), [str(f) for f in code])
            n_items = len(load_free_text(g.name, g.data_file, g.limit, g.num_fewshot, g.fewshot_file, g.fewshot_seed,
                                         g.skip, g.include, g.trust_task_code)[1])
            check_resamples(spec.bootstrap.resamples, n_items)
        except QuantcalError as exc:
            raise QuantcalError(f"generation task {g.name}: {exc}") from None
    models = {spec.reference}
    for v in spec.variants:
        try:
            definition = spec.definition(v, v.builds()[0][1])  # the first build's
            definition.check(adapter_exists=v.finetune is None)  # a finetune block's adapter comes later
            if v.finetune is not None:
                _check_training_source(v.finetune.data, v.finetune.data_file)
            models.add(definition.model or definition.base_spec())
        except QuantcalError as exc:
            raise QuantcalError(f"variant {v.name}: {exc}") from None
    first_jobs = {j.variant: j for j in reversed(plan(spec))}
    if spec.tasks:
        _check_forbidden(spec, [first_jobs[v.builds()[0][0]] for v in spec.variants])
    for path in spec.sensitivity:  # shown in the report: missing now would fail after all the scoring
        try:
            read_sensitivity(path)
        except QuantcalError as exc:
            raise QuantcalError(f"`sensitivity`: {exc}") from None
    for model in models:
        source = resolve_source(model)
        if spec.apply_chat_template:
            require_chat_template(load_tokenizer(source), model)


def _check_forbidden(spec: StudySpec, jobs: list[PlannedJob]) -> None:
    """A variant tuned on some items (a mixed recipe's ranking) may not be evaluated on them: refused now."""
    for job in jobs:
        recipe = job.definition.recipe_spec
        hook = FAMILIES[recipe.family].forbidden if recipe is not None else None
        if hook is None or recipe is None:
            continue
        hashes, reason = hook(dict(recipe.params))
        for t in spec.tasks:
            task = get_task(t.name, t.template, t.include, t.trust_task_code)
            if task.loader is not None:
                continue  # lm-eval's items are built at scoring time, and checked there
            problem = forbidden_overlap(load_items(task, t.data_file, t.limit, skip=t.skip), hashes, reason)
            if problem:
                raise QuantcalError(f"variant {job.variant} · task {t.name}: {problem}")


def _check_training_source(data: str, data_file: Optional[str]) -> None:
    if data.startswith("task:"):
        get_task(data[5:])
    elif not data.startswith("hub:") and not Path(data).is_file():
        raise QuantcalError(f"finetune data {data} not found (expected task:NAME, hub:ORG/NAME or a .jsonl file)")
    if data_file and not Path(data_file).is_file():
        raise QuantcalError(f"finetune data file {data_file} not found")


def study_items(spec: StudySpec) -> list[Any]:
    """Every item the study evaluates (what fine-tuning must hold out)."""
    return [it for t in spec.tasks
            for it in load_items(get_task(t.name, t.template, t.include, t.trust_task_code), t.data_file, t.limit, skip=t.skip)]


def train_adapters(spec: StudySpec, progress: Callable[[int, int], Any] | None = None,
                   say: Callable[[str], None] = lambda message: None) -> list[JobOutcome]:
    """Train every finetune-block adapter that is not trained yet (resuming an interrupted one), holding out every
    item the study evaluates; returns an outcome per variant that had to train (failed ones are reported)."""
    outcomes = []
    held = None
    done: set[str] = set()
    for v in spec.variants:
        f, out = v.finetune, spec.adapter_of(v)
        if f is None or out is None or out in done:
            continue
        done.add(out)
        start = time.perf_counter()
        try:
            if held is None:
                held = study_items(spec)
            source = resolve_source(v.model or spec.reference)
            examples = load_examples(f.data, f.data_file, f.skip, f.take, load_tokenizer(source))
            check_disjoint(examples, held)
            run = FinetuneRun(source, BaseConfig(f.method, f.base_form),
                              LoraSettings(f.r, f.alpha, f.dropout, tuple(f.target_modules)),
                              TrainSettings(steps=None if f.epochs else f.steps, epochs=f.epochs, lr=f.lr,
                                            batch_size=f.batch_size, grad_accum=f.grad_accum, max_length=f.max_length,
                                            seed=f.seed, optim=f.optim),
                              {"source": f.data, "data_file": f.data_file, "skip": f.skip, "take": f.take,
                               "held_out": f"study {spec.name}: {', '.join(t.name for t in spec.tasks)}", "n_held_out": len(held)},
                              spec.device)
            if not (Path(out) / "adapter" / "adapter_config.json").is_file():
                say(f"fine-tuning {v.name} ({f.method}, {f.steps or f.epochs} {'steps' if f.steps else 'epochs'}) into {out}")
            meta = finetune(run, examples, Path(out), resume=Path(out).exists(), progress=progress, say=say)
            say(f"  {v.name}: train loss {meta['first_train_loss']:.4f} -> {meta['final_train_loss']:.4f}, "
                f"eval loss {meta['final_eval_loss']}")
            outcomes.append(JobOutcome(v.name, "finetune", True, seconds=time.perf_counter() - start))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed training must not stop the other jobs; the reason is kept
            outcomes.append(JobOutcome.failed(v.name, "finetune", exc, time.perf_counter() - start))
            say(f"  failed: {outcomes[-1].error}")
    return outcomes


def scoring_options(spec: StudySpec) -> ScoringOptions:
    """How a study's jobs score, the same for every executor."""
    return ScoringOptions(batch_size=spec.batch_size, max_batch_tokens=spec.max_batch_tokens)


def load_options(spec: StudySpec) -> LoadOptions:
    """How a study's variants load, the same for every executor."""
    return LoadOptions(dtype=spec.dtype, device=spec.device, backend=spec.backend)


def run_study(
    spec: StudySpec,
    store: Store,
    progress: Callable[[str, int], Any] | None = None,
    say: Callable[[str], None] = lambda message: None,
    phase: Phase | None = None,
) -> list[JobOutcome]:
    """Run every planned job; returns one outcome per job (``ok=False`` with the reason for a failed one)."""
    options, load = scoring_options(spec), load_options(spec)
    jobs = plan(spec)
    outcomes: list[JobOutcome] = []
    prepared: dict[str, PreparedVariant] = {}  # resolved (files hashed) once per variant
    for number, job in enumerate(jobs, start=1):
        say(f"[{number}/{len(jobs)}] {job.variant} · {job.label}")
        start = time.perf_counter()
        try:
            if job.variant not in prepared:
                for previous in prepared.values():  # one model in memory at a time
                    previous.holder.release()
                prepared.clear()
                prepared[job.variant] = prepare(job.definition, load, say, phase=phase)
            variant = prepared[job.variant]
            result = run_job(store, job.job(variant, spec.dtype), options, variant.holder, progress, say)
            outcomes.append(JobOutcome.of(result, job.variant, job.label, time.perf_counter() - start))
            say("  " + result.summary(f"{job.variant} · {job.label}"))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed job must not stop the study; the reason is kept
            outcomes.append(JobOutcome.failed(job.variant, job.label, exc, time.perf_counter() - start))
        if not outcomes[-1].ok:
            say(f"  failed: {outcomes[-1].error}")
    for previous in prepared.values():
        previous.holder.release()
    return outcomes
