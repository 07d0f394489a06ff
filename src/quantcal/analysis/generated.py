"""From a stored generation to a scored answer: the filtered answer, its correctness (the task's filters and
exact match, :mod:`quantcal.tasks.answer_filters`) and its confidences, each one number in ``[0, 1]``:

- ``conf_seq_prob``: ``prod_t p(x_t)`` over the kept generated tokens (maximum sequence probability);
- ``conf_mean_prob``: ``exp(mean_t log p(x_t))``, the length-normalized form (a geometric mean);
- ``conf_answer_prob``: ``prod_t p(x_t)`` over the tokens that overlap the filtered answer's characters (for
  GSM8K the final number, not the reasoning before it); 0 when the filter found no answer (the fallback
  ``[invalid]`` is no answer to be confident in).

An empty generation has ``conf_seq_prob = conf_mean_prob = 1`` (no token was doubted); it is wrong unless a target
is empty.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from quantcal.tasks.answer_filters import apply_filters, exact_match
from quantcal.tasks.generation_tasks import GenerationTask

CONFIDENCES = ("conf_seq_prob", "conf_mean_prob", "conf_answer_prob")


def confidences(logprobs: Sequence[float], offsets: Sequence[int], span: tuple[int, int] | None) -> dict[str, float]:
    """The three confidences of one generation (module doc); ``offsets`` are the tokens' end characters."""
    total = float(sum(logprobs))
    out = {"conf_seq_prob": math.exp(total), "conf_mean_prob": math.exp(total / len(logprobs)) if logprobs else 1.0}
    if span is None:
        out["conf_answer_prob"] = 0.0
        return out
    start, end = span
    inside, previous = 0.0, 0
    for lp, stop in zip(logprobs, offsets):
        if previous < end and stop > start:  # the token's characters (previous, stop] overlap the answer
            inside += lp
        previous = stop
    out["conf_answer_prob"] = math.exp(inside)
    return out


def score_generation(task: GenerationTask, record: dict[str, Any], filter_name: str | None = None) -> dict[str, Any]:
    """One stored generation as a scored record: ``filtered``, ``correct`` and the confidences, under the task's
    first filter (or ``filter_name``)."""
    name = filter_name or next(iter(task.filters))
    filtered, span = apply_filters(record["text"], task.filters[name])
    correct = exact_match(filtered, record["targets"], task.match)
    return {"item_id": record["item_id"], "position": record["position"], "filter": name, "generation": record["text"],
            "filtered": filtered, "correct": bool(correct), "n_generated_tokens": len(record["tokens"]),
            "stopped": record["stopped"], **confidences(record["logprobs"], record["offsets"], span)}
