"""A study's free-text tasks (its ``generation`` list): the reference and every variant answer each task's items
greedily (:func:`quantcal.study.generation_jobs.run_generation_job`: stored as they finish, resumed), with P(True)
and sampled answers when the task asks; then every answer is scored (lm-eval's filters and exact match), each
confidence measure's calibration gets its bootstrap interval, and each variant is paired with the reference on the
same items (differences with intervals, changed answers, right -> wrong flips). The numbers go to the report's
"Generated answers" page (:mod:`quantcal.report.generation_page`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from quantcal.store.database import Store
from quantcal.study.generation_jobs import (ExtraMeasures, answer_metrics, compare_answers, generation_config,
                                            measure_extras, run_generation_job, scored_answers)
from quantcal.study.runner import JobOutcome, load_options
from quantcal.study.spec import REFERENCE_NAME, BootstrapSpec, GenerationTaskSpec, StudySpec
from quantcal.tasks.free_text import default_shots, load_free_text
from quantcal.sources.models import load_tokenizer, resolve_source
from quantcal.tasks.generation_tasks import GenerationTask
from quantcal.tasks.prompts import PromptSetup, task_label as prompt_label
from quantcal.variants.definition import Phase, VariantDef, prepare


@dataclass(frozen=True)
class AnsweredRun:
    """One (variant, free-text task) job's stored run and what scores it."""

    variant: str
    label: str  # the task's name in the store (with its shot count)
    task: GenerationTask
    run_id: int
    item_ids: tuple[str, ...]
    extras: ExtraMeasures
    questions: tuple[str, ...] = ()  # each item's question, as item_ids orders them (the report's explorer)


@dataclass(frozen=True)
class PlannedGeneration:
    """One (model, free-text task) job of a study's plan."""

    variant: str
    definition: VariantDef
    task: GenerationTaskSpec
    chat: bool = False  # the study's apply_chat_template

    @property
    def label(self) -> str:
        return task_label(self.task, self.chat)


def plan_generation(spec: StudySpec) -> list[PlannedGeneration]:
    """The study's free-text jobs: the reference's, then each variant build's, each over every free-text task."""
    models = [(REFERENCE_NAME, VariantDef(spec.reference))]
    models += [(name, spec.definition(v, recipe)) for v in spec.variants for name, recipe in v.builds()]
    return [PlannedGeneration(name, definition, g, spec.apply_chat_template)
            for name, definition in models for g in spec.generation]


def task_label(g: GenerationTaskSpec, chat: bool = False) -> str:
    """A free-text task's name in the store: ``gsm8k[5-shot]``, ``gsm8k[5-shot chat]`` (as
    :func:`quantcal.api.evaluate_generation` names it)."""
    shots = default_shots(g.name, g.include) if g.num_fewshot is None else g.num_fewshot
    return prompt_label(g.name, PromptSetup(shots, g.fewshot_seed, None, chat))


def run_generation_tasks(spec: StudySpec, store: Store, progress: Callable[[str, int], Any] | None = None,
                         say: Callable[[str], None] = lambda m: None,
                         phase: Phase | None = None) -> tuple[list[JobOutcome], list[AnsweredRun]]:
    """Every (model, free-text task) job of the study, reference first; a failed job is recorded and the others go
    on (as :func:`quantcal.study.runner.run_study`)."""
    from quantcal.study.runner import failure_reason

    # under the study's chat template every model answers the reference's prompts (its tokenizer's template)
    tokenizer = load_tokenizer(resolve_source(spec.reference)) if spec.apply_chat_template else None
    loaded = {g.name: load_free_text(g.name, g.data_file, g.limit, g.num_fewshot, g.fewshot_file, g.fewshot_seed,
                                     g.skip, g.include, g.trust_task_code, tokenizer, spec.apply_chat_template, say=say)
              for g in spec.generation}
    items = {name: found[1] for name, found in loaded.items()}
    outcomes: list[JobOutcome] = []
    runs: list[AnsweredRun] = []
    jobs = plan_generation(spec)
    for name in dict.fromkeys(j.variant for j in jobs):  # one model loaded at a time
        prepared = None
        for job in (j for j in jobs if j.variant == name):
            g, label, task = job.task, job.label, loaded[job.task.name][0]
            say(f"{name} · {label} (free text)")
            start = time.perf_counter()
            try:
                prepared = prepared or prepare(job.definition, load_options(spec), say, phase=phase)
                cap = g.max_gen_toks or task.max_gen_toks
                config = generation_config(prepared.source, task, items[g.name], prepared.config, cap, spec.dtype, None)
                result = run_generation_job(store, name, label, config, items[g.name], prepared.holder, task.until, cap,
                                            g.batch_size, None, progress, say)
                extras = ExtraMeasures(g.p_true, g.samples, g.temperature, g.sample_seed)
                measure_extras(store, result.run_id, task, items[g.name], prepared.holder, extras, cap, g.batch_size, say)
                asked = {it.id: it.question for it in items[g.name]}
                runs.append(AnsweredRun(name, label, task, result.run_id, tuple(result.item_ids), extras,
                                        tuple(asked.get(i, "") for i in result.item_ids)))
                outcomes.append(JobOutcome(name, label, True, len(result.item_ids), result.n_generated_now, 0,
                                           time.perf_counter() - start, item_ids=list(result.item_ids)))
                say(f"  {name} · {label}: {result.n_generated_now} answers generated in {result.seconds:.1f} s")
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed job must not stop the study; the reason is kept
                outcomes.append(JobOutcome.failed(name, label, exc, time.perf_counter() - start))
                say(f"  failed: {failure_reason(exc)}")
        if prepared is not None:
            prepared.holder.release()
    return outcomes, runs


def stored_answered_runs(store: Store, spec: StudySpec | None = None,
                         planned: dict[str, list[str]] | None = None) -> list[AnsweredRun]:
    """The store's current free-text runs as the report scores them (:func:`quantcal.api.rebuild_report`): each
    run's task from its recorded definition, its items (those ``planned`` for its label, else every stored one),
    P(True) and sampled answers as the study asked (``spec``) or, without one, as the store holds them. The
    question is not stored: the explorer shows the end of each prompt instead."""
    from quantcal.tasks.free_text import scoring_task

    asked = ({task_label(g, spec.apply_chat_template): ExtraMeasures(g.p_true, g.samples, g.temperature,
                                                                     g.sample_seed) for g in spec.generation}
             if spec is not None else {})
    out = []
    for run in store.current_runs():
        if run.config.get("kind") != "generate":
            continue
        wanted = set((planned or {}).get(run.task) or ()) or None
        records = [r for r in store.generations(run.run_id) if wanted is None or r["item_id"] in wanted]
        if not records:
            continue
        extras = asked.get(run.task) or ExtraMeasures.held(store.generation_extra_keys(run.run_id))
        out.append(AnsweredRun(run.variant, run.task, scoring_task(run.config), run.run_id,
                               tuple(r["item_id"] for r in records), extras,
                               tuple(prompt_end(r["prompt"]) for r in records)))
    return out


def prompt_end(prompt: str, chars: int = 400) -> str:
    """The last ``chars`` characters of a prompt (where its question is), marked as cut when it is longer."""
    return prompt if len(prompt) <= chars else "…" + prompt[-chars:]


def generation_results(store: Store, runs: list[AnsweredRun], bootstrap: BootstrapSpec,
                       reference: str = REFERENCE_NAME) -> tuple[dict[str, Any], list[dict]]:
    """Per task label: each model's accuracy and every confidence measure's metrics with intervals, and each
    variant's paired differences from ``reference``; and every scored answer (a row per model and item)."""
    b = bootstrap
    tasks: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for label in dict.fromkeys(r.label for r in runs):
        block: dict[str, Any] = {"variants": {}, "paired": {}}
        answers = {}
        for run in (r for r in runs if r.label == label):
            scored = scored_answers(store, run.run_id, run.task, run.item_ids, extras=run.extras)
            answers[run.variant] = scored
            metrics = answer_metrics(scored, b.resamples, b.seed, b.level)
            block["task"], block["filter"] = run.task.name, scored[0]["filter"]
            block["variants"][run.variant] = {
                "n": len(scored), "acc": sum(a["correct"] for a in scored) / len(scored),
                "metrics": {c: {m: asdict(i) for m, i in by.items()} for c, by in metrics.items()}}
            asked = dict(zip(run.item_ids, run.questions))
            rows += [{"variant": run.variant, "task": label, **a, "question": asked.get(a["item_id"], "")}
                     for a in scored]
        ref_answers = answers.get(reference)
        if ref_answers is not None:  # reference first
            block["variants"] = {reference: block["variants"][reference],
                                 **{k: v for k, v in block["variants"].items() if k != reference}}
        for name, scored in answers.items():
            if name == reference or ref_answers is None:
                continue
            found = compare_answers(ref_answers, scored, b.resamples, b.seed, b.level)
            found["differences"] = {c: {m: asdict(i) for m, i in by.items()} for c, by in found["differences"].items()}
            block["paired"][name] = found
        tasks[label] = block
    return {"tasks": tasks, "reference": reference, "level": b.level}, rows
