"""BoolQ (Clark et al. 2019), SuperGLUE. lm-eval prompt: ``{passage}\\nQuestion: {question}?\\nAnswer:``, choices no/yes.

The hub copy lm-eval 0.4.x reads is ``aps/super_glue`` (config ``boolq``), a parquet mirror of ``super_glue``.
"""

from typing import Any

from quantcal.tasks.base import Task, as_int


def _build(row: dict[str, Any]) -> tuple[str, list[str], int]:
    return f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"], as_int(row["label"], "label")


BOOLQ = Task(
    name="boolq", build=_build, fields=("passage", "question", "label"),
    hub_path="aps/super_glue", hub_config="boolq", split="validation", fewshot_split="train", id_field="idx",
    summary="yes/no reading comprehension over long passages",
)
