"""The task registry: every task by name, with lm-evaluation-harness 0.4.x prompts."""

from __future__ import annotations

from quantcal.errors import QuantcalError
from quantcal.tasks.arc import ARC_CHALLENGE, ARC_EASY
from quantcal.tasks.arithmetic import ARITHMETIC
from quantcal.tasks.base import Task
from quantcal.tasks.load import load_items
from quantcal.tasks.boolq import BOOLQ
from quantcal.tasks.custom import DEFAULT_TEMPLATE, custom_task
from quantcal.tasks.hellaswag import HELLASWAG
from quantcal.tasks.lm_eval_tasks import is_lm_eval, lm_eval_task
from quantcal.tasks.mmlu import MMLU
from quantcal.tasks.openbookqa import OPENBOOKQA
from quantcal.tasks.piqa import PIQA
from quantcal.tasks.truthfulqa import TRUTHFULQA_MC1, TRUTHFULQA_MC2
from quantcal.tasks.xstorycloze import XSTORYCLOZE_EN

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        ARC_EASY, ARC_CHALLENGE, BOOLQ, HELLASWAG, PIQA, OPENBOOKQA, XSTORYCLOZE_EN, MMLU,
        TRUTHFULQA_MC1, TRUTHFULQA_MC2, ARITHMETIC, custom_task(),
    )
}


def get_task(name: str, template: str | None = None, include: str | None = None, trust_code: bool = False) -> Task:
    """Look a task up by name; ``template`` applies to the ``custom`` task only. ``lm-eval:NAME`` is a task of
    lm-evaluation-harness's registry (with ``include``: a folder of the user's own task YAMLs, whose Python hooks
    run only with ``trust_code``)."""
    if is_lm_eval(name):
        if template is not None:
            raise QuantcalError(f"`template` applies to the custom task only, not {name!r}")
        return lm_eval_task(name, include, trust_code)
    if include is not None:
        raise QuantcalError(f"`lm_eval_include` applies to lm-eval:NAME tasks only, not {name!r}")
    if name == "custom":
        return custom_task(template or DEFAULT_TEMPLATE)
    if template is not None:
        raise QuantcalError(f"`template` applies to the custom task only, not {name!r}")
    try:
        return TASKS[name]
    except KeyError:
        raise QuantcalError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


__all__ = ["TASKS", "Task", "get_task", "load_items"]
