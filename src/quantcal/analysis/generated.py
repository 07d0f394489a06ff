"""From a stored generation to a scored answer: the filtered answer, its correctness (the task's filters and
exact match, :mod:`quantcal.tasks.answer_filters`) and its confidences, each one number in ``[0, 1]``:

- ``conf_seq_prob``: ``prod_t p(x_t)`` over the kept generated tokens (maximum sequence probability);
- ``conf_mean_prob``: ``exp(mean_t log p(x_t))``, the length-normalized form (a geometric mean);
- ``conf_answer_prob``: ``prod_t p(x_t)`` over the tokens that overlap the filtered answer's characters (for
  GSM8K the final number, not the reasoning before it); 0 when the filter found no answer (the fallback
  ``[invalid]`` is no answer to be confident in).

An empty generation has ``conf_seq_prob = conf_mean_prob = 1`` (no token was doubted); it is wrong unless a target
is empty.

Two more, each measured by a further pass and stored beside the generation (``generation_extras``):

- ``conf_p_true`` (Kadavath et al. 2022, "Language Models (Mostly) Know What They Know", P(True)): the model is asked
  whether its proposed answer is right (:data:`P_TRUE_PROMPT`, the answer being the filtered one, or the generation
  when the filter found none) and ``conf_p_true = softmax(ll(" (A)"), ll(" (B)"))[0]``, the two continuations
  scored as a multiple-choice item by quantcal's scorer;
- ``conf_consistency`` (the sampling-based agreement of Wang et al. 2023 and LM-Polygraph's lexical similarity in its
  simplest form): the share of ``k`` answers sampled with a temperature whose filtered answer matches the greedy one
  under the task's exact-match rules.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from quantcal.tasks.answer_filters import apply_filters, exact_match
from quantcal.tasks.generation_tasks import GenerationTask

CONFIDENCES = ("conf_seq_prob", "conf_mean_prob", "conf_answer_prob")
#: Measured only when asked for (a second prompt; k samples).
EXTRA_CONFIDENCES = ("conf_p_true", "conf_consistency")
#: Kadavath et al. 2022's self-evaluation prompt (their Figure 1 format, zero-shot).
P_TRUE_PROMPT = ("Question: {question}\nProposed Answer: {answer}\nIs the proposed answer:\n (A) True\n (B) False\n"
                 "The proposed answer is:")
P_TRUE_CHOICES = ("(A)", "(B)")


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


def proposed_answer(task: GenerationTask, text: str, filter_name: str | None = None) -> str:
    """What P(True) asks about: the filtered answer, or the generation itself (stripped) when the filter found none."""
    name = filter_name or next(iter(task.filters))
    filtered, span = apply_filters(text, task.filters[name])
    return filtered if span is not None else text.strip()[:500]


def p_true(logliks: Sequence[float]) -> float:
    """``softmax(ll_A, ll_B)[0]``: the probability of " (A)" (True) between the two continuations."""
    a, b = logliks
    top = max(a, b)
    return math.exp(a - top) / (math.exp(a - top) + math.exp(b - top))


def consistency(task: GenerationTask, greedy: str, samples: Sequence[str], filter_name: str | None = None) -> float:
    """Share of ``samples`` whose filtered answer matches the greedy generation's (the task's exact-match rules)."""
    name = filter_name or next(iter(task.filters))
    answer = apply_filters(greedy, task.filters[name])[0]
    agree = [exact_match(apply_filters(s, task.filters[name])[0], [answer], task.match) for s in samples]
    return sum(agree) / len(agree) if agree else float("nan")


def score_generation(task: GenerationTask, record: dict[str, Any], filter_name: str | None = None,
                     extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """One stored generation as a scored record: ``filtered``, ``correct`` and the confidences, under the task's
    first filter (or ``filter_name``); ``extras`` (``p_true``: the two log-likelihoods; ``samples``: sampled texts)
    add ``conf_p_true`` and ``conf_consistency``."""
    name = filter_name or next(iter(task.filters))
    filtered, span = apply_filters(record["text"], task.filters[name])
    correct = exact_match(filtered, record["targets"], task.match)
    out = {"item_id": record["item_id"], "position": record["position"], "filter": name, "generation": record["text"],
           "filtered": filtered, "correct": bool(correct), "n_generated_tokens": len(record["tokens"]),
           "stopped": record["stopped"], **confidences(record["logprobs"], record["offsets"], span)}
    extras = extras or {}
    if "p_true" in extras:
        out["conf_p_true"] = p_true(extras["p_true"])
    if "samples" in extras:
        out["conf_consistency"] = consistency(task, record["text"], extras["samples"], name)
    return out


#: The start of a stored sampling setting's key (``samples:k=5,t=1,seed=0``).
SAMPLES_PREFIX = "samples:"


def held_keys(keys: Any) -> tuple[bool, str | None]:
    """Of a run's stored extras (their keys): whether P(True) is held, and the first sampling setting held (sorted),
    the one a report without the study's settings scores."""
    sampled = sorted(k for k in keys if k.startswith(SAMPLES_PREFIX))
    return "p_true" in keys, (sampled[0] if sampled else None)


def held_extras(store: Any, run_id: int) -> dict[str, dict[str, Any]]:
    """Per item, the further measurements a run's generations carry in ``store`` (``p_true``: the two
    log-likelihoods; ``samples``: the texts of the sampling setting :func:`held_keys` picks), as
    :func:`score_generation`'s ``extras``."""
    p_true, sampled = held_keys(store.generation_extra_keys(run_id))
    out: dict[str, dict[str, Any]] = {}
    for name, key in (("p_true", "p_true" if p_true else None), ("samples", sampled)):
        if key is not None:
            for item_id, value in store.generation_extras(run_id, key).items():
                out.setdefault(item_id, {})[name] = value
    return out

