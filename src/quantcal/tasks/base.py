"""What a task is, and how its rows become validated :class:`~quantcal.tasks.items.Item` records.

A task maps one dataset row (Hugging Face schema) to ``(context, choices, gold)`` with the same
prompt, target delimiter and gold index as lm-evaluation-harness 0.4.x, so accuracies are comparable
with published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from quantcal.tasks.data_files import Row, read_hub_rows, read_local_rows
from quantcal.errors import QuantcalError
from quantcal.tasks.items import Item
from quantcal.tasks.prompts import PromptSetup

#: A row builder returns the question text, the choice strings and the gold index (or, for MC2, all true indices).
Builder = Callable[[dict[str, Any]], tuple[str, Sequence[str], int | Sequence[int]]]
#: Few-shot samplers, as lm-eval names them: ``default`` draws at random (seeded), ``first_n`` takes the pool's first.
Sampler = Literal["default", "first_n"]


@dataclass(frozen=True)
class Task:
    """A multiple-choice task.

    ``kind="mc2"`` marks TruthfulQA-MC2 style items whose score is the normalised probability mass
    on the set of true answers; every other task has one gold answer. ``description`` gives the line before the
    prompt (lm-eval's ``description``, e.g. MMLU's subject line). Few-shot examples come from ``fewshot_split`` on
    the hub (None: the evaluation split minus the item), drawn by ``sampler``, from rows that share the item's
    ``fewshot_group`` field when set (MMLU: its subject).
    """

    name: str
    build: Builder
    fields: tuple[str, ...]
    hub_path: str | None = None
    hub_config: str | None = None
    split: str = "validation"
    id_field: str | None = None
    target_delimiter: str = " "
    kind: Literal["mc", "mc2"] = "mc"
    summary: str = ""
    description: Callable[[dict[str, Any]], str] | None = field(default=None, compare=False)
    fewshot_split: str | None = None
    sampler: Sampler = "default"
    fewshot_group: str | None = None
    generate: Callable[[int | None], list[dict[str, Any]]] | None = field(default=None, compare=False)
    #: Items built elsewhere (lm-eval's task registry): ``loader(limit, setup, tokenizer)``; rows are not read here.
    loader: Callable[[int | None, PromptSetup, Any], list[Item]] | None = field(default=None, compare=False)
    #: Few-shot examples when none are asked for: 0, or what an lm-eval task's YAML declares (``num_fewshot``).
    default_fewshot: int = 0
    #: Python files that loading the task imports (an lm-eval include folder's ``!function`` hooks): run only with
    #: the user's consent, never while planning.
    code: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        if self.loader is not None:
            return "lm-evaluation-harness task registry"
        if self.generate is not None:
            return "built-in generator"
        if self.hub_path:
            return f"{self.hub_path}" + (f" ({self.hub_config})" if self.hub_config else "") + f" [{self.split}]"
        return "local file (`data_file`)"


def task_rows(task: Task, data_file: str | Path | None = None, limit: int | None = None) -> list[Row]:
    """The task's rows: a local file, its generator or the hub (first ``limit``)."""
    if data_file is not None:
        rows = read_local_rows(data_file)
    elif task.generate is not None:
        rows = [Row(d, i, f"{task.name}[{i}]") for i, d in enumerate(task.generate(limit))]
    elif task.hub_path is not None:
        rows = read_hub_rows(task.hub_path, task.hub_config, task.split)
    else:
        raise QuantcalError(f"task {task.name!r} needs a data file: pass a local copy as `data_file`")
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise QuantcalError(f"task {task.name!r}: no items in {data_file or task.source}")
    return rows


def build_item(task: Task, row: Row) -> Item:
    """Validate one row and turn it into an Item, or raise one clear error naming the row."""
    data = row.data
    item_id = _item_id(task, row)
    where = f"{row.origin}: item {item_id}"
    missing = [f for f in task.fields if f not in data or data[f] is None]
    if missing:
        raise QuantcalError(
            f"{where}: missing field {', '.join(repr(m) for m in missing)}; task {task.name} expects fields {', '.join(task.fields)}"
        )
    try:
        context, choices, gold = task.build(data)
    except QuantcalError as exc:
        raise QuantcalError(f"{where}: {exc}") from exc
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise QuantcalError(
            f"{where}: malformed row ({type(exc).__name__}: {exc}); task {task.name} expects fields {', '.join(task.fields)}"
        ) from exc
    choices = tuple(choices)
    if len(choices) < 2:
        raise QuantcalError(f"{where}: needs at least 2 choices, got {len(choices)}")
    for i, choice in enumerate(choices):
        if not isinstance(choice, str):
            raise QuantcalError(f"{where}: choice {i} is {type(choice).__name__}, expected a string")
        if not choice.strip():
            raise QuantcalError(f"{where}: choice {i} is empty")
    if not isinstance(context, str):
        raise QuantcalError(f"{where}: prompt is {type(context).__name__}, expected a string")
    description = task.description(data) if task.description is not None else ""
    golds = (gold,) if isinstance(gold, int) else tuple(gold)
    if not golds:
        raise QuantcalError(f"{where}: no true answer")
    for g in golds:
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(choices):
            raise QuantcalError(f"{where}: gold answer {g!r} out of range; expected an index in 0..{len(choices) - 1}")
    return Item(id=item_id, context=description + context, choices=choices, gold=golds[0], golds=golds,
                meta={"origin": row.origin, "question": context, "description": description})


def _item_id(task: Task, row: Row) -> str:
    if task.id_field and row.data.get(task.id_field) not in (None, ""):
        return str(row.data[task.id_field])
    return str(row.index)


def check_unique_ids(task: Task, items: list[Item], rows: list[Row]) -> None:
    seen: dict[str, str] = {}
    for item, row in zip(items, rows):
        if item.id in seen:
            raise QuantcalError(f"{row.origin}: item id {item.id!r} repeats {seen[item.id]}; ids must be unique within a task")
        seen[item.id] = row.origin


def as_int(value: Any, what: str) -> int:
    """Parse an integer label that datasets store as int or as a digit string (HellaSwag's "0".."3")."""
    if isinstance(value, bool):
        raise QuantcalError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise QuantcalError(f"{what} must be an integer, got {value!r}")
