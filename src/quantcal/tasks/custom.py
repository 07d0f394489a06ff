"""Your own questions: JSON lines ``{"id"?, "question", "choices": [...], "answer": index}``.

The prompt is ``template.format(question=...)`` (default ``Question: {question}\\nAnswer:``, lm-eval's
ARC/PIQA style) and each choice is scored as ``" " + choice``. Extra fields of the row can be used
in the template by name.
"""

from __future__ import annotations

from typing import Any

from quantcal.errors import QuantcalError
from quantcal.tasks.base import Task, as_int

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"


def custom_task(template: str = DEFAULT_TEMPLATE, target_delimiter: str = " ") -> Task:
    """A task over a local file of your own questions, with an optional prompt template."""
    if "{question" not in template:
        raise QuantcalError(f"prompt template must contain {{question}}, got {template!r}")

    def build(row: dict[str, Any]) -> tuple[str, list[str], int]:
        choices = row["choices"]
        if not isinstance(choices, list):
            raise QuantcalError(f"'choices' must be a list of strings, got {type(choices).__name__}")
        try:
            context = template.format(**row)
        except KeyError as exc:
            raise QuantcalError(f"prompt template names field {exc} that the row does not have") from exc
        return context, choices, as_int(row["answer"], "answer")

    return Task(
        name="custom", build=build, fields=("question", "choices", "answer"), id_field="id",
        target_delimiter=target_delimiter, summary="your own questions from a JSON lines file",
    )
