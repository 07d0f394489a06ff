"""HellaSwag (Zellers et al. 2019), hub ``Rowan/hellaswag``, with lm-eval's text preprocessing.

Context ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``; each ending preprocessed
the same way: strip, `` [title]`` -> ``. ``, drop ``[...]`` markers, collapse double spaces.
"""

import re
from typing import Any

from quantcal.tasks.base import Task, as_int

_BRACKETS = re.compile(r"\[.*?\]")


def preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup of WikiHow artefacts."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = _BRACKETS.sub("", text)
    return text.replace("  ", " ")


def _build(row: dict[str, Any]) -> tuple[str, list[str], int]:
    ctx = row["ctx_a"] + " " + (row.get("ctx_b") or "").capitalize()
    endings = row["endings"]
    if not isinstance(endings, list):
        raise TypeError("endings must be a list of strings")
    return preprocess(row["activity_label"] + ": " + ctx), [preprocess(e) for e in endings], as_int(row["label"], "label")


HELLASWAG = Task(
    name="hellaswag", build=_build, fields=("activity_label", "ctx_a", "endings", "label"),
    hub_path="Rowan/hellaswag", split="validation", fewshot_split="train", id_field="ind",
    summary="commonsense sentence completion, 4 long endings",
)
