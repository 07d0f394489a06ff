"""PIQA (Bisk et al. 2020), hub ``baber/piqa``. lm-eval prompt: ``Question: {goal}\\nAnswer:``."""

from typing import Any

from quantcal.tasks.base import Task, as_int


def _build(row: dict[str, Any]) -> tuple[str, list[str], int]:
    return f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], as_int(row["label"], "label")


PIQA = Task(
    name="piqa", build=_build, fields=("goal", "sol1", "sol2", "label"),
    hub_path="baber/piqa", split="validation", fewshot_split="train", summary="physical commonsense, 2 solutions",
)
