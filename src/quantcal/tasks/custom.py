"""Your own questions: JSON lines ``{"id"?, "question", "choices": [...], "answer": index}``.

The prompt is ``template.format(question=...)`` (default ``Question: {question}\\nAnswer:``, lm-eval's
ARC/PIQA style) and each choice is scored as ``" " + choice``. Extra fields of the row can be used
in the template by name.
"""

from __future__ import annotations

import re
import string
from typing import Any

from quantcal.errors import QuantcalError
from quantcal.tasks.base import Task, as_int

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"


#: A template field: a row's field by name, optionally one element of a list field (``{choices[0]}``).
_FIELD = re.compile(r"[A-Za-z_]\w*(\[\d{1,4}\])?")
#: A format spec: alignment, sign and a width or precision of at most three digits (``{question:>20}``).
_SPEC = re.compile(r"(.?[<>=^])?[+\- ]?0?\d{0,3}(\.\d{1,3})?[sdf%]?")


def check_template(template: str) -> None:
    """Refuse a prompt template that is not a plain fill-in of the row's fields: attribute access (``{question.x}``),
    conversions, or format specs past a small width (``{question:>999999999}`` would build a gigabyte string)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise QuantcalError(f"prompt template {template!r}: {exc} (write literal braces as {{{{ and }}}})") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not _FIELD.fullmatch(name) or conversion is not None or not _SPEC.fullmatch(spec or ""):
            raise QuantcalError(f"prompt template field {{{name}{'!' + conversion if conversion else ''}"
                                f"{':' + spec if spec else ''}}}: a template names a row's fields ({{question}}, "
                                "{choices[0]}), with at most a short format spec such as :>20")


def custom_task(template: str = DEFAULT_TEMPLATE, target_delimiter: str = " ") -> Task:
    """A task over a local file of your own questions, with an optional prompt template."""
    if "{question" not in template:
        raise QuantcalError(f"prompt template must contain {{question}}, got {template!r}")
    check_template(template)

    def build(row: dict[str, Any]) -> tuple[str, list[str], int]:
        choices = row["choices"]
        if not isinstance(choices, list):
            raise QuantcalError(f"'choices' must be a list of strings, got {type(choices).__name__}")
        try:
            context = template.format(**row)
        except KeyError as exc:
            raise QuantcalError(f"prompt template names field {exc} that the row does not have") from exc
        except (IndexError, TypeError, ValueError) as exc:  # {choices[9]} of a shorter list, :d of a string, ...
            raise QuantcalError(f"prompt template does not fit this row ({exc})") from None
        return context, choices, as_int(row["answer"], "answer")

    return Task(
        name="custom", build=build, fields=("question", "choices", "answer"), id_field="id",
        target_delimiter=target_delimiter, summary="your own questions from a JSON lines file",
    )
