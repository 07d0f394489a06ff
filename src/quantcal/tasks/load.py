"""Loading a task's items: its rows read (local file, generator or hub), validated into items, and the prompt setup
(few-shot examples, chat template) applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantcal.errors import QuantcalError
from quantcal.tasks.base import Task, build_item, check_unique_ids, task_rows
from quantcal.tasks.fewshot import apply_setup
from quantcal.tasks.items import Item
from quantcal.tasks.prompts import PromptSetup


def load_items(task: Task, data_file: str | Path | None = None, limit: int | None = None,
               setup: PromptSetup | None = None, tokenizer: Any = None, skip: int = 0) -> list[Item]:
    """Read the task's rows (local file if given, else the hub, else its generator) and build items, with the prompt
    ``setup`` (few-shot examples, chat template: the template is ``tokenizer``'s) when one is given.

    ``skip`` leaves out the first rows and ``limit`` keeps the next ones (items ``skip .. skip+limit-1``); an item
    keeps the id, prompt and few-shot examples it has in the whole file, so a split of the file by ``skip`` and
    ``limit`` scores the same items as the whole."""
    if limit is not None and limit < 1:
        raise QuantcalError(f"`limit` must be a positive number of items, got {limit}")
    if skip < 0:
        raise QuantcalError(f"`skip` must be a number of items (0 or more), got {skip}")
    end = skip + limit if limit is not None else None
    if task.loader is not None:
        if data_file is not None:
            raise QuantcalError(f"{task.name}: lm-eval tasks read their data as their YAML says; point a task YAML's "
                                "dataset_kwargs at a local file (see `lm_eval_include`) instead of `data_file`")
        return _skipped(task, task.loader(end, setup or PromptSetup(), tokenizer), skip, data_file)
    rows = task_rows(task, data_file, end)
    items = [build_item(task, row) for row in rows]
    check_unique_ids(task, items, rows)
    if setup is not None and not setup.is_default:
        items = apply_setup(task, items, rows, setup, data_file, tokenizer)
    return _skipped(task, items, skip, data_file)


def _skipped(task: Task, items: list[Item], skip: int, data_file: str | Path | None) -> list[Item]:
    if skip and len(items) <= skip:
        raise QuantcalError(f"task {task.name!r}: `skip` {skip} leaves no item ({len(items)} in "
                            f"{data_file or task.source})")
    return items[skip:]
