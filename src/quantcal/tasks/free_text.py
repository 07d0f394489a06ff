"""Which tasks are answered in free text, and their items: the built-in ``gsm8k`` / ``triviaqa``
(:mod:`quantcal.tasks.generation_tasks`, hub-schema files) and lm-eval's ``generate_until`` tasks
(``lm-eval:NAME``, :mod:`quantcal.tasks.lm_eval_generation`); and the scoring definition of a stored run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantcal.errors import QuantcalError
from quantcal.tasks.generation_tasks import GENERATION_TASKS, GenerationTask, GenItem, load_generation_items
from quantcal.tasks.lm_eval_generation import load_lm_eval_generation, task_from_json, task_to_json
from quantcal.tasks.prompts import PromptSetup, require_chat_template, task_label

if TYPE_CHECKING:
    from quantcal.tasks.lm_eval_tasks import GroupSpec

PREFIX = "lm-eval:"


def is_free_text(name: str, include: str | None = None) -> bool:
    """Whether ``name`` is answered in free text: a built-in free-text task, an lm-eval ``generate_until`` task, or an
    lm-eval group (or tag) whose every task is one (read from the YAMLs: no code runs)."""
    if name.split("[")[0] in GENERATION_TASKS:
        return True
    if not name.startswith(PREFIX):
        return False
    from quantcal.tasks.lm_eval_tasks import yaml_output_type

    if yaml_output_type(name[len(PREFIX):], include) == "generate_until":
        return True
    members = free_text_group(name, include)
    return members is not None


def free_text_group(name: str, include: str | None = None) -> "tuple[list[str], GroupSpec] | None":
    """An lm-eval group (or tag) of ``generate_until`` tasks: its tasks (``lm-eval:NAME`` each, in lm-eval's order)
    and how its exact match aggregates them; None for a single task, an unknown name, or a group with a task of
    another output type."""
    from quantcal.tasks.lm_eval_tasks import GroupSpec, expand, yaml_output_type

    if not name.startswith(PREFIX):
        return None
    bare = name[len(PREFIX):]
    try:
        expansion = expand(name, include)
    except QuantcalError:
        return None
    if expansion.tasks == [bare] or not expansion.tasks:
        return None
    if any(yaml_output_type(t, include) != "generate_until" for t in expansion.tasks):
        return None
    group = expansion.groups.get(bare) or GroupSpec(bare, list(expansion.tasks), True)  # a tag: by size
    return [PREFIX + t for t in expansion.tasks], group


def default_shots(name: str, include: str | None = None) -> int:
    """The task's own few-shot count (lm-eval's YAML for its tasks)."""
    if name in GENERATION_TASKS:
        return GENERATION_TASKS[name].default_fewshot
    from quantcal.tasks.lm_eval_tasks import yaml_num_fewshot

    return yaml_num_fewshot(name[len(PREFIX):], include)


def load_free_text(name: str, data_file: str | Path | None = None, limit: int | None = None,
                   num_fewshot: int | None = None, fewshot_file: str | Path | None = None, fewshot_seed: int = 1234,
                   skip: int = 0, include: str | None = None, trust_code: bool = False, tokenizer: Any = None,
                   apply_chat_template: bool = False, say: Any = lambda m: None) -> tuple[GenerationTask, list[GenItem], str]:
    """The task, its items and its name in the store (``gsm8k[5-shot]``)."""
    if name not in GENERATION_TASKS and not name.startswith(PREFIX):
        raise QuantcalError(f"unknown generation task {name!r}; known: {', '.join(GENERATION_TASKS)} and lm-eval's "
                            "generate_until tasks (lm-eval:NAME)")
    shots = default_shots(name, include) if num_fewshot is None else num_fewshot
    setup = PromptSetup(shots, fewshot_seed, None, apply_chat_template)
    label = task_label(name, setup)
    if apply_chat_template:
        require_chat_template(tokenizer)
    if name in GENERATION_TASKS:
        task = GENERATION_TASKS[name]
        items = load_generation_items(task, data_file, limit, num_fewshot, fewshot_file, fewshot_seed, skip,
                                      tokenizer if apply_chat_template else None)
        return task, items, label
    for what, value in (("data_file", data_file), ("fewshot_file", fewshot_file)):
        if value is not None:
            raise QuantcalError(f"{name}: `{what}` is for built-in tasks; an lm-eval task reads the files its YAML "
                                "names (write one with dataset_path: json and pass its folder as `lm_eval_include`)")
    if skip:
        raise QuantcalError(f"{name}: `skip` is for built-in tasks (lm-eval takes the first `limit` documents)")
    task, items = load_lm_eval_generation(name, include, limit, setup, tokenizer, trust_code, say)
    return task, items, label


def scoring_task(config: dict[str, Any]) -> GenerationTask:
    """A stored generation run's task, as its config recorded it (lm-eval tasks carry their definition)."""
    if "scoring" in config:
        return task_from_json(config["scoring"])
    return GENERATION_TASKS[config["task"]]


def scoring_record(task: GenerationTask) -> dict[str, Any]:
    """What a run's config keeps of ``task`` to score its answers again (lm-eval tasks: their definition)."""
    return {"scoring": task_to_json(task)} if task.name.startswith(PREFIX) else {}
