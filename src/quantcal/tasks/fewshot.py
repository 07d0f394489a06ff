"""Few-shot examples for the built-in tasks, drawn as lm-evaluation-harness 0.4.x draws them.

The pool: ``fewshot_file`` if given; else the task's few-shot split on the hub (``Task.fewshot_split``); else the
evaluation rows themselves (the whole file, not only the first ``limit``). When the pool is the evaluation split the
item itself is left out of its own examples (lm-eval does so when ``fewshot_split == test_split``).

Samplers (lm-eval's ``api/samplers.py``):

- ``default``: one ``random.Random(seed)`` for the task, advanced item by item in evaluation order; each item takes
  ``rnd.sample(pool, K)``, or ``rnd.sample(pool, K + 1)`` without the item (its first K left) when the pool is the
  evaluation split; if duplicates of the item left fewer than K, ``rnd.sample`` again from the pool without them.
  So the first N items get the same examples whatever ``limit`` is.
- ``first_n``: the pool's first K rows (MMLU: of the item's subject), the same for every item.

An example is rendered as its question, the target delimiter and the text of its gold choice (see
:mod:`quantcal.tasks.prompts`).
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from quantcal.tasks.data_files import Row, read_hub_rows, read_local_rows
from quantcal.errors import QuantcalError
from quantcal.tasks.items import Item
from quantcal.tasks.prompts import Example, PromptParts, PromptSetup, render
from quantcal.tasks.base import Task, build_item, task_rows


def fewshot_pool(task: Task, setup: PromptSetup, data_file: str | Path | None) -> tuple[list[Row], bool]:
    """The rows examples are drawn from, and whether they are the evaluation split (the item is then left out)."""
    if setup.fewshot_file is not None:
        same = data_file is not None and Path(setup.fewshot_file).resolve() == Path(data_file).resolve()
        return read_local_rows(setup.fewshot_file), same
    if data_file is None and task.generate is None and task.hub_path is not None and task.fewshot_split is not None:
        return read_hub_rows(task.hub_path, task.hub_config, task.fewshot_split), task.fewshot_split == task.split
    return task_rows(task, data_file), True


def _example(task: Task, row: Row) -> Example:
    item = build_item(task, row)
    return Example(item.meta["question"], item.choices[item.gold])


def sample_examples(task: Task, rows: Sequence[Row], pool: Sequence[Row], k: int, seed: int,
                    exclude_self: bool) -> list[list[Row]]:
    """For each evaluation row in order, the pool rows of its ``k`` examples (module docstring)."""
    if task.sampler == "first_n":
        return [_first_n(task, row, pool, k, exclude_self) for row in rows]
    available = len(pool) - (1 if exclude_self else 0)
    if k > available:
        raise QuantcalError(f"`num_fewshot` is {k} but the few-shot pool of {task.name} has {available} example(s)"
                            + (" besides the item" if exclude_self else ""))
    rnd = random.Random(seed)
    picked = []
    for row in rows:
        if not exclude_self:
            picked.append(rnd.sample(list(pool), k))
            continue
        drawn = [x for x in rnd.sample(list(pool), k + 1) if x.data != row.data][:k]
        if len(drawn) < k:  # the pool holds copies of the item: draw again without any of them
            drawn = rnd.sample([x for x in pool if x.data != row.data], k)
        picked.append(drawn)
    return picked


def _first_n(task: Task, row: Row, pool: Sequence[Row], k: int, exclude_self: bool) -> list[Row]:
    group = task.fewshot_group
    candidates = [x for x in pool if group is None or x.data.get(group) == row.data.get(group)]
    if exclude_self:
        candidates = [x for x in candidates if x.data != row.data]
    if k > len(candidates):
        where = f" for {group} {row.data.get(group)!r}" if group else ""
        raise QuantcalError(f"`num_fewshot` is {k} but the few-shot pool of {task.name}{where} has "
                            f"{len(candidates)} example(s)")
    return candidates[:k]


def apply_setup(task: Task, items: Sequence[Item], rows: Sequence[Row], setup: PromptSetup,
                data_file: str | Path | None, tokenizer: Any = None) -> list[Item]:
    """The items with their contexts rendered under ``setup`` (few-shot examples, system instruction, chat)."""
    examples: list[list[Example]] = [[] for _ in items]
    if setup.num_fewshot:
        pool, exclude_self = fewshot_pool(task, setup, data_file)
        if not pool:
            raise QuantcalError(f"task {task.name}: the few-shot pool is empty")
        rendered: dict[int, Example] = {}
        for i, drawn in enumerate(sample_examples(task, rows, pool, setup.num_fewshot, setup.fewshot_seed,
                                                  exclude_self)):
            examples[i] = [rendered.setdefault(id(x), _example(task, x)) for x in drawn]
    out = []
    for item, shots in zip(items, examples):
        parts = PromptParts(item.meta["question"], item.meta["description"], tuple(shots))
        out.append(replace(item, context=render(parts, setup, task.target_delimiter, tokenizer)))
    return out
