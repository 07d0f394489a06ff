"""A generation job: a variant's greedy answers to a free-text task's items, stored as they finish (a run resumes
where it stopped; nothing generated is lost on a crash), then scored: filtered answer, exact match and confidences
per item (:mod:`quantcal.analysis.generated`), and each confidence's calibration with bootstrap intervals
(:mod:`quantcal.metrics.answer_confidence`)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from quantcal.analysis.generated import CONFIDENCES, score_generation
from quantcal.errors import QuantcalError
from quantcal.metrics import Interval
from quantcal.store.database import Store
from quantcal.study.jobs import config_hash
from quantcal.tasks.generation_tasks import GenerationTask, GenItem
from quantcal.versions import package_versions

#: Bumped when the generator's output for the same model and prompt can change.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class GenerationJobResult:
    run_id: int
    item_ids: list[str]
    n_generated_now: int
    seconds: float


def generation_config(source: Any, task: GenerationTask, items: Sequence[GenItem], variant_config: dict[str, Any],
                      max_new_tokens: int, dtype: str, add_special_tokens: bool | None) -> dict[str, Any]:
    data = hashlib.sha256(json.dumps([it.hash for it in items]).encode()).hexdigest()[:16]
    return {"model": source.to_json() | {"location": None}, "task": task.name, "kind": "generate", "data": data,
            "until": list(task.until), "max_new_tokens": max_new_tokens, "decoding": "greedy", "dtype": dtype,
            "add_special_tokens": add_special_tokens, "generator_version": GENERATOR_VERSION, **variant_config}


def run_generation_job(store: Store, variant: str, label: str, config: dict[str, Any], items: Sequence[GenItem],
                       holder: Any, until: Sequence[str], max_new_tokens: int, batch_size: int,
                       add_special_tokens: bool | None, progress: Callable[[str, int], Any] | None = None,
                       say: Callable[[str], None] = lambda m: None, chunk: int = 16) -> GenerationJobResult:
    """Generate what the store lacks for ``items``, ``chunk`` items at a time, each chunk stored when done."""
    from quantcal.engines.encoding import Encoder
    from quantcal.engines.generator import generate_greedy

    run_id = store.get_or_create_run(variant, label, config_hash(config), config, package_versions())
    done = store.done_generation_ids(run_id)
    todo = [(pos, it) for pos, it in enumerate(items) if it.id not in done]
    start = time.perf_counter()
    if todo:
        lm = holder.get()
        tokenizer = lm.tokenizer
        window = getattr(lm.model.config, "max_position_embeddings", None) or 2048
        encoder = Encoder(tokenizer, window, add_special_tokens)
        bar = progress(f"{variant} · {label}", len(todo)) if progress else None
        try:
            for begin in range(0, len(todo), chunk):
                part = todo[begin:begin + chunk]
                # lm-eval's tokenisation (the tokenizer's own special tokens unless the prompt starts with BOS),
                # left-truncated to leave room for the answer, as its HF model's generate_until
                prompts = [encoder.encode(it.prompt)[-(window - max_new_tokens):] for _, it in part]
                generations = generate_greedy(lm.model, tokenizer, prompts, until, max_new_tokens, batch_size,
                                              progress=(lambda n: bar.update(n)) if bar else None)
                store.write_generations(run_id, [(pos, it, gen) for (pos, it), gen in zip(part, generations)])
        finally:
            if bar is not None:
                bar.close()
    return GenerationJobResult(run_id, [it.id for it in items], len(todo), time.perf_counter() - start)


def scored_answers(store: Store, run_id: int, task: GenerationTask, item_ids: Sequence[str] | None = None,
                   filter_name: str | None = None) -> list[dict[str, Any]]:
    """The run's generations (of ``item_ids``, when given) scored under the task's first filter (or ``filter_name``)."""
    wanted = set(item_ids) if item_ids is not None else None
    records = [r for r in store.generations(run_id) if wanted is None or r["item_id"] in wanted]
    if not records:
        raise QuantcalError(f"{store.path}: run {run_id} holds no generations")
    return [score_generation(task, r, filter_name) for r in records]


def answer_metrics(answers: Sequence[dict[str, Any]], resamples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict[str, dict[str, Interval]]:
    """Per confidence measure, every answer metric with its bootstrap interval (items resampled, all measures on the
    same draws)."""
    import numpy as np

    from quantcal.metrics import bootstrap
    from quantcal.metrics.answer_confidence import ANSWER_METRICS, as_pair

    correct = np.array([a["correct"] for a in answers], dtype=np.int64)
    out: dict[str, dict[str, Interval]] = {}
    for conf in CONFIDENCES:
        probs, labels = as_pair(np.array([a[conf] for a in answers]), correct)
        out[conf] = {name: bootstrap(fn, probs, labels, n_resamples=resamples, seed=seed, level=level)
                     for name, fn in ANSWER_METRICS.items()}
    return out
