"""The study file: which reference, which variants, which tasks, which numbers, where to write them.

A YAML file validated with pydantic; relative paths are resolved against the file's folder. Only
``reference``, ``variants`` and ``tasks`` are required::

    reference: smollm2-135m-instruct
    variants:
      - name: rtn4
        recipe: rtn:bits=4,group_size=64
    tasks:
      - name: custom
        data_file: questions.jsonl
    output: report_dir
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from quantcal.errors import QuantcalError
from quantcal.metrics.bootstrap import MAX_RESAMPLES
from quantcal.metrics.registry import DEFAULT_METRICS
from quantcal.analysis.predictions import normalization_problem
from quantcal.tasks.prompts import DEFAULT_FEWSHOT_SEED, PromptSetup, task_label
from quantcal.variants.definition import VariantDef

REFERENCE_NAME = "reference"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FinetuneSpec(_Strict):
    """Train the variant's adapter as part of the study (once; resumed if interrupted), on the variant's model
    (else the reference). Every item the study evaluates is held out: training on one is refused."""

    data: str = Field(description="task:NAME, a .jsonl of prompt/completion or messages, or hub:ORG/NAME[:SPLIT]")
    data_file: Optional[str] = Field(None, description="task:NAME sources: local rows in hub schema")
    skip: int = Field(0, ge=0)
    take: Optional[int] = Field(None, gt=0)
    method: Literal["qlora", "lora"] = "qlora"
    base_form: Literal["simulated", "native"] = "simulated"
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"])
    steps: Optional[int] = Field(100, gt=0)
    epochs: Optional[float] = Field(None, gt=0)
    lr: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(256, gt=0)
    seed: int = 0
    optim: Literal["adamw", "paged_adamw", "paged_adamw_8bit"] = "adamw"


class VariantSpec(_Strict):
    """A compressed (or other) model to compare with the reference."""

    name: str = Field(description="readable name, used in the store and the report")
    recipe: Optional[str] = Field(None, description="compression recipe applied to the reference, e.g. rtn:bits=4,group_size=64")
    model: Optional[str] = Field(None, description="another model instead of (or as the base of) the recipe or adapter")
    adapter: Optional[str] = Field(None, description="a LoRA adapter folder (quantcal finetune's output); base: 'model', else the adapter's recorded base")
    deploy: Optional[str] = Field(None, description="adapter deployment form: nf4 (default), nf4-native, merged (default with a recipe)")
    finetune: Optional[FinetuneSpec] = Field(None, description="train the adapter in the study (into OUTPUT/adapters/NAME)")
    repeats: Optional[int] = Field(None, ge=2, description="build a calibrated recipe (GPTQ, AWQ) this many times, "
                                                          "calibration seeds 0..N-1, each scored as NAME@seedS")
    seeds: Optional[list[int]] = Field(None, min_length=2, description="the calibration seeds of the builds, instead of repeats")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or value.strip() == REFERENCE_NAME:
            raise ValueError(f"a variant needs a non-empty name other than {REFERENCE_NAME!r}")
        return value.strip()

    @model_validator(mode="after")
    def _something(self) -> "VariantSpec":
        if self.finetune is not None and self.adapter is not None:
            raise ValueError(f"variant {self.name!r}: give an adapter or a finetune block, not both")
        if self.recipe is None and self.model is None and self.adapter is None and self.finetune is None:
            raise ValueError(f"variant {self.name!r} needs a recipe, a model, an adapter or a finetune block")
        if self.deploy is not None and self.adapter is None and self.finetune is None:
            raise ValueError(f"variant {self.name!r}: 'deploy' goes with an adapter")
        if self.repeats is not None or self.seeds is not None:
            self._check_repeats()
        return self

    def _check_repeats(self) -> None:
        from quantcal.recipes import FAMILIES, parse_recipe

        if self.repeats is not None and self.seeds is not None:
            raise ValueError(f"variant {self.name!r}: give repeats or seeds, not both")
        if self.seeds is not None and (len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0):
            raise ValueError(f"variant {self.name!r}: seeds must be distinct and non-negative")
        if self.recipe is None or self.adapter is not None or self.finetune is not None:
            raise ValueError(f"variant {self.name!r}: repeats/seeds rebuild a calibrated recipe; give a recipe (no adapter)")
        try:
            spec = parse_recipe(self.recipe)
        except QuantcalError as exc:
            raise ValueError(str(exc)) from None
        if "seed" not in FAMILIES[spec.family].params:
            raise ValueError(f"variant {self.name!r}: repeats/seeds are meaningless for {spec.family}: the recipe is "
                             "deterministic (only calibrated recipes, gptq and awq, differ between builds)")
        if "seed=" in self.recipe.replace(" ", ""):
            raise ValueError(f"variant {self.name!r}: the recipe names a seed; repeats/seeds set it for each build")

    def builds(self) -> list[tuple[str, Optional[str]]]:
        """``(name, recipe)`` of each build: one, or one per calibration seed (``NAME@seedS``, recipe ``,seed=S``)."""
        if self.repeats is None and self.seeds is None:
            return [(self.name, self.recipe)]
        seeds = self.seeds if self.seeds is not None else list(range(self.repeats or 0))
        return [(f"{self.name}@seed{seed}", f"{self.recipe},seed={seed}") for seed in seeds]


class TaskSpec(_Strict):
    name: str
    data_file: Optional[str] = Field(None, description="local copy in hub schema (.jsonl/.json/.parquet/.csv)")
    limit: Optional[int] = Field(None, gt=0, description="first N items only (after `skip`)")
    skip: int = Field(0, ge=0, description="leave out the first N items (e.g. those a mixed recipe was ranked on)")
    template: Optional[str] = Field(None, description="prompt template (custom task)")
    include: Optional[str] = Field(None, description="folder of your own lm-eval task YAMLs (lm-eval:NAME tasks)")
    num_fewshot: Optional[int] = Field(None, ge=0, description="few-shot examples (default: the study's num_fewshot)")
    fewshot_file: Optional[str] = Field(None, description="local file to draw the few-shot examples from")
    fewshot_seed: int = Field(DEFAULT_FEWSHOT_SEED, description="seed of the few-shot sampler (lm-eval's 1234)")
    trust_task_code: bool = Field(False, description="run the Python hooks (!function) of this task's include folder")


class GenerationTaskSpec(_Strict):
    """A task answered in free text (:mod:`quantcal.tasks.generation_tasks`): every variant and the reference answer
    its items greedily; the report's "Generated answers" page compares the confidences of their answers."""

    name: str = Field(description="gsm8k, triviaqa, or an lm-eval generate_until task (lm-eval:NAME)")
    data_file: Optional[str] = Field(None, description="local copy in hub schema (.jsonl; built-in tasks)")
    include: Optional[str] = Field(None, description="folder of your own lm-eval task YAMLs (lm-eval:NAME tasks)")
    trust_task_code: bool = Field(False, description="run the Python hooks (!function) of this task's include folder")
    limit: Optional[int] = Field(None, gt=0, description="first N items only (after `skip`)")
    skip: int = Field(0, ge=0)
    num_fewshot: Optional[int] = Field(None, ge=0, description="few-shot examples (default: the task's, lm-eval's)")
    fewshot_file: Optional[str] = Field(None, description="local file to draw the few-shot examples from")
    fewshot_seed: int = Field(DEFAULT_FEWSHOT_SEED)
    max_gen_toks: Optional[int] = Field(None, gt=0, description="generation cap (default: the task's, 256)")
    batch_size: int = Field(16, gt=0, description="sequences generated together")
    p_true: bool = Field(False, description="also ask the model whether each answer is right (conf_p_true)")
    samples: int = Field(0, ge=0, description="answers sampled per item for conf_consistency (0: off)")
    temperature: float = Field(1.0, gt=0, description="temperature of the sampled answers")
    sample_seed: int = 0

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        from quantcal.tasks.generation_tasks import GENERATION_TASKS

        if value not in GENERATION_TASKS and not value.startswith("lm-eval:"):
            raise ValueError(f"generation task {value!r}: one of {', '.join(GENERATION_TASKS)} or lm-eval:NAME")
        return value


class LmEvalGroup(_Strict):
    """An lm-eval group a study's tasks came from (``tasks: [lm-eval:mmlu]`` expands to its members, each a task of
    the study); the report adds the group's line, aggregated as lm-eval does. Written by quantcal when it reads the
    study (a study saved in results.json carries it); every member must be one of the study's tasks."""

    name: str = Field(pattern=r"^lm-eval:\S+$")
    tasks: list[str] = Field(min_length=1)
    weight_by_size: bool = True


class BootstrapSpec(_Strict):
    resamples: int = Field(1000, ge=10, le=MAX_RESAMPLES)
    seed: int = 0
    level: float = Field(0.95, gt=0, lt=1)


class RecalibrationSpec(_Strict):
    enabled: bool = True
    folds: int = Field(5, ge=2)


class ExportSpec(_Strict):
    """After the report: write variants as deployable checkpoints into OUTPUT/checkpoints/NAME, each with its fitted
    temperature (:func:`quantcal.study.deployment.export_checkpoint`). ``export: true`` is short for every variant."""

    variants: list[str] = Field(default_factory=list, description="names to export (builds as NAME@seedS, 'reference' "
                                "too); empty: every variant")
    form: Literal["auto", "quantized", "float"] = Field("auto", description="quantized format (compressed-tensors for "
                                                         "rtn/gptq/awq, bitsandbytes for bnb), float weights, or auto")
    task: Optional[str] = Field(None, description="whose fitted temperature goes into generation_config.json "
                                "(default: the study's first task)")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="dtype of the float tensors")


class StudySpec(_Strict):
    name: str = "study"
    reference: str = Field(description="bundled name, .gguf file, checkpoint directory or hub id")
    variants: list[VariantSpec] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(default_factory=list, description="multiple-choice tasks")
    generation: list[GenerationTaskSpec] = Field(default_factory=list, description="tasks answered in free text "
                                                 "(gsm8k, triviaqa): the report's 'Generated answers' page")
    normalization: Union[str, list[str]] = Field("none", description="length normalization(s): none, tokens, chars, bytes")
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec)
    recalibration: RecalibrationSpec = Field(default_factory=RecalibrationSpec)
    confidence_bins: int = Field(5, ge=1, description="reference-confidence quantile bins for the shift analysis")
    output: str = "quantcal-report"
    data_dir: Optional[str] = Field(None, description="the folder ${data_dir} stands for in data files (quantcal "
                                    "download writes one; --data-dir replaces it)")
    batch_size: int = Field(64, gt=0, description="choice rows per forward pass")
    max_batch_tokens: Union[Literal["auto"], PositiveInt, None] = Field(
        "auto", description="padded token positions per forward pass: auto (2048 on CPU; on CUDA from the free "
                            "memory), a number, or null (no cap)")
    device: str = "cpu"
    dtype: str = "auto"
    backend: Literal["hf", "vllm"] = Field("hf", description="scoring engine: hf (transformers) or vllm (vLLM's prompt "
                                           "log-probabilities, prefix caching on)")
    num_fewshot: Optional[int] = Field(None, ge=0, description="few-shot examples before each question (a task may set "
                                       "its own; default: each task's own, 0 or its lm-eval YAML's num_fewshot)")
    apply_chat_template: bool = Field(False, description="render prompts through the tokenizer's chat template")
    trust_task_code: bool = Field(False, description="run the Python hooks (!function) that lm-eval tasks of an "
                                  "include folder name; without it such a task is refused, and a dry run never runs "
                                  "them (the registry's own tasks need no consent: their code is the installed lm-eval's)")
    system_instruction: Optional[str] = Field(None, description="text before the task description (a system turn)")
    fewshot_as_multiturn: Optional[bool] = Field(None, description="chat: each few-shot example as its own exchange "
                                                 "(default: on with a chat template, as lm-eval)")
    sensitivity: list[str] = Field(default_factory=list, description="sensitivity runs (`quantcal sensitivity` output "
                                   "folders or their sensitivity.json) for the report's 'where it breaks' section")
    export: Optional[ExportSpec] = Field(None, description="write variants as deployable checkpoints after the report "
                                         "(OUTPUT/checkpoints/NAME); true: every variant")
    lm_eval_groups: list[LmEvalGroup] = Field(default_factory=list, description="filled in when the study is read: "
                                                 "the lm-eval groups its tasks came from (name, tasks, weight_by_size)")

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_names(cls, value: Any) -> Any:
        """``tasks: [piqa, boolq]`` is short for ``tasks: [{name: piqa}, {name: boolq}]``."""
        if isinstance(value, list):
            return [{"name": t} if isinstance(t, str) else t for t in value]
        return value

    @field_validator("export", mode="before")
    @classmethod
    def _export_flag(cls, value: Any) -> Any:
        """``export: true`` exports every variant; ``false`` none."""
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("normalization")
    @classmethod
    def _norms(cls, value: Union[str, list[str]]) -> list[str]:
        values = [value] if isinstance(value, str) else value
        problem = normalization_problem(values)
        if problem:
            raise ValueError(problem)
        return list(values)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        from quantcal.metrics import METRICS

        bad = [m for m in value if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; known: {', '.join(METRICS)}")
        return value

    @model_validator(mode="after")
    def _trust(self) -> "StudySpec":
        """``trust_task_code: true`` at the top is every task's consent."""
        if self.trust_task_code:
            for task in self.tasks:
                task.trust_task_code = True
        return self

    @model_validator(mode="after")
    def _some_task(self) -> "StudySpec":
        if not self.tasks and not self.generation:
            raise ValueError("a study needs at least one task: `tasks` (multiple choice) or `generation` (free text)")
        names = [t.name for t in self.generation]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"each generation task once: {twice}")
        if self.generation and (self.system_instruction or self.fewshot_as_multiturn is False):
            raise ValueError("`generation` tasks take the study's apply_chat_template with few-shot examples as turns "
                             "(lm-eval's default); system_instruction and fewshot_as_multiturn: false apply to "
                             "`tasks` only: run the free-text tasks in a study of their own")
        return self

    @model_validator(mode="after")
    def _unique(self) -> "StudySpec":
        names = [v.name for v in self.variants]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"variant names must be unique: {twice}")
        tasks = [self.task_label(t) for t in self.tasks]
        twice = sorted({n for n in tasks if tasks.count(n) > 1})
        if twice:
            raise ValueError(f"each task once (per few-shot setup): {twice}")
        if self.export is not None:
            builds = [REFERENCE_NAME] + [name for v in self.variants for name, _ in v.builds()]
            unknown = [n for n in self.export.variants if n not in builds]
            if unknown:
                raise ValueError(f"export: no variant {unknown[0]!r} in the study; it has {', '.join(builds)}")
            if self.export.task is not None and self.export.task not in tasks:
                raise ValueError(f"export: task {self.export.task!r} is not one of the study's ({', '.join(tasks)})")
        return self

    def exported_variants(self) -> list[str]:
        """The names ``export`` writes: its list, else every variant (each build of a repeated one)."""
        if self.export is None:
            return []
        return self.export.variants or [name for v in self.variants for name, _ in v.builds()]

    def prompt_setup(self, task: TaskSpec) -> PromptSetup:
        """The task's prompt: its own few-shot settings over the study's, and the study's chat settings."""
        shots = self.num_fewshot if task.num_fewshot is None else task.num_fewshot
        if shots is None:  # the task's own default, as lm-eval without --num_fewshot
            shots = _default_fewshot(task)
        try:
            return PromptSetup(shots, task.fewshot_seed, task.fewshot_file, self.apply_chat_template,
                               self.system_instruction, self.fewshot_as_multiturn)
        except QuantcalError as exc:
            raise ValueError(f"task {task.name}: {exc}") from None

    def task_label(self, task: TaskSpec) -> str:
        """The task's name in the store and the report (``mmlu[5-shot]`` when not zero-shot plain)."""
        return task_label(task.name, self.prompt_setup(task))

    def adapter_of(self, variant: VariantSpec) -> Optional[str]:
        """The variant's adapter: its own, or where its finetune block trains one (OUTPUT/adapters/NAME). Variants
        with the same base and finetune block share one adapter (named after the first), trained once."""
        if variant.finetune is not None:
            first = next(v for v in self.variants if v.finetune == variant.finetune and v.model == variant.model)
            return str(Path(self.output) / "adapters" / folder_name(first.name))
        return variant.adapter

    def cap_items(self, limit: int) -> None:
        """Cap every task at its first ``limit`` items (a task's own smaller limit stays)."""
        for t in [*self.tasks, *self.generation]:
            t.limit = min(t.limit, limit) if t.limit else limit

    def definition(self, variant: VariantSpec, recipe: Optional[str] = None) -> VariantDef:
        """The variant as a :class:`~quantcal.variants.definition.VariantDef`: its model (the reference when it has only a
        recipe or trains its adapter here; else the adapter's recorded base), recipe (``recipe``: one build's),
        adapter and deployment form."""
        adapter = self.adapter_of(variant)
        model = variant.model or (self.reference if variant.finetune or not adapter else None)
        return VariantDef(model, recipe or variant.recipe, adapter, variant.deploy)

    @property
    def build_groups(self) -> dict[str, list[str]]:
        """Variants built more than once: name -> the names of its builds."""
        return {v.name: [name for name, _ in v.builds()] for v in self.variants if len(v.builds()) > 1}

    @property
    def normalizations(self) -> list[str]:
        return [self.normalization] if isinstance(self.normalization, str) else list(self.normalization)


def folder_name(name: str) -> str:
    """A variant name as one safe path component: the name itself when it is plain (letters, digits, ``.-_``, not
    ``.`` or ``..``), else a slug of it with a short hash, so ``../../x`` can never leave its parent folder."""
    if re.fullmatch(r"[A-Za-z0-9._-]+", name) and name not in (".", ".."):
        return name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "variant"
    return f"{slug[:60]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _resolve(path: Optional[str], base: Path) -> Optional[str]:
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p))


def _local_model(spec: str, base: Path) -> str:
    """Model specs that look like local paths are resolved against the study file's folder."""
    candidate = base / spec
    return str(candidate) if not Path(spec).is_absolute() and (spec.endswith(".gguf") or candidate.exists()) else spec


#: In a study's data file paths: the data folder (the study's ``data_dir``, or ``--data-dir``).
DATA_DIR = "${data_dir}"


def _data_path(path: Optional[str], base: Path, data_dir: Optional[Path], where: str) -> Optional[str]:
    """A data file path with ``${data_dir}`` replaced by the data folder, then resolved like any other path."""
    if path is None or DATA_DIR not in path:
        return _resolve(path, base)
    if data_dir is None:
        raise QuantcalError(f"{where}: {path} is under ${{data_dir}}, a data folder: pass `data_dir` "
                            "(`quantcal download TASK --out DIR` writes one where the hub is reachable)")
    return str(Path(path.replace(DATA_DIR, str(data_dir))))


def parse_study(data: Any, base: Path, origin: str = "study", data_dir: Optional[Path] = None) -> StudySpec:
    """A study from its mapping: relative paths read from ``base``; ``${data_dir}`` in data files is ``data_dir``
    (given, e.g. by --data-dir), else the study's own ``data_dir`` key."""
    if not isinstance(data, dict):
        raise QuantcalError(f"{origin}: a study is a mapping with reference, variants and tasks")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(x) for x in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise QuantcalError(f"{origin} is not a valid study:\n  " + "\n  ".join(lines)) from None
    folder = Path(data_dir).expanduser().resolve() if data_dir is not None else \
        (Path(_resolve(spec.data_dir, base) or "").resolve() if spec.data_dir else None)
    if folder is not None and not folder.is_dir():
        raise QuantcalError(f"{origin}: `data_dir` {folder}: not a directory")
    spec.data_dir = str(folder) if folder is not None else None
    spec.reference = _local_model(spec.reference, base)
    for v in spec.variants:
        if v.model:
            v.model = _local_model(v.model, base)
        v.adapter = _resolve(v.adapter, base)
        if v.recipe and DATA_DIR in v.recipe:  # a calibration source in the data folder: calib=task:NAME:${data_dir}/...
            if folder is None:
                _data_path(v.recipe, base, None, f"{origin}: variant {v.name}")  # raises: which flag to pass
            v.recipe = v.recipe.replace(DATA_DIR, str(folder))
        if v.finetune is not None:
            v.finetune.data_file = _data_path(v.finetune.data_file, base, folder, f"{origin}: variant {v.name}")
            if v.finetune.data.endswith((".jsonl", ".json")):
                v.finetune.data = _data_path(v.finetune.data, base, folder, f"{origin}: variant {v.name}") or v.finetune.data
    for t in spec.tasks:
        t.data_file = _data_path(t.data_file, base, folder, f"{origin}: task {t.name}")
        t.fewshot_file = _data_path(t.fewshot_file, base, folder, f"{origin}: task {t.name}")
        t.include = _resolve(t.include, base)
    for g in spec.generation:
        g.include = _resolve(g.include, base)
        g.trust_task_code = g.trust_task_code or spec.trust_task_code
        g.data_file = _data_path(g.data_file, base, folder, f"{origin}: generation task {g.name}")
        g.fewshot_file = _data_path(g.fewshot_file, base, folder, f"{origin}: generation task {g.name}")
    spec.generation = _expand_generation_groups(spec.generation, origin)
    spec.tasks, groups = _expand_lm_eval_groups(spec.tasks, origin)
    spec.lm_eval_groups = spec.lm_eval_groups or [LmEvalGroup(**g) for g in groups]
    names = {t.name for t in spec.tasks}
    for group in spec.lm_eval_groups:
        stray = [m for m in group.tasks if m not in names]
        if stray:
            raise QuantcalError(f"{origin}: lm_eval_groups: group {group.name} names {stray[0]!r}, which is not a task "
                                "of the study (quantcal fills lm_eval_groups in itself: leave it out)")
    spec.output = _resolve(spec.output, base) or spec.output
    spec.sensitivity = [_resolve(p, base) or p for p in spec.sensitivity]
    return spec


def _default_fewshot(task: TaskSpec) -> int:
    """0 for a built-in task; an lm-eval task's YAML ``num_fewshot`` (a group: its first task's, before expansion)."""
    from quantcal.tasks.lm_eval_tasks import expand, is_lm_eval, yaml_num_fewshot

    if not is_lm_eval(task.name):
        return 0
    members = expand(task.name, task.include).tasks
    return yaml_num_fewshot(members[0], task.include) if members else 0


def _expand_generation_groups(tasks: list[GenerationTaskSpec], origin: str) -> list[GenerationTaskSpec]:
    """Each ``lm-eval:GROUP`` of ``generate_until`` tasks in ``generation`` replaced by one entry per task, with the
    group's settings (each its own run and section of the page)."""
    from quantcal.tasks.free_text import free_text_group

    out: list[GenerationTaskSpec] = []
    for g in tasks:
        group = free_text_group(g.name, g.include) if g.name.startswith("lm-eval:") else None
        out += [g.model_copy(update={"name": m}) for m in group[0]] if group else [g]
    names = [g.name for g in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise QuantcalError(f"{origin}: each generation task once (a group's tasks count): {', '.join(twice)}")
    return out


def _expand_lm_eval_groups(tasks: list[TaskSpec], origin: str) -> tuple[list[TaskSpec], list[dict[str, Any]]]:
    """Each ``lm-eval:GROUP`` task replaced by one task per member (each its own run, as in ``quantcal eval``), and
    the groups found (for the report's group lines)."""
    from quantcal.tasks.lm_eval_tasks import PREFIX, expand_task_names, is_lm_eval

    out: list[TaskSpec] = []
    found: list[dict[str, Any]] = []
    for t in tasks:
        if not is_lm_eval(t.name):
            if t.include is not None:
                raise QuantcalError(f"{origin}: task {t.name}: `include` goes with lm-eval:NAME tasks")
            out.append(t)
            continue
        if t.data_file or t.fewshot_file or t.template:
            raise QuantcalError(f"{origin}: task {t.name}: lm-eval tasks read their data and examples as their YAML "
                                "says (no data_file, fewshot_file or template)")
        if t.include is not None and not Path(t.include).is_dir():
            raise QuantcalError(f"{origin}: task {t.name}: include {t.include} is not a folder")
        names, groups = expand_task_names([t.name], t.include)
        out += [t.model_copy(update={"name": name}) for name in names]
        found += [{"name": PREFIX + g.name, "tasks": [PREFIX + m for m in g.tasks], "weight_by_size": g.weight_by_size}
                  for g in groups.values()]
    return out, found


def load_study(path: str | Path, data_dir: Path | None = None) -> StudySpec:
    """A study from its YAML file (relative paths inside it are read from the file's folder; ``${data_dir}`` in its
    data files is ``data_dir``, else the study's own ``data_dir`` key)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise QuantcalError(f"{path}: study file not found")
    if path.stat().st_size > MAX_STUDY_BYTES:
        raise QuantcalError(f"{path}: {path.stat().st_size:,} bytes; a study file is at most {MAX_STUDY_BYTES:,}")
    try:
        text = path.read_text(encoding="utf-8")
        depth = yaml_depth(text)
        if depth > MAX_STUDY_DEPTH:
            raise QuantcalError(f"{path}: nested more than {MAX_STUDY_DEPTH} levels deep; a study file nests at most "
                                f"{MAX_STUDY_DEPTH}")
        data = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise QuantcalError(f"{path}: not UTF-8 (byte {exc.start}); save the study as UTF-8") from None
    except yaml.YAMLError as exc:
        raise QuantcalError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:  # the depth check should stop this first; kept for any other recursive path
        raise QuantcalError(f"{path}: nested too deeply to read") from None
    return parse_study(data, path.resolve().parent, str(path), data_dir)


#: A study is a page of YAML: limits checked before the (recursive) YAML composer runs.
MAX_STUDY_BYTES = 1 << 20
MAX_STUDY_DEPTH = 64


def yaml_depth(text: str, stop: int = MAX_STUDY_DEPTH) -> int:
    """The deepest nesting of mappings and sequences in a YAML text (counting stops past ``stop``), from the
    scanner's tokens, which read the text in a loop, without the recursion that composing the document needs."""
    import yaml

    depth = deepest = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
                              yaml.FlowSequenceStartToken)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > stop:
                break
        elif isinstance(token, (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)):
            depth -= 1
    return deepest


#: Tasks of the built-in study when --data-dir points at local files in hub schema (file, default limit).
DATA_DIR_TASKS = {
    "piqa": ("piqa/validation.jsonl", 200),
    "openbookqa": ("openbookqa/test.jsonl", 200),
    "hellaswag": ("hellaswag/validation.jsonl", 100),
    "boolq": ("boolq/validation.jsonl", 100),
}


def default_study(data_dir: Path | None = None, output: str = "quantcal-report") -> StudySpec:
    """The bundled SmolLM2 against three post-training recipes on the offline task (and local benchmarks)."""
    tasks: list[dict[str, Any]] = [{"name": "arithmetic"}]
    if data_dir is not None:
        for name, (rel, limit) in DATA_DIR_TASKS.items():
            if (data_dir / rel).is_file():
                tasks.append({"name": name, "data_file": str(data_dir / rel), "limit": limit})
        if len(tasks) == 1:
            raise QuantcalError(f"`data_dir` {data_dir}: none of {', '.join(r for r, _ in DATA_DIR_TASKS.values())} found")
    return parse_study({
        "name": "default: SmolLM2-135M-Instruct, post-training quantization",
        "reference": "smollm2-135m-instruct",
        "variants": [
            {"name": "rtn-w8-g64", "recipe": "rtn:bits=8,group_size=64"},
            {"name": "rtn-w4-g64", "recipe": "rtn:bits=4,group_size=64"},
            {"name": "gguf-q4_0", "recipe": "gguf:q4_0"},
        ],
        "tasks": tasks,
        "output": output,
    }, Path.cwd())
