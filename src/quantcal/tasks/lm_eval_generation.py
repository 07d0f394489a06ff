"""lm-eval's ``generate_until`` tasks (``lm-eval:gsm8k``, ``lm-eval:triviaqa``, ``nq_open``, a task of your own
``--lm-eval-include`` folder): lm-eval renders each prompt (few-shot examples, chat template) and quantcal answers
it, scoring the answer with the task's own definition read from its config:

- ``until`` and ``max_gen_toks`` from ``generation_kwargs`` (lm-eval's defaults: none, 256; the tokenizer's
  end-of-sequence always stops); decoding is greedy (a task asking ``do_sample`` is answered greedily, said so);
- ``filter_list``: each named pipeline of ``regex`` (``regex_pattern``, ``group_select``, ``fallback``),
  ``remove_whitespace``, ``take_first``, ``lowercase`` and ``uppercase`` steps (lm-eval's default without one: ``none`` = take the answer as
  generated); the first pipeline is the reported correctness. Other filter functions are refused;
- ``metric_list``: ``exact_match`` with its options (``ignore_case``, ``ignore_punctuation``, ``ignore_numbers``,
  ``regexes_to_ignore``); a task scored by any other metric is refused;
- the target: ``doc_to_target`` (several strings: right when the answer equals any).

The scoring definition is kept in the stored run's config (:func:`task_to_json`), so the answers are scored again
without loading lm-eval (:func:`task_from_json`).
"""

from __future__ import annotations

from typing import Any, Sequence

from quantcal.errors import QuantcalError
from quantcal.tasks.answer_filters import FUNCTIONS, FilterStep, MatchOptions
from quantcal.tasks.generation_tasks import GenerationTask, GenItem
from quantcal.tasks.prompts import PromptSetup, require_chat_template

#: lm-eval filter functions quantcal applies itself (:mod:`quantcal.tasks.answer_filters`).
FILTERS = FUNCTIONS
MATCH_OPTIONS = ("ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore")


def _unused(row: dict[str, Any]) -> Any:
    raise QuantcalError("an lm-eval task's prompts and targets come from lm-eval")


def _filters(bare: str, filter_list: Sequence[dict[str, Any]] | None) -> dict[str, tuple[FilterStep, ...]]:
    if not filter_list:
        return {"none": (FilterStep("take_first"),)}
    out = {}
    for entry in filter_list:
        steps = []
        for step in entry.get("filter", []):
            function = step.get("function")
            if function not in FILTERS:
                raise QuantcalError(f"lm-eval:{bare}: filter {entry.get('name')!r} uses {function!r}; quantcal applies "
                                    f"{', '.join(FILTERS)}")
            if function == "regex":
                steps.append(FilterStep("regex", step.get("regex_pattern", r"#### (\-?[0-9\.\,]+)"),
                                        int(step.get("group_select", 0)), step.get("fallback", "[invalid]")))
            else:
                steps.append(FilterStep(function))
        out[str(entry.get("name", f"filter{len(out)}"))] = tuple(steps)
    return out


def _match(bare: str, metric_list: Sequence[dict[str, Any]] | None) -> MatchOptions:
    metrics = [m for m in (metric_list or []) if isinstance(m, dict)]
    exact = [m for m in metrics if m.get("metric") == "exact_match"]
    if not exact:
        names = [str(m.get("metric")) for m in metrics] or ["none"]
        raise QuantcalError(f"lm-eval:{bare} is scored by {', '.join(names)}; quantcal scores generated answers by "
                            "exact_match (its filters and options)")
    options = {k: v for k, v in exact[0].items() if k in MATCH_OPTIONS}
    return MatchOptions(bool(options.get("ignore_case", False)), bool(options.get("ignore_punctuation", False)),
                        bool(options.get("ignore_numbers", False)), tuple(options.get("regexes_to_ignore") or ()))


def _targets(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def load_lm_eval_generation(name: str, include: str | None, limit: int | None, setup: PromptSetup,
                            tokenizer: Any = None, trust_code: bool = False,
                            say: Any = lambda m: None) -> tuple[GenerationTask, list[GenItem]]:
    """One lm-eval ``generate_until`` task (module doc): its scoring definition and its items with lm-eval's
    prompts. Refused in one line: another output type (``loglikelihood_rolling``: perplexity, not an answer), a
    filter or metric quantcal does not apply, a chat template the tokenizer lacks."""
    from quantcal.tasks.lm_eval_tasks import PREFIX, build_requests, loaded_task

    bare = name[len(PREFIX):] if name.startswith(PREFIX) else name
    task = loaded_task(bare, include, trust_code)
    if task.OUTPUT_TYPE != "generate_until":
        raise QuantcalError(f"lm-eval:{bare} is a {task.OUTPUT_TYPE} task; quantcal scores multiple_choice tasks "
                            "(log-likelihoods of choices) and generate_until tasks (answers)")
    if setup.apply_chat_template:
        require_chat_template(tokenizer)
    config = task.config
    kwargs = dict(config.generation_kwargs or {})
    if kwargs.get("do_sample"):
        say(f"lm-eval:{bare} asks for sampling; quantcal answers greedily (its confidences are the greedy answer's)")
    until = kwargs.get("until") or []
    spec = GenerationTask(
        name=PREFIX + bare, text=_unused, targets=_unused, until=tuple([until] if isinstance(until, str) else until),
        filters=_filters(bare, config.filter_list), match=_match(bare, config.metric_list),
        max_gen_toks=int(kwargs.get("max_gen_toks", 256)), summary=f"lm-eval task {bare} (generate_until)")
    build_requests(task, bare, limit, setup, tokenizer)
    items = []
    for instance in sorted(task.instances, key=lambda r: r.doc_id):
        doc = instance.doc
        prompt = instance.args[0]
        items.append(GenItem(f"{bare}-{instance.doc_id}", prompt, _targets(task.doc_to_target(doc)),
                             str(task.doc_to_text(doc))))
    if not items:
        raise QuantcalError(f"lm-eval:{bare}: no items")
    return spec, items


def task_to_json(task: GenerationTask) -> dict[str, Any]:
    """A task's scoring definition (what the stored run needs to score its answers again)."""
    return {"name": task.name, "until": list(task.until), "max_gen_toks": task.max_gen_toks,
            "filters": {n: [vars(s) for s in steps] for n, steps in task.filters.items()}, "match": vars(task.match)
            | {"regexes_to_ignore": list(task.match.regexes_to_ignore)}}


def task_from_json(data: dict[str, Any]) -> GenerationTask:
    """The scoring definition :func:`task_to_json` wrote."""
    match = dict(data["match"])
    match["regexes_to_ignore"] = tuple(match.get("regexes_to_ignore") or ())
    return GenerationTask(name=data["name"], text=_unused, targets=_unused, until=tuple(data["until"]),
                          filters={n: tuple(FilterStep(**s) for s in steps) for n, steps in data["filters"].items()},
                          match=MatchOptions(**match), max_gen_toks=int(data["max_gen_toks"]))
