"""AI2 ARC Easy and Challenge (Clark et al. 2018), hub ``allenai/ai2_arc``. lm-eval prompt: ``Question: {question}\\nAnswer:``."""

from typing import Any

from quantcal.tasks.base import Task


def _build(row: dict[str, Any]) -> tuple[str, list[str], int]:
    choices = row["choices"]
    return f"Question: {row['question']}\nAnswer:", list(choices["text"]), list(choices["label"]).index(row["answerKey"])


_FIELDS = ("question", "choices", "answerKey")
ARC_EASY = Task(
    name="arc_easy", build=_build, fields=_FIELDS, hub_path="allenai/ai2_arc", hub_config="ARC-Easy",
    split="test", fewshot_split="train", id_field="id", summary="grade-school science, easy set",
)
ARC_CHALLENGE = Task(
    name="arc_challenge", build=_build, fields=_FIELDS, hub_path="allenai/ai2_arc", hub_config="ARC-Challenge",
    split="test", fewshot_split="train", id_field="id", summary="grade-school science, challenge set",
)
