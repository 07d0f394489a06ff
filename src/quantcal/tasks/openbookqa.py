"""OpenBookQA (Mihaylov et al. 2018), hub ``allenai/openbookqa`` (main). lm-eval prompt: the bare question stem."""

from typing import Any

from quantcal.tasks.base import Task


def _build(row: dict[str, Any]) -> tuple[str, list[str], int]:
    choices = row["choices"]
    return row["question_stem"], list(choices["text"]), list(choices["label"]).index(str(row["answerKey"]).lstrip())


OPENBOOKQA = Task(
    name="openbookqa", build=_build, fields=("question_stem", "choices", "answerKey"),
    hub_path="allenai/openbookqa", hub_config="main", split="test", fewshot_split="train", id_field="id",
    summary="elementary science, 4 choices",
)
