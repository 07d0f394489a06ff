"""Local copies of built-in tasks' hub data: what ``--data-file`` and ``--data-dir`` read, written by
``quantcal download`` so a study runs on a machine that has no hub (or not every time).

Each split is read through ``datasets`` exactly as a task reads the hub (:func:`quantcal.tasks.data_files.read_hub_rows`,
which fails in seconds and one line when the hub is out of reach and the datasets cache lacks it) and written one
JSON object per line, in the hub's own schema, to ``OUT/<task>/<split>.jsonl``: the layout ``--data-dir`` and the
example studies' ``${data_dir}`` expect. A file is written whole or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from quantcal.errors import QuantcalError
from quantcal.faults import write_text_atomic
from quantcal.tasks.data_files import read_hub_rows


@dataclass(frozen=True)
class DownloadedSplit:
    task: str
    split: str
    path: Path
    rows: int


def relative_path(task: Any, split: str | None = None) -> str:
    """Where a task's split lives under a data folder: ``piqa/validation.jsonl``."""
    return f"{task.name}/{split or task.split}.jsonl"


def splits_of(task: Any, fewshot: bool) -> list[str]:
    """The evaluation split, and with ``fewshot`` the split few-shot examples come from (when it is another)."""
    if task.hub_path is None:
        raise QuantcalError(f"task {task.name} has no hub data to download (it is generated or reads your own file)")
    splits = [task.split]
    if fewshot and task.fewshot_split and task.fewshot_split != task.split:
        splits.append(task.fewshot_split)
    return splits


def download_task(task: Any, out: Path, split: str) -> DownloadedSplit:
    """One split of a task from the hub into ``out/<task>/<split>.jsonl``."""
    rows = read_hub_rows(task.hub_path or "", task.hub_config, split)
    path = out / relative_path(task, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r.data, ensure_ascii=False, default=str) + "\n" for r in rows))
    return DownloadedSplit(task.name, split, path, len(rows))


def download(tasks: Sequence[Any], out: Path, fewshot: bool = False) -> list[DownloadedSplit]:
    """Every task's (a multiple-choice :class:`~quantcal.tasks.base.Task` or a free-text
    :class:`~quantcal.tasks.generation_tasks.GenerationTask`) evaluation split (and few-shot split): checked first, so a bad name fails before any download."""
    plan = [(task, split) for task in tasks for split in splits_of(task, fewshot)]
    return [download_task(task, out, split) for task, split in plan]
