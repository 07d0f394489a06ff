"""quantcal from Python: the functions the CLI calls, for notebooks and scripts.

Every function takes plain values (names, paths, dicts), returns a typed record, and raises
:class:`~quantcal.errors.QuantcalError` with one readable line for anything the caller can fix. Progress goes to
two optional callbacks: ``progress(description, total)`` returns a tqdm-like bar (``update(n)``, ``close()``) and
``say(message)`` takes a line of news (building a variant, a failed job). Bars default to ``"auto"`` (tqdm.auto: a
widget in a notebook; ``progress=None`` turns them off), news to silence. Results print compactly and render as
tables in a notebook (``_repr_html_``).

    >>> import quantcal
    >>> r = quantcal.evaluate("smollm2-135m-instruct", ["arithmetic"], limit=20)   # doctest: +SKIP
    >>> r.tasks["arithmetic"].acc                                                     # doctest: +SKIP
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Mapping, Optional, Sequence, Union

from quantcal.analysis import Comparison
from quantcal.study.deployment import ExportedCheckpoint, export_checkpoint, export_study
from quantcal.checkpoints.formats import ExportedModel, is_packed_native
from quantcal.checkpoints.model_export import export_variant, native_checkpoint
from quantcal.errors import QuantcalError
from quantcal.faults import check_writable_dir, write_text_atomic
from quantcal.study.jobs import Job, ScoringOptions, require_positive, run_job
from quantcal.finetune.base import BaseConfig
from quantcal.finetune.data import check_disjoint, load_examples
from quantcal.finetune.train import FinetuneRun, LoraSettings, TrainSettings, finetune as run_finetune
from quantcal.tasks.items import Item
from quantcal.store.lm_eval_import import import_samples, samples_files
from quantcal.metrics import DEFAULT_METRICS, Interval, get_metric
from quantcal.metrics.bootstrap import check_resamples
from quantcal.sources.cache import cache_root, remove_entry
from quantcal.sources.manifest import EntryCheck, check_entries
from quantcal.sources.models import DEFAULT_MODEL, check_device, load_tokenizer, resolve_dtype, resolve_source
from quantcal.analysis.predictions import normalization_problem, predictions, task_summary
from quantcal.tasks.prompts import DEFAULT_FEWSHOT_SEED, PromptSetup, task_label
from quantcal.tasks.lm_eval_tasks import (PREFIX, GroupSpec, code_consent_error, expand_task_names, group_score,
                                         is_lm_eval)
from quantcal.analysis.records import export_store, item_frame
from quantcal.recipes import parse_recipe
from quantcal.recipes.build import build_variant, variant_meta
from quantcal.report.collect import ReportSettings
from quantcal.report.write import WrittenReport, write_report
from quantcal.study.sensitivity import SensitivityResult, load_sensitivity, merge_sensitivity, run_sensitivity
from quantcal.store.database import Store, open_store
from quantcal.study.runner import (JobOutcome, PlannedJob, check_plan, plan, planned_items, run_study as run_jobs,
                                   study_items, train_adapters)
from quantcal.study.spec import REFERENCE_NAME, BootstrapSpec, StudySpec, default_study, load_study, parse_study
from quantcal.analysis.summary import align, paired_analysis, run_metrics, run_predictions
from quantcal.tasks import get_task, load_items as task_items
from quantcal.variants.definition import LoadOptions, Phase, VariantDef, prepare

if TYPE_CHECKING:  # pandas is imported where a frame is built, not at import (quantcal --help stays quick)
    import pandas as pd

Progress = Callable[[str, int], Any]
#: ``"auto"`` (the default): tqdm.auto bars (a widget in a notebook, text elsewhere) and the loading bars of
#: transformers and the hub silenced while they show; ``None``: no bars; or a callback of your own.
ProgressArg = Union[Progress, Literal["auto"], None]
Say = Callable[[str], None]


def _tqdm_bar(description: str, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="item")


def _tqdm_steps(total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="fine-tuning", unit="step")


@contextmanager
def _progress_bars(progress: Any) -> Iterator[Optional[Progress]]:
    """The item-bar callback for ``progress``; with ``"auto"`` also transformers' and the hub's own loading bars
    off for the block (restored after), so one bar per job is what a notebook shows."""
    if progress != "auto":
        yield progress
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    hub_off, hf_on = are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield _tqdm_bar
    finally:
        if not hub_off:
            enable_progress_bars()
        if hf_on:
            hf_logging.enable_progress_bar()
StudyLike = Union[str, Path, Mapping[str, Any], StudySpec, None]


def _silent(message: str) -> None:
    """The default ``say``: no news."""


# evaluate --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskResult:
    """One task of an :func:`evaluate` call: lm-eval's headline numbers on the items this call asked for."""

    task: str
    n: int  # items scored (of this call's items)
    acc: float  # argmax of the raw log-likelihoods (TruthfulQA MC2: the mean true-answer mass)
    acc_norm: Optional[float]  # argmax per character, lm-eval's acc_norm (None for MC2)
    n_errors: int  # items that could not be scored (see the store)
    n_scored_now: int  # items scored by this call (the rest were already in the store)
    seconds: float
    run_id: int  # 0 for a group
    members: tuple[str, ...] = ()  # a group's tasks (lm-eval groups such as lm-eval:mmlu), aggregated as lm-eval does
    #: Accuracy and calibration of this call's items with 95% bootstrap intervals (:data:`EVAL_METRICS`; empty for
    #: a group and for TruthfulQA MC2, whose acc is not an argmax).
    metrics: Mapping[str, Interval] = field(default_factory=dict)

    def __repr__(self) -> str:
        """``TaskResult('piqa', n=300, acc 0.623 [0.567, 0.677], ece 0.071 [0.041, 0.120], ...)``."""
        shown = [f"{k} {v}" for k, v in self.metrics.items()] or [f"acc {self.acc:.3f}"]
        return f"TaskResult({self.task!r}, n={self.n}, " + ", ".join(shown) + ")"


def _html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A small HTML table for a notebook (every cell escaped)."""
    from html import escape

    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


#: What :func:`evaluate` reports per task beside lm-eval's acc and acc_norm: calibration first.
EVAL_METRICS = ("acc", "ece", "brier", "nll")


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` scored: per task numbers, and where the per-choice log-likelihoods are stored."""

    variant: str  # the name in the store
    model: str  # the base model as given (bundled name, file, directory or hub id)
    store: Path
    tasks: dict[str, TaskResult]
    item_ids: dict[str, tuple[str, ...]] = field(default_factory=dict)  # each task's items in this call

    def items(self, normalization: str = "none") -> "pd.DataFrame":
        """The per-item records of this call's items (see :func:`load_items`; the store may hold more of the same
        run, from a larger ``limit`` or another ``skip``)."""
        frame = load_items(self.store, normalization)
        mine = frame[(frame["variant"] == self.variant) & frame["task"].isin(list(self.tasks))]
        runs = [t.run_id for t in self.tasks.values() if t.run_id]  # a store may hold other runs of the same names
        if runs:
            mine = mine[mine["run_id"].isin(runs)]
        if self.item_ids:
            wanted = {(task, item) for task, ids in self.item_ids.items() for item in ids}
            mine = mine[[(t, i) in wanted for t, i in zip(mine["task"], mine["item_id"])]]
        return mine.reset_index(drop=True)

    def __repr__(self) -> str:
        """One line per task (the item ids stay in ``item_ids``, not in the repr)."""
        tasks = "".join(f"\n  {t!r}" for t in self.tasks.values())
        return f"EvalResult(variant={self.variant!r}, model={self.model!r}, store={str(self.store)!r}){tasks}"

    def _repr_html_(self) -> str:
        """A notebook's view: a row per task with acc, acc_norm and each metric's interval."""
        names = list(dict.fromkeys(m for t in self.tasks.values() for m in t.metrics))
        rows = [[name, t.n, f"{t.acc:.4f}", f"{t.acc_norm:.4f}" if t.acc_norm is not None else "—",
                 *(str(t.metrics[m]) if m in t.metrics else "—" for m in names)] for name, t in self.tasks.items()]
        title = f"<p><b>{self.variant}</b> · store <code>{self.store}</code></p>"
        return title + _html_table(["task", "n", "acc", "acc_norm", *(f"{m} [95%]" for m in names)], rows)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "variant": self.variant, "store": str(self.store),
                "results": {name: {"n": t.n, "acc": t.acc, **({"acc_norm": t.acc_norm} if t.acc_norm is not None else {}),
                                   **({"metrics": {k: v.to_json() for k, v in t.metrics.items()}} if t.metrics else {})}
                            for name, t in self.tasks.items()}}


@contextmanager
def _released(holder: Any) -> Iterator[None]:
    """Release the holder's model when the block ends (an engine's memory is freed before the caller goes on)."""
    try:
        yield
    finally:
        holder.release()


def default_store(variant: str) -> Path:
    """Where :func:`evaluate` writes unless told: ``quantcal-out/<variant>.sqlite`` (``/`` becomes ``__``)."""
    return Path("quantcal-out") / f"{variant.replace('/', '__')}.sqlite"


def evaluate(
    model: Optional[str] = None,
    tasks: Union[str, Sequence[str]] = ("arithmetic",),
    *,
    recipe: Optional[str] = None,
    adapter: Union[str, Path, None] = None,
    deploy: Optional[str] = None,
    name: Optional[str] = None,
    store: Union[str, Path, None] = None,
    data_file: Union[str, Path, None] = None,
    template: Optional[str] = None,
    limit: Optional[int] = None,
    skip: int = 0,
    lm_eval_include: Union[str, Path, None] = None,
    trust_task_code: bool = False,
    num_fewshot: Optional[int] = None,
    fewshot_file: Union[str, Path, None] = None,
    fewshot_seed: int = DEFAULT_FEWSHOT_SEED,
    apply_chat_template: bool = False,
    system_instruction: Optional[str] = None,
    fewshot_as_multiturn: Optional[bool] = None,
    batch_size: int = 64,
    max_batch_tokens: Union[int, None, str] = "auto",
    max_length: Optional[int] = None,
    device: str = "cpu",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    backend: str = "hf",
    progress: ProgressArg = "auto",
    say: Say = _silent,
    phase: Optional[Phase] = None,
) -> EvalResult:
    """Score a model (or a variant of it) on tasks: per-choice log-likelihoods into a store, then acc and acc_norm.

    Args:
        model: a bundled name (``smollm2-135m-instruct``, ``gemma3-270m``), a ``.gguf`` file, a local checkpoint
            directory or a hub id. Default: the bundled SmolLM2, or the adapter's base when ``adapter`` is given.
        tasks: task names (``quantcal tasks`` lists them), a list or a comma-separated string; ``lm-eval:NAME`` for
            any multiple-choice task of lm-evaluation-harness's registry (a group expands to its tasks, each its own
            run, and the group's score is aggregated as lm-eval does).
        recipe: compress the model first (``rtn:bits=4,group_size=64``, ``gptq:bits=4``, ``gguf:q4_0`` ...; cached).
        adapter: a LoRA adapter folder (``quantcal finetune`` output or any peft adapter).
        deploy: how the adapter is served: ``nf4`` (default), ``nf4-native`` or ``merged`` (default with a recipe).
        name: the variant's name in the store (default: model, adapter form and recipe, e.g. ``smollm2-135m-instruct/rtn-w4-g64``).
        store: the SQLite store (default :func:`default_store`); what it already holds is not scored again.
        data_file: a local copy of the (single) task's data in hub schema.
        template: the prompt template of the ``custom`` task, e.g. ``"Q: {question}\\nA:"``.
        lm_eval_include: a folder of your own lm-eval task YAMLs (lm-eval's ``--include_path``).
        trust_task_code: run the Python hooks (``!function``) that the include folder's YAMLs name (lm-eval imports
            them to load the task); without it such a task is refused before anything runs.
        limit: score only the first ``limit`` items of each task.
        skip: leave out the first ``skip`` items of each task (then ``limit`` more); items keep their ids and
            few-shot examples, so a file can be split into a ranking part and an evaluation part.
        num_fewshot: examples before each question, drawn as lm-eval draws them (the task's few-shot split, its
            sampler and ``fewshot_seed``; for a local data file, the file minus the item), or from ``fewshot_file``.
            Default: the task's own, as lm-eval's without ``--num_fewshot``: 0 for the built-in tasks, the YAML's
            ``num_fewshot`` (else 0) for lm-eval tasks.
        apply_chat_template, system_instruction, fewshot_as_multiturn: the prompt through the tokenizer's chat
            template (lm-eval's semantics), with a system instruction, few-shot examples as separate turns (default:
            on with a chat template, as lm-eval).
        batch_size, max_batch_tokens: choice rows and padded tokens per forward pass (``None``: no token cap;
            ``"auto"``: 2048 on CPU, from the free memory on CUDA).
        max_length: the model window for left truncation (default: from the model config, as lm-eval).
        device, dtype, trust_remote_code: how the model is loaded.
        backend: ``hf`` (transformers, quantcal's scorer) or ``vllm`` (vLLM's prompt log-probabilities with prefix
            caching; :mod:`quantcal.engines.vllm`); a vllm run is a run of its own in the store.
        progress: item bars: ``"auto"`` (tqdm.auto, third-party loading bars silenced meanwhile), ``None`` (none) or
            ``progress(description, total)`` returning a tqdm-like bar.
        say, phase: news lines, and a context for loading/building (a spinner).

    Returns:
        An :class:`EvalResult`; ``result.tasks["arithmetic"].acc`` and ``result.items()`` for per-item records.

    Example:
        >>> r = evaluate("smollm2-135m-instruct", ["arithmetic"], limit=20)   # doctest: +SKIP
        >>> round(r.tasks["arithmetic"].acc, 2)                                # doctest: +SKIP
    """
    task_names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not task_names:
        raise QuantcalError("`tasks` is empty")
    if limit is not None:
        require_positive(limit, "limit")
    if data_file is not None and len(task_names) != 1:
        raise QuantcalError("`data_file` goes with exactly one task")
    if template is not None and "custom" not in task_names:
        raise QuantcalError("`template` applies to the custom task only")
    include = str(lm_eval_include) if lm_eval_include is not None else None
    if include is not None and not Path(include).is_dir():
        raise QuantcalError(f"`lm_eval_include`: {include} is not a folder")
    if any(is_lm_eval(t) for t in task_names):
        if data_file is not None or fewshot_file is not None:
            raise QuantcalError("lm-eval tasks read their data and few-shot examples as their YAML says; "
                                "`data_file` and `fewshot_file` are for the built-in tasks")
    elif include is not None:
        raise QuantcalError("`lm_eval_include` goes with lm-eval:NAME tasks")
    task_names, groups = expand_task_names(task_names, include)
    task_list = [get_task(t, template if t == "custom" else None, include if is_lm_eval(t) else None, trust_task_code)
                 for t in task_names]
    for task in task_list:
        if task.code and not trust_task_code:  # refused before any model loads or any code runs
            raise code_consent_error(task.name.removeprefix(PREFIX), list(task.code))
    if data_file is not None and not Path(data_file).is_file():
        raise QuantcalError(f"{data_file}: file not found")
    if fewshot_file is not None and not Path(fewshot_file).is_file():
        raise QuantcalError(f"{fewshot_file}: file not found")
    setup = PromptSetup(num_fewshot or 0, fewshot_seed, str(fewshot_file) if fewshot_file is not None else None,
                        apply_chat_template, system_instruction, fewshot_as_multiturn)
    setups = {t.name: setup if num_fewshot is not None else replace(setup, num_fewshot=t.default_fewshot)
              for t in task_list}
    options = ScoringOptions(batch_size, max_batch_tokens, max_length)
    defn = VariantDef(model or (None if adapter is not None else DEFAULT_MODEL), recipe,
                      str(adapter) if adapter is not None else None, deploy)
    resolve_dtype(dtype, device)  # a device or dtype this machine cannot use: one line, before anything loads
    with _progress_bars(progress) as bars:
        variant = prepare(defn, LoadOptions(dtype, device, trust_remote_code, backend), say, phase=phase)
        variant_name = name or variant.default_name
        forbidden = variant.forbidden()
        store_path = Path(store) if store is not None else default_store(variant_name)
        results: dict[str, TaskResult] = {}
        labels: dict[str, str] = {}  # task name -> its name in the store (with its prompt setup)
        item_ids: dict[str, tuple[str, ...]] = {}
        with open_store(store_path) as db, _released(variant.holder):
            for task in task_list:
                job = Job(variant_name, variant.source, task, str(data_file) if data_file else None, limit,
                          template if task.name == "custom" else None, variant.config, dtype, setups[task.name], skip,
                          *forbidden)
                labels[task.name] = job.label
                outcome = run_job(db, job, options, variant.holder, bars, say)
                say(outcome.summary(f"{variant_name} · {job.label}"))
                wanted = set(outcome.item_ids)  # this call's items (a store may hold more, from a larger limit)
                item_ids[job.label] = tuple(outcome.item_ids)
                scored = [s for s in db.scored_items(outcome.run_id) if s.item_id in wanted]
                if not scored:
                    raise QuantcalError(f"{job.label}: no item could be scored")
                summary = task_summary(scored, task.kind)
                metrics = run_metrics(predictions(scored, "none"), EVAL_METRICS) if task.kind == "mc" else {}
                results[job.label] = TaskResult(job.label, int(summary["n"]), summary["acc"], summary.get("acc_norm"),
                                                outcome.n_errors, outcome.n_scored_now, outcome.seconds, outcome.run_id,
                                                metrics=metrics)
        for group in groups.values():
            group_setup = setups[PREFIX + group.tasks[0]]
            results[task_label(PREFIX + group.name, group_setup)] = _group_result(group, results, labels, group_setup)
    return EvalResult(variant_name, variant.source.spec, store_path, results, item_ids)


@dataclass(frozen=True)
class GenerationResult:
    """What :func:`evaluate_generation` generated and scored: exact match, and per confidence measure its
    calibration metrics with 95% bootstrap intervals; the generations are in the store."""

    variant: str
    model: str
    store: Path
    task: str
    n: int
    acc: float  # exact match under the task's first filter (lm-eval's metric)
    filter: str
    metrics: Mapping[str, Mapping[str, Interval]]  # confidence measure -> metric -> interval
    n_generated_now: int
    seconds: float
    run_id: int
    item_ids: tuple[str, ...] = ()
    extras: Any = None  # the ExtraMeasures asked for (P(True), samples)
    #: an lm-eval group's tasks, each its own result; the group's ``acc`` aggregates theirs as lm-eval does and its
    #: ``metrics`` are over every answer of the group (``run_id`` 0)
    members: tuple["GenerationResult", ...] = ()

    def __repr__(self) -> str:
        lines = [f"  {conf}: " + ", ".join(f"{m} {iv}" for m, iv in ms.items() if m in ("ece", "brier", "auroc"))
                 for conf, ms in self.metrics.items()]
        return (f"GenerationResult({self.task!r}, n={self.n}, exact_match {self.acc:.3f} ({self.filter}), "
                f"variant={self.variant!r})\n" + "\n".join(lines))

    def items(self) -> "pd.DataFrame":
        """Per item: its generation, the filtered answer, correctness and every confidence."""
        import pandas as pd

        from quantcal.study.generation_jobs import ExtraMeasures, scored_answers
        from quantcal.tasks.free_text import scoring_task

        if self.members:
            return pd.concat([m.items() for m in self.members], ignore_index=True)
        with open_store(self.store, readonly=True) as db:
            run = next(r for r in db.runs() if r.run_id == self.run_id)
            answers = scored_answers(db, self.run_id, scoring_task(run.config), self.item_ids,
                                     extras=self.extras or ExtraMeasures())
        return pd.DataFrame(answers).assign(variant=self.variant, task=self.task)

    def to_json(self) -> dict[str, Any]:
        out = {"model": self.model, "variant": self.variant, "store": str(self.store), "task": self.task, "n": self.n,
               "exact_match": self.acc, "filter": self.filter,
               "confidences": {c: {m: iv.to_json() for m, iv in ms.items()} for c, ms in self.metrics.items()}}
        if self.members:
            out["tasks"] = [m.to_json() for m in self.members]
        return out


def evaluate_generation(
    model: Optional[str] = None,
    task: str = "gsm8k",
    *,
    recipe: Optional[str] = None,
    name: Optional[str] = None,
    store: Union[str, Path, None] = None,
    data_file: Union[str, Path, None] = None,
    limit: Optional[int] = None,
    skip: int = 0,
    num_fewshot: Optional[int] = None,
    fewshot_file: Union[str, Path, None] = None,
    fewshot_seed: int = 1234,
    batch_size: int = 16,
    max_new_tokens: Optional[int] = None,
    device: str = "cpu",
    dtype: str = "auto",
    resamples: int = 1000,
    p_true: bool = False,
    samples: int = 0,
    temperature: float = 1.0,
    sample_seed: int = 0,
    lm_eval_include: Union[str, Path, None] = None,
    trust_task_code: bool = False,
    apply_chat_template: bool = False,
    backend: str = "hf",
    progress: ProgressArg = "auto",
    say: Say = _silent,
    phase: Optional[Phase] = None,
) -> GenerationResult:
    """Answer a free-text task (``gsm8k``, ``triviaqa``) with greedy decoding, then score the answers as lm-eval
    does (its filters and exact match) and measure how well each confidence in an answer is calibrated
    (``conf_seq_prob``, ``conf_mean_prob``, ``conf_answer_prob``: :mod:`quantcal.analysis.generated`).

    ``num_fewshot``: examples before each question (default: the task's, lm-eval's: 5 for gsm8k), drawn from
    ``fewshot_file``, else the task's few-shot split on the hub, else the data file minus the item.
    ``max_new_tokens``: the generation cap (default: the task's ``max_gen_toks``, 256). Generations are stored as
    they finish; a second call resumes.
    ``p_true``: also ask the model whether each answer is right (``conf_p_true``, Kadavath et al. 2022);
    ``samples``: also draw that many answers per item at ``temperature`` (seeded by ``sample_seed`` and the item) and
    report their agreement with the greedy answer (``conf_consistency``). Both are stored and reused.
    ``apply_chat_template``: each prompt through the model's chat template, as lm-eval's ``--apply_chat_template``
    renders it (few-shot examples as user/assistant turns); the run's task name says ``chat``.

    ``task`` may also be an lm-eval ``generate_until`` task (``lm-eval:gsm8k``, or one of ``lm_eval_include``'s
    YAMLs; Python hooks there run only with ``trust_task_code``): lm-eval renders its prompts (few-shot,
    ``apply_chat_template``) and its config gives the stop strings, filters and exact-match options
    (:mod:`quantcal.tasks.lm_eval_generation`).

    ``backend`` ``vllm``: vLLM generates (greedy; its own seeded sampling for ``samples``) and scores the P(True)
    prompts; answers are cut and scored exactly as the HF generator's; runs of each backend are separate runs.

    An lm-eval group (or tag) of ``generate_until`` tasks (``lm-eval:bbh_zeroshot``) answers each of its tasks with
    the model loaded once (``limit`` per task); the result's ``members`` hold each task's result, its ``acc`` is the
    group's exact match as lm-eval aggregates it (by size, unless the group says otherwise) and its ``metrics`` are
    over every answer."""
    from quantcal.study.generation_jobs import (ExtraMeasures, answer_metrics, generation_config, measure_extras,
                                                run_generation_job, scored_answers)
    from quantcal.tasks.free_text import free_text_group, load_free_text
    from quantcal.tasks.lm_eval_tasks import group_score

    if limit is not None:
        require_positive(limit, "limit")
    require_positive(batch_size, "batch_size")
    if max_new_tokens is not None:
        require_positive(max_new_tokens, "max_new_tokens")
    if samples < 0:
        raise QuantcalError(f"`samples` must be 0 (off) or a number of sampled answers, got {samples}")
    if samples and not temperature > 0:
        raise QuantcalError(f"`samples` draws answers at a temperature above 0; `temperature` is {temperature} "
                            "(at 0 every sample would be the greedy answer)")
    for path in (data_file, fewshot_file):
        if path is not None and not Path(path).is_file():
            raise QuantcalError(f"{path}: file not found")
    tokenizer = load_tokenizer(resolve_source(model or DEFAULT_MODEL)) if apply_chat_template else None
    include = str(lm_eval_include) if lm_eval_include is not None else None
    group = free_text_group(task, include)
    names = group[0] if group else [task]
    loaded = [load_free_text(n, data_file, limit, num_fewshot, fewshot_file, fewshot_seed, skip, include,
                             trust_task_code, tokenizer, apply_chat_template, say) for n in names]
    resolve_dtype(dtype, device)
    defn = VariantDef(model or DEFAULT_MODEL, recipe)
    if backend not in ("hf", "vllm"):
        raise QuantcalError(f"`backend` must be hf or vllm, got {backend!r}")
    variant = prepare(defn, LoadOptions(dtype, device, backend=backend), say, phase=phase)
    variant_name = name or variant.default_name
    store_path = Path(store) if store is not None else default_store(variant_name)
    extras = ExtraMeasures(p_true, samples, temperature, sample_seed)
    results, pooled = [], []
    with _progress_bars(progress) as bars, open_store(store_path) as db, _released(variant.holder):
        for member, (spec, items, label) in zip(names, loaded):
            cap = max_new_tokens or spec.max_gen_toks
            config = generation_config(variant.source, spec, items, variant.config, cap, dtype, None)
            outcome = run_generation_job(db, variant_name, label, config, items, variant.holder, spec.until, cap,
                                         batch_size, None, bars, say)
            measure_extras(db, outcome.run_id, spec, items, variant.holder, extras, cap, batch_size, say)
            answers = scored_answers(db, outcome.run_id, spec, outcome.item_ids, extras=extras)
            say(f"{variant_name} · {label}: {outcome.n_generated_now} generated in {outcome.seconds:.1f} s; "
                f"{len(answers)} in the store")
            pooled += answers
            results.append(GenerationResult(
                variant_name, variant.source.spec, store_path, member, len(answers),
                sum(a["correct"] for a in answers) / len(answers), answers[0]["filter"],
                answer_metrics(answers, resamples), outcome.n_generated_now, outcome.seconds, outcome.run_id,
                tuple(outcome.item_ids), extras))
    if group is None:
        return results[0]
    bare = [m[len("lm-eval:"):] for m in names]
    acc = group_score(group[1], {b: (r.acc, r.n) for b, r in zip(bare, results)})
    filters = sorted({r.filter for r in results})
    return GenerationResult(variant_name, variant.source.spec, store_path, task, len(pooled), acc,
                            filters[0] if len(filters) == 1 else "each task's first", answer_metrics(pooled, resamples),
                            sum(r.n_generated_now for r in results), sum(r.seconds for r in results), 0, (), extras,
                            tuple(results))


def _group_result(group: GroupSpec, results: Mapping[str, TaskResult], labels: Mapping[str, str],
                  setup: PromptSetup) -> TaskResult:
    """A group's line: its tasks' acc (and acc_norm when all have it) aggregated as lm-eval aggregates them."""
    by_name = {t: results[labels[PREFIX + t]] for t in group.tasks}
    acc = group_score(group, {t: (m.acc, m.n) for t, m in by_name.items()})
    complete = all(m.acc_norm is not None for m in by_name.values())
    acc_norm = group_score(group, {t: (float(m.acc_norm or 0), m.n) for t, m in by_name.items()}) if complete else None
    members = list(by_name.values())
    return TaskResult(task_label(PREFIX + group.name, setup), sum(m.n for m in members), acc, acc_norm,
                      sum(m.n_errors for m in members), sum(m.n_scored_now for m in members),
                      sum(m.seconds for m in members), 0, tuple(m.task for m in members))


# studies ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyPlan:
    """A study ready to run: the validated spec (limits and output applied) and its jobs, reference first."""

    spec: StudySpec
    jobs: list[PlannedJob]

    @property
    def output(self) -> Path:
        return Path(self.spec.output)


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` did: every job's outcome and the report it wrote."""

    name: str
    output: Path  # the report directory
    store: Path  # OUTPUT/study.sqlite
    jobs: list[JobOutcome]  # adapter trainings that failed first, one per (variant, task), exports that failed
    report: WrittenReport
    checkpoints: list[ExportedCheckpoint] = field(default_factory=list)  # the study's `export`, written now

    @property
    def failures(self) -> list[JobOutcome]:
        return [j for j in self.jobs if not j.ok]

    def __repr__(self) -> str:
        """The study's name, where its report is, its jobs and tasks (the numbers: :meth:`metrics`, the page)."""
        tasks = list(self.report.results.get("tasks", {}))
        failed = f", {len(self.failures)} failed" if self.failures else ""
        return (f"StudyResult({self.name!r}, page={str(self.page)!r}, jobs={len(self.jobs)}{failed}, "
                f"tasks={tasks})")

    def _repr_html_(self) -> str:
        """A notebook's view: per task (its first normalization) each variant's n, acc, ECE and the paired
        differences to the reference, a star where the interval excludes 0; then the findings."""
        from html import escape

        def delta(iv: Optional[Mapping[str, Any]]) -> str:
            if not iv or iv.get("estimate") is None:
                return "—"
            star = "*" if iv.get("low") is not None and (iv["low"] > 0 or iv["high"] < 0) else ""
            return f"{iv['estimate']:+.4f}{star}"
        parts = [f"<p><b>{escape(self.name)}</b> · report <code>{escape(str(self.page))}</code> · {len(self.jobs)} "
                 f"job(s){', ' + str(len(self.failures)) + ' failed' if self.failures else ''}</p>"]
        for task, by_norm in self.report.results.get("tasks", {}).items():
            norm, block = next(iter(by_norm.items()))
            rows = []
            for name, v in block["variants"].items():
                m, p = v["metrics"], block["paired"].get(name, {}).get("difference", {})
                rows.append([name, v["n"], f"{m['acc']['estimate']:.4f}" if "acc" in m else "—",
                             f"{m['ece']['estimate']:.4f}" if "ece" in m else "—", delta(p.get("acc")), delta(p.get("ece"))])
            parts.append(f"<p>{escape(task)} · normalization {escape(norm)} (* interval excludes 0)</p>"
                         + _html_table(["variant", "n", "acc", "ECE", "Δacc", "ΔECE"], rows))
        lines = [line for b in self.report.results.get("findings", {}).get("blocks", []) for line in b["lines"]]
        if lines:
            parts.append("<ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>")
        return "".join(parts)

    @property
    def page(self) -> Path:
        return self.report.page

    def metrics(self, normalization: Optional[str] = None) -> "pd.DataFrame":
        """The headline table as a DataFrame: one row per (task, normalization, variant, metric), with the estimate,
        its interval, and the paired difference to the reference with its interval (NaN for the reference)."""
        import pandas as pd

        rows = []
        for task, by_norm in self.report.results["tasks"].items():
            for norm, block in by_norm.items():
                if normalization is not None and norm != normalization:
                    continue
                for variant, v in block["variants"].items():
                    paired = block["paired"].get(variant, {}).get("difference", {})
                    for metric, iv in v["metrics"].items():
                        d = paired.get(metric, {})
                        rows.append({"task": task, "normalization": norm, "variant": variant, "metric": metric,
                                     "n": v["n"], "estimate": iv["estimate"], "low": iv["low"], "high": iv["high"],
                                     "delta": d.get("estimate"), "delta_low": d.get("low"), "delta_high": d.get("high")})
        return pd.DataFrame(rows)

    def items(self, normalization: str = "none") -> "pd.DataFrame":
        """Per-item records of every variant (see :func:`load_items`)."""
        return load_items(self.store, normalization)


def study_spec(study: StudyLike = None, *, data_dir: Union[str, Path, None] = None) -> StudySpec:
    """A study from a YAML path, a dict (relative paths from the working directory), a :class:`StudySpec`, or
    ``None`` for the built-in study. ``data_dir``: the data folder (``quantcal download`` writes one): for the
    built-in study, the local benchmarks found there are added; in a study's data files it is what ``${data_dir}``
    stands for (replacing the study's own ``data_dir`` key)."""
    if data_dir is not None:
        if isinstance(study, StudySpec):
            raise QuantcalError("`data_dir` applies to a study file or dict, not to a StudySpec (its paths are resolved)")
        if not Path(data_dir).is_dir():
            raise QuantcalError(f"`data_dir` {data_dir}: not a directory")
    folder = Path(data_dir) if data_dir is not None else None
    if study is None:
        return default_study(folder)
    if isinstance(study, StudySpec):
        return study.model_copy(deep=True)
    if isinstance(study, Mapping):
        return parse_study(dict(study), Path.cwd(), "study dict", folder)
    if isinstance(study, (str, Path)):
        return load_study(Path(study), folder)
    raise QuantcalError(f"a study is a YAML path, a dict or a StudySpec, not {type(study).__name__}")


def plan_study(study: StudyLike = None, *, output: Union[str, Path, None] = None, limit: Optional[int] = None,
               data_dir: Union[str, Path, None] = None, device: Optional[str] = None,
               dtype: Optional[str] = None) -> StudyPlan:
    """Validate a study and list its jobs without running anything (``quantcal run --dry-run``).

    ``limit`` caps every task at its first N items; ``output``, ``device`` and ``dtype`` replace the study's."""
    if limit is not None:
        require_positive(limit, "limit")
    spec = study_spec(study, data_dir=data_dir)
    if limit is not None:
        spec.cap_items(limit)
    if output is not None:
        spec.output = str(output)
    if device is not None:
        spec.device = device
    if dtype is not None:
        spec.dtype = dtype
    resolve_dtype(spec.dtype, spec.device)  # the study's device and dtype, or those given: one line if unusable here
    check_plan(spec)
    return StudyPlan(spec, plan(spec))


def report_settings(spec: StudySpec) -> ReportSettings:
    """What a study's report computes: its metrics, normalizations, bootstrap and recalibration settings."""
    return ReportSettings(reference=REFERENCE_NAME, metrics=list(spec.metrics), normalizations=spec.normalizations,
                          resamples=spec.bootstrap.resamples, seed=spec.bootstrap.seed, level=spec.bootstrap.level,
                          recalibration=spec.recalibration.enabled, folds=spec.recalibration.folds,
                          confidence_bins=spec.confidence_bins, groups=spec.build_groups,
                          sensitivity=list(spec.sensitivity), task_groups=_task_groups(spec))


def _task_groups(spec: StudySpec) -> dict[str, dict[str, Any]]:
    """The study's lm-eval groups by their name in the report (``lm-eval:mmlu[5-shot]``), with their tasks' names."""
    by_name = {t.name: t for t in spec.tasks}
    out = {}
    for g in spec.lm_eval_groups:
        members = [by_name[m] for m in g.tasks if m in by_name]
        if members:
            out[task_label(g.name, spec.prompt_setup(members[0]))] = {
                "tasks": [spec.task_label(m) for m in members], "weight_by_size": g.weight_by_size}
    return out


def run_study(
    study: Union[StudyLike, StudyPlan] = None,
    *,
    output: Union[str, Path, None] = None,
    limit: Optional[int] = None,
    executor: str = "local",
    ray: Any = None,
    progress: ProgressArg = "auto",
    step_progress: Union[Callable[[int, int], Any], Literal["auto"], None] = "auto",
    say: Say = _silent,
    phase: Optional[Phase] = None,
) -> StudyResult:
    """The main job: train the study's adapters, score the reference and every variant on every task (resuming what
    the study's store holds), then write the report, and (the study's ``export`` block) the deployable checkpoints
    into ``OUTPUT/checkpoints``.

    Args:
        study: a study YAML path, a dict with the same keys (``reference``, ``variants``, ``tasks`` ...), a
            :class:`StudySpec`, a :class:`StudyPlan` from :func:`plan_study`, or ``None`` for the built-in study.
        output: the report directory (replaces the study's ``output``).
        limit: cap every task at its first N items.
        executor: ``local`` (one job after another) or ``ray`` (jobs as Ray tasks; ``ray`` takes a
            :class:`~quantcal.study.ray_executor.RaySettings`).
        progress, step_progress: item bars and fine-tuning step bars: ``"auto"`` (tqdm.auto, third-party loading
            bars silenced meanwhile), ``None`` (none) or your callbacks.
        say, phase: news lines, a context shown while a model loads or builds and while the report is written (a
            spinner).

    Returns:
        A :class:`StudyResult`; ``result.metrics()`` is the headline table, ``result.page`` the HTML report.
        Failed jobs are in ``result.failures`` (the report covers the others); if every job failed, an error.

    Example:
        >>> result = run_study({"reference": "smollm2-135m-instruct",                      # doctest: +SKIP
        ...                     "variants": [{"name": "rtn4", "recipe": "rtn:bits=4,group_size=64"}],
        ...                     "tasks": [{"name": "arithmetic", "limit": 50}]}, output="my-report")
    """
    if executor not in ("local", "ray"):
        raise QuantcalError(f"`executor` must be local or ray, got {executor!r}")
    if executor == "local" and ray is not None:
        raise QuantcalError("Ray settings go with `executor` ray")
    if isinstance(study, StudyPlan) and output is None and limit is None:
        planned = study  # already checked: not again (that reads every task's items and hashes every model)
    else:
        planned = plan_study(study.spec if isinstance(study, StudyPlan) else study, output=output, limit=limit)
    spec = planned.spec
    out_dir = planned.output
    check_writable_dir(out_dir)  # before any work: a read-only or full output folder is refused now
    write_text_atomic(out_dir / "study.json", spec.model_dump_json(indent=2))
    store_path = out_dir / "study.sqlite"
    steps = _tqdm_steps if step_progress == "auto" else step_progress
    with open_store(store_path) as db, _progress_bars(progress) as bars:
        trained = train_adapters(spec, steps, say)
        if executor == "ray":
            from quantcal.study.ray_executor import RaySettings, run_study_ray  # optional dependency

            outcomes = run_study_ray(spec, db, ray or RaySettings(), bars, say)
        else:
            outcomes = run_jobs(spec, db, bars, say, phase) if spec.tasks else []
        answered: list[Any] = []
        if spec.generation:  # free-text tasks: answered by every model after the multiple-choice jobs
            from quantcal.study.generation_study import run_generation_tasks

            generated, answered = run_generation_tasks(spec, db, bars, say, phase)
            outcomes += generated
        outcomes = [o for o in trained if not o.ok] + outcomes
        failures = [o.to_json() for o in outcomes if not o.ok]
        if len(failures) == len(outcomes):
            raise QuantcalError(f"every job failed; first: {failures[0]['error']}")
        with (phase or (lambda label: nullcontext()))("writing the report"):
            written = _write_study_report(db, out_dir, spec, outcomes, answered, failures, say)
    checkpoints, not_exported = [], {}
    if spec.export is not None:
        with (phase or (lambda label: nullcontext()))("exporting checkpoints"):
            checkpoints, not_exported = export_study(out_dir, spec, say)
    outcomes += [JobOutcome(name, "export", False, error=why) for name, why in not_exported.items()]
    return StudyResult(spec.name, out_dir, store_path, outcomes, written, checkpoints)


def _write_study_report(db: Store, out_dir: Path, spec: StudySpec, outcomes: list[JobOutcome], answered: list[Any],
                        failures: list[dict[str, Any]], say: Say) -> WrittenReport:
    """The study's report: the multiple-choice report (report.html) when it has such tasks, and the "Generated
    answers" page (generation.html, or report.html when it is the study's only page) when it has free-text ones."""
    mc_outcomes = [o for o in outcomes if o.task in {j.label for j in plan(spec)}]
    # the report covers this plan's items, not all the store holds (free-text tasks' too, for rebuild_report)
    write_text_atomic(out_dir / PLANNED_ITEMS, json.dumps(planned_items(outcomes)))
    settings = None
    if spec.tasks:
        settings = report_settings(spec)
        settings.items = planned_items(mc_outcomes)
    return _write_pages(db, out_dir, spec.name, settings, answered, spec.bootstrap, REFERENCE_NAME, failures, say)


def _write_pages(db: Store, out_dir: Path, title: str, settings: Optional[ReportSettings], answered: list[Any],
                 bootstrap: BootstrapSpec, reference: str, failures: Sequence[dict[str, Any]] = (),
                 say: Say = _silent) -> WrittenReport:
    """The multiple-choice report (report.html) when there are ``settings`` for one, and the "Generated answers"
    page of the ``answered`` runs (generation.html, linked from the report, or report.html when it is the only
    page) when there are any."""
    written = None
    if settings is not None:
        links = [("Generated answers", "generation.html")] if answered else []
        written = write_report(db, out_dir, settings, title, failures, say, links=links)
    if not answered:
        assert written is not None
        return written
    from quantcal.report.generation_page import write_generation_page
    from quantcal.study.generation_study import generation_results

    results, rows = generation_results(db, answered, bootstrap, reference)
    files = write_generation_page(out_dir, results, rows, title, "generation.html" if written else "report.html")
    if written is None:
        return WrittenReport(files[0], {"tasks": {}, "generation": results}, files)
    return WrittenReport(written.page, {**written.results, "generation": results}, written.files + files)


def rebuild_report(store: Union[str, Path], *, ref: Optional[str] = None, output: Union[str, Path, None] = None,
           resamples: Optional[int] = None, normalization: Union[str, Sequence[str], None] = None,
           all_items: bool = False, say: Say = _silent) -> WrittenReport:
    """Rebuild a report from a store without scoring (a study's settings come from its ``study.json``); generated
    answers (a study's ``generation`` tasks, :func:`evaluate_generation` runs) are scored again from the stored
    text into the "Generated answers" page (``generation.html``, or ``report.html`` when the store holds nothing else).

    ``ref``: the reference variant (default: the study's, else ``reference``, else the store's first run).
    ``normalization``: the length normalization(s) of the choice scores to report (default: the study's, else
    ``none``); the store keeps every choice's log-likelihood and length, so any of them needs no rescoring.
    ``all_items``: report every item the store holds, not only those of the study's last plan (its ``limit``)."""
    store = Path(store)
    study_file = store.parent / "study.json"
    spec = StudySpec.model_validate_json(study_file.read_text()) if study_file.is_file() else None
    planned = _planned_items(store.parent / PLANNED_ITEMS) if spec and not all_items else {}
    norms = _normalizations(normalization)
    if resamples is not None:
        if resamples < 10:
            raise QuantcalError("`resamples` must be at least 10")
        check_resamples(resamples)
    with open_store(store, readonly=True) as db:
        variants = list(dict.fromkeys(r.variant for r in db.runs()))
        if not variants:
            raise QuantcalError(f"{store}: the store holds no runs")
        settings = report_settings(spec) if spec else ReportSettings(reference=variants[0])
        if ref is not None:
            settings.reference = ref
        elif settings.reference not in variants:
            settings.reference = REFERENCE_NAME if REFERENCE_NAME in variants else variants[0]
        if settings.reference not in variants:
            raise QuantcalError(f"`ref` {settings.reference!r} is not in the store; it holds {', '.join(variants)}")
        if resamples is not None:
            settings.resamples = resamples
        if norms:
            settings.normalizations = norms
        out_dir, title = Path(output) if output else store.parent, spec.name if spec else store.stem
        from quantcal.study.generation_study import stored_answered_runs

        answered = stored_answered_runs(db, spec, planned)
        scored = [r for r in db.current_runs() if r.config.get("kind") != "generate" and db.done_item_ids(r.run_id)]
        if not scored and not answered:
            raise QuantcalError(f"{store}: no scored items or generated answers to report on")
        settings.items = {task: ids for task, ids in planned.items() if any(r.task == task for r in scored)}
        bootstrap = BootstrapSpec(resamples=settings.resamples, seed=settings.seed, level=settings.level)
        return _write_pages(db, out_dir, title, settings if scored else None, answered, bootstrap, settings.reference,
                            say=say)


def download(tasks: Union[str, Sequence[str]], out: Union[str, Path], *, fewshot: bool = False) -> list[Any]:
    """Local copies of built-in tasks' hub data in hub schema, ``OUT/<task>/<split>.jsonl`` (the layout
    ``--data-dir`` and the example studies' ``${data_dir}`` read); ``fewshot``: also the split few-shot examples
    come from. Needs the hub (or a datasets cache that holds the data); offline it stops in seconds with one line.

    Returns a :class:`~quantcal.tasks.download.DownloadedSplit` (task, split, path, rows) per file written."""
    from quantcal.tasks.download import download as download_splits

    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
        raise QuantcalError("`tasks` is empty: name the tasks to download (quantcal tasks lists them)")
    for name in names:
        if is_lm_eval(name):
            raise QuantcalError(f"{name}: lm-eval tasks read the hub through lm-eval's own loader; for a local copy, "
                                "write a task YAML with dataset_path: json and read it with `lm_eval_include`")
    from quantcal.tasks.generation_tasks import GENERATION_TASKS

    tasks_found = [GENERATION_TASKS[n] if n in GENERATION_TASKS else get_task(n) for n in names]  # unknown: refused
    target = Path(out)
    check_writable_dir(target)
    return download_splits(tasks_found, target, fewshot)


#: Beside a study's store: per task, the item ids its last run planned (what its report covers).
PLANNED_ITEMS = "planned_items.json"


def _planned_items(path: Path) -> dict[str, list[str]]:
    """A study's planned items (:data:`PLANNED_ITEMS`); none recorded (an older study): every stored item."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QuantcalError(f"{path}: unreadable ({exc}); delete it, or pass `all_items`") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in data.values()):
        raise QuantcalError(f"{path}: not a map of task to item ids; delete it, or pass `all_items`")
    return data


def _normalizations(normalization: Union[str, Sequence[str], None]) -> list[str]:
    """``"none,tokens"`` or ``["none", "tokens"]`` -> the checked list (empty for None)."""
    if normalization is None:
        return []
    values = [v.strip() for v in normalization.split(",")] if isinstance(normalization, str) else list(normalization)
    problem = normalization_problem(values)
    if problem:
        raise QuantcalError(problem)
    return list(dict.fromkeys(values))


# items, metrics, comparisons ---------------------------------------------------------------------------------------
def _store_path(store_or_report_dir: Union[str, Path]) -> Path:
    path = Path(store_or_report_dir)
    return path / "study.sqlite" if path.is_dir() else path


def load_items(store_or_report_dir: Union[str, Path], normalization: Union[str, Sequence[str]] = "none") -> "pd.DataFrame":
    """One row per item x variant (x normalization) as a pandas DataFrame, sorted by run then dataset position.

    Columns: ``run_id, variant, task, recipe, normalization, position, item_id, item_hash, gold, golds, n_choices,
    pred, confidence, p_gold, correct, probs, logliks, n_tokens, n_chars, n_bytes, greedy, question, choices``
    (:mod:`quantcal.analysis.records` defines each). ``store_or_report_dir``: a store, or a report directory holding
    ``study.sqlite``.

    Example:
        >>> items = load_items("quantcal-report")                                   # doctest: +SKIP
        >>> items.pivot_table(index="position", columns="variant", values="p_gold")  # doctest: +SKIP
    """
    norms = [normalization] if isinstance(normalization, str) else list(normalization)
    with open_store(_store_path(store_or_report_dir), readonly=True) as db:
        return item_frame(db, norms)


def export(store: Union[str, Path], out: Union[str, Path, None] = None, fmt: str = "jsonl",
           normalization: str = "none") -> tuple[Path, int]:
    """Write :func:`load_items`' records to JSON lines, CSV or Parquet (default: beside the store); returns the file
    and the number of records."""
    store = _store_path(store)
    target = Path(out) if out is not None else store.with_suffix(f".{fmt}")
    with open_store(store, readonly=True) as db:
        return target, export_store(db, target, fmt, normalization)


@dataclass(frozen=True)
class RunMetrics:
    """One run's metrics, each with its percentile bootstrap interval."""

    variant: str
    task: str
    n: int
    values: dict[str, Interval]


def store_metrics(store: Union[str, Path], names: Sequence[str] = DEFAULT_METRICS, *, resamples: int = 1000,
            normalization: str = "none", seed: int = 0, level: float = 0.95) -> list[RunMetrics]:
    """Accuracy and calibration of every run in a store that has scored items, with bootstrap intervals.

    Example:
        >>> [(m.variant, m.values["ece"].estimate) for m in store_metrics("quantcal-report")]   # doctest: +SKIP
    """
    for name in names:
        get_metric(name)
    check_resamples(resamples)
    out = []
    with open_store(_store_path(store), readonly=True) as db:
        for run in db.current_runs():
            if not db.done_item_ids(run.run_id):
                continue
            preds, _ = run_predictions(db, run.variant, run.task, normalization)
            out.append(RunMetrics(run.variant, run.task, len(preds.item_ids), run_metrics(preds, names, resamples, seed, level)))
    return out


@dataclass(frozen=True)
class PairedComparison:
    """A variant against a reference on the same items: paired metric differences (variant − reference) with
    intervals, and the item-level analysis (:class:`~quantcal.analysis.Comparison`: p(gold) changes, Jensen-Shannon
    distance, flips, paired tests, changes by the reference's confidence)."""

    ref: str
    variant: str
    task: str
    n: int  # items both scored
    differences: dict[str, Interval]
    analysis: Comparison

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "paired_difference": {k: v.to_json() for k, v in self.differences.items()},
                "analysis": self.analysis.to_json()}


def compare(store: Union[str, Path], ref: Optional[str] = None, variant: Optional[str] = None,
            task: Optional[str] = None, *, names: Sequence[str] = DEFAULT_METRICS, resamples: int = 1000,
            normalization: str = "none", seed: int = 0, bins: int = 5) -> PairedComparison:
    """Paired analysis of two variants of a store on the items both scored (matched by id and content).

    What is not given is inferred where the store leaves one choice: ``task`` when it holds one task, ``ref`` as the
    study's reference (``reference``), ``variant`` when one other variant scored the task.

    Example:
        >>> c = compare("quantcal-report", "reference", "rtn-w4-g64", "arithmetic")   # doctest: +SKIP
        >>> c.differences["ece"].excludes_zero                                        # doctest: +SKIP
    """
    check_resamples(resamples)
    with open_store(_store_path(store), readonly=True) as db:
        runs = [r for r in db.runs() if r.n_items]
        task = task or _only("task", sorted({r.task for r in runs}), "`task`")
        on_task = list(dict.fromkeys(r.variant for r in runs if r.task == task))
        if ref is None:
            if REFERENCE_NAME not in on_task:
                raise QuantcalError(f"name the reference (`ref`); {task} was scored by {', '.join(on_task) or 'no variant'}")
            ref = REFERENCE_NAME
        variant = variant or _only("variant", [v for v in on_task if v != ref], "`variant`")
        aligned = align(db, ref, variant, task, normalization)
    differences, analysis = paired_analysis(aligned, names, resamples, seed, bins)
    return PairedComparison(ref, variant, task, analysis.n, differences, analysis)


@dataclass(frozen=True)
class GenerationComparison:
    """A variant's generated answers against the reference's on the same items: per confidence measure, each
    metric's paired difference (variant - reference) with its 95% interval; changed and flipped answers."""

    ref: str
    variant: str
    task: str
    n: int
    differences: Mapping[str, Mapping[str, Interval]]
    changed_answers: int
    right_to_wrong: int
    wrong_to_right: int

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "variant": self.variant, "task": self.task, "n": self.n,
                "changed_answers": self.changed_answers, "right_to_wrong": self.right_to_wrong,
                "wrong_to_right": self.wrong_to_right,
                "differences": {c: {m: iv.to_json() for m, iv in ms.items()} for c, ms in self.differences.items()}}


def holds_generations(store: Union[str, Path], task: str) -> bool:
    """Whether ``store`` holds generated answers under ``task`` (a free-text task's label, e.g. an lm-eval
    generate_until task's); False for a store that does not exist yet."""
    path = _store_path(store)
    if not path.is_file():
        return False
    with open_store(path, readonly=True) as db:
        return any(r.task == task and r.config.get("kind") == "generate" for r in db.current_runs())


def compare_generations(store: Union[str, Path], ref: str, variant: str, task: str, *, resamples: int = 1000,
                        seed: int = 0, p_true: bool = False, samples: int = 0, temperature: float = 1.0,
                        sample_seed: int = 0) -> GenerationComparison:
    """Two variants' answers to a free-text task in one store (:func:`evaluate_generation` with the same ``store``
    and different ``name``), paired on the items both answered. ``p_true``/``samples``: include those confidences
    (as measured with the same settings)."""
    from quantcal.study.generation_jobs import ExtraMeasures, compare_answers, scored_answers
    from quantcal.tasks.free_text import scoring_task

    check_resamples(resamples)
    extras = ExtraMeasures(p_true, samples, temperature, sample_seed)
    with open_store(_store_path(store), readonly=True) as db:
        runs = {(r.variant, r.task): r for r in db.current_runs() if r.config.get("kind") == "generate"}
        answers = []
        for name in (ref, variant):
            run = runs.get((name, task))
            if run is None:  # the bare task name, when the variant answered it under one prompt setup only
                same = [r for (v, _), r in runs.items() if v == name and r.config.get("task") == task]
                run = same[0] if len(same) == 1 else None
            if run is None:
                held = sorted({f"{v} · {t}" for v, t in runs})
                raise QuantcalError(f"no generated answers of {name} on {task} in the store; it holds "
                                    f"{', '.join(held) or 'none'}")
            answers.append(scored_answers(db, run.run_id, scoring_task(run.config), extras=extras))
    found = compare_answers(answers[0], answers[1], resamples, seed)
    return GenerationComparison(ref, variant, task, found["n"], found["differences"], found["changed_answers"],
                                found["right_to_wrong"], found["wrong_to_right"])


def _only(what: str, choices: list[str], parameter: str) -> str:
    """The one choice there is, or an error that lists them."""
    if len(choices) == 1:
        return choices[0]
    if not choices:
        raise QuantcalError(f"the store holds no {what} to compare")
    raise QuantcalError(f"name the {what} ({parameter}): the store holds {', '.join(choices)}")


# variants ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A built compressed variant: its checkpoint folder and its record (``quantcal-variant.json``)."""

    model: str
    recipe: str  # the canonical recipe key
    path: Path
    meta: dict[str, Any]

    @property
    def bits_per_weight(self) -> float:
        return float(self.meta["bits_per_weight"])

    @property
    def mode(self) -> str:
        return str(self.meta.get("mode", "simulated"))


def quantize(model: str = DEFAULT_MODEL, recipe: str = "rtn:bits=4,group_size=64", out: Union[str, Path, None] = None,
             say: Say = _silent) -> Variant:
    """Build one compressed variant (cached: the same model and recipe build once) and return its record.

    Example:
        >>> v = quantize("smollm2-135m-instruct", "rtn:bits=4,group_size=64")   # doctest: +SKIP
        >>> v.bits_per_weight                                                   # doctest: +SKIP
    """
    spec = parse_recipe(recipe)
    source = resolve_source(model)
    if is_packed_native(spec):  # the compressed-tensors checkpoint itself
        path = native_checkpoint(source, spec, say) if out is None else export_variant(source, spec, Path(out), say=say).out
    else:
        path = build_variant(source, spec, Path(out) if out is not None else None, progress=say)
    return Variant(model, spec.key, path, variant_meta(path))


def verify_cache(full: bool = True, remove_damaged: bool = False) -> list[EntryCheck]:
    """Check every entry of quantcal's cache (``$QUANTCAL_CACHE``) against the manifest written when it was built:
    each file's size and SHA-256 (weights included unless ``full=False``). With ``remove_damaged``, a damaged entry
    is removed (a symbolic link itself, never what it points to), to be built again when next used.

    Example:
        >>> [c.path for c in quantcal.verify_cache() if c.problem]   # doctest: +SKIP
    """
    checks = check_entries(cache_root(), full)
    if remove_damaged:
        for check in checks:
            if check.problem is not None:
                remove_entry(check.path)
    return checks


def export_model(model: str = DEFAULT_MODEL, recipe: str = "rtn:bits=4,group_size=64", out: Union[str, Path] = "",
                 dtype: str = "float32", say: Say = _silent) -> ExportedModel:
    """Build (or find) a variant and write it as the quantized checkpoint deployment engines load with their own
    kernels (:mod:`quantcal.checkpoints.model_export`): RTN, GPTQ (``desc_act=false``) and AWQ as compressed-tensors
    ``pack-quantized`` (vLLM, transformers), ``bnb:*`` as transformers' bitsandbytes serialization. Its
    ``quantcal-variant.json`` carries the variant's record and the bits per weight on disk.

    Example:
        >>> quantcal.export_model("smollm2-135m-instruct", "gptq:bits=4,group_size=64", "smol-gptq4")  # doctest: +SKIP
    """
    if not str(out):
        raise QuantcalError("export_model: `out` (a new folder) is required")
    return export_variant(resolve_source(model), parse_recipe(recipe), Path(out), dtype, say)


# fine-tuning -------------------------------------------------------------------------------------------------------
def holdout_items(specs: Iterable[str]) -> list[Item]:
    """Items named by held-out specs: ``NAME``, ``NAME=FILE``, ``NAME=FILE@LIMIT`` or a study ``.yaml`` (its tasks)."""
    items: list[Item] = []
    for text in specs:
        if text.endswith((".yaml", ".yml")):
            items += study_items(load_study(Path(text)))
            continue
        name, _, rest = text.partition("=")
        path, _, limit = rest.rpartition("@") if "@" in rest else (rest, "", "")
        if limit and not limit.isdigit():
            raise QuantcalError(f"`holdout` {text}: the limit after @ must be a number")
        items += task_items(get_task(name), path or None, int(limit) if limit else None)
    return items


@dataclass(frozen=True)
class FinetuneResult:
    """A trained (or resumed, or reused) adapter run: where the adapter is and how training went."""

    out: Path
    adapter: Path
    base: str  # the base model's short name
    n_held_out: int
    meta: dict[str, Any] = field(default_factory=dict)  # the run's record (also OUT/adapter/quantcal-finetune.json)


def train_adapter(
    data: str,
    out: Union[str, Path],
    *,
    model: str = DEFAULT_MODEL,
    base: BaseConfig = BaseConfig(),
    lora: LoraSettings = LoraSettings(),
    train: Optional[TrainSettings] = None,
    data_file: Union[str, Path, None] = None,
    skip: int = 0,
    take: Optional[int] = None,
    holdout: Sequence[str] = (),
    resume: bool = False,
    device: str = "cpu",
    progress: Optional[Callable[[int, int], Any]] = None,
    say: Say = _silent,
) -> FinetuneResult:
    """Fine-tune a LoRA adapter on a 4-bit NF4 base (QLoRA, ``base=BaseConfig("qlora")``) or the float base
    (``BaseConfig("lora")``), loss on completion tokens only, with checkpoints and exact resume.

    ``data``: ``task:NAME`` (a benchmark's items as prompt + gold answer; rows from ``data_file``), a ``.jsonl`` of
    ``{prompt, completion}`` or ``{messages}``, or ``hub:ORG/NAME[:SPLIT]``. ``holdout``: evaluated items that must
    not be trained on (see :func:`holdout_items`); training on one is refused. The adapter is then a variant:
    ``evaluate(adapter=out)``.
    """
    check_device(device)
    source = resolve_source(model)
    examples = load_examples(data, str(data_file) if data_file else None, skip, take, load_tokenizer(source))
    held = holdout_items(holdout)
    if held:
        check_disjoint(examples, held)
        say(f"held out: {len(held)} evaluated item(s); none in the {len(examples)} training examples")
    else:
        say("warning: no `holdout` given, so nothing checks that evaluated items are not trained on")
    run = FinetuneRun(source, base, lora, train or TrainSettings(),
                      {"source": data, "data_file": str(data_file) if data_file else None, "skip": skip, "take": take,
                       "held_out": list(holdout), "n_held_out": len(held)}, device)
    meta = run_finetune(run, examples, Path(out), resume, progress, say)
    return FinetuneResult(Path(out), Path(out) / "adapter", source.name, len(held), meta)


# lm-eval -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportedRun:
    """One lm-eval samples file in a store: accuracies recomputed by quantcal beside lm-eval's own."""

    variant: str
    task: str
    n_items: int
    acc: float
    acc_norm: Optional[float]
    lm_eval: dict[str, float]  # lm-eval's reported metrics for the task


def import_lm_eval(paths: Sequence[Union[str, Path]], store: Union[str, Path], *, variant: Optional[str] = None,
                   task: Optional[str] = None) -> list[ImportedRun]:
    """Put lm-eval's per-choice log-likelihoods (``--log_samples`` output) into a store, so metrics, comparisons
    and reports work on a run you already have."""
    files = samples_files([Path(p) for p in paths])
    if task is not None and len(files) != 1:
        raise QuantcalError("`task` names one task: give exactly one samples file")
    out = []
    with open_store(Path(store)) as db:
        for f in files:
            got = import_samples(db, f, variant, task)
            run = next(r for r in db.runs() if r.run_id == got.run_id)
            ours = task_summary(db.scored_items(got.run_id))
            out.append(ImportedRun(run.variant, got.task, got.n_items, ours["acc"], ours.get("acc_norm"), got.lm_eval_metrics))
    return out
