"""A generation job: a variant's greedy answers to a free-text task's items, stored as they finish (a run resumes
where it stopped; nothing generated is lost on a crash), then scored: filtered answer, exact match and confidences
per item (:mod:`quantcal.analysis.generated`), and each confidence's calibration with bootstrap intervals
(:mod:`quantcal.metrics.answer_confidence`)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Sequence

from quantcal.analysis.generated import (CONFIDENCES, EXTRA_CONFIDENCES, SAMPLES_PREFIX, held_keys,
                                        score_generation)
from quantcal.errors import QuantcalError
from quantcal.metrics import Interval
from quantcal.store.database import Store
from quantcal.study.jobs import config_hash
from quantcal.tasks.generation_tasks import GenerationTask, GenItem
from quantcal.versions import package_versions

#: Bumped when the generator's output for the same model and prompt can change.
GENERATOR_VERSION = 1


def is_engine(model: Any) -> bool:
    """Whether the loaded model is an engine with its own generation and scoring (vLLM), not a transformers model."""
    from quantcal.engines.vllm import VLLMModel

    return isinstance(model, VLLMModel)


@dataclass(frozen=True)
class GenerationJobResult:
    run_id: int
    item_ids: list[str]
    n_generated_now: int
    seconds: float


def model_window(lm: Any) -> int:
    """The model's context window in tokens (its config's ``max_position_embeddings``; 2048 when it declares none)."""
    return getattr(lm.model.config, "max_position_embeddings", None) or 2048


def generation_config(source: Any, task: GenerationTask, items: Sequence[GenItem], variant_config: dict[str, Any],
                      max_new_tokens: int, dtype: str, add_special_tokens: bool | None) -> dict[str, Any]:
    from quantcal.tasks.free_text import scoring_record

    return {"model": source.to_json() | {"location": None}, "task": task.name, "kind": "generate",
            "until": list(task.until), "max_new_tokens": max_new_tokens, "decoding": "greedy", "dtype": dtype,
            "add_special_tokens": add_special_tokens, "generator_version": GENERATOR_VERSION, **scoring_record(task),
            **variant_config}


def run_generation_job(store: Store, variant: str, label: str, config: dict[str, Any], items: Sequence[GenItem],
                       holder: Any, until: Sequence[str], max_new_tokens: int, batch_size: int,
                       add_special_tokens: bool | None, progress: Callable[[str, int], Any] | None = None,
                       say: Callable[[str], None] = lambda m: None, chunk: int = 16) -> GenerationJobResult:
    """Generate what the store lacks for ``items`` in one continuous batch (no batch drains between groups of
    items), the finished answers stored ``chunk`` at a time as they come, and the rest when the job ends or stops
    (an interruption loses only the answers still being generated). ``seconds``: generating and storing, after the
    model is loaded."""
    from quantcal.engines.encoding import Encoder
    from quantcal.engines.generator import generate_greedy, generate_with_engine

    run_id = store.get_or_create_run(variant, label, config_hash(config), config, package_versions())
    # a run is the model, task and decoding; its answers are kept per item with the hash of the prompt they
    # answered, so another `limit` resumes (the items in common are reused) and a changed prompt is answered again
    done = store.generation_hashes(run_id)
    stale = [it.id for it in items if it.id in done and done[it.id] != it.hash]
    if stale:
        say(f"{len(stale)} stored answers were to other prompts (another few-shot setting): answering again")
        store.forget_generations(run_id, stale)
    todo = [(pos, it) for pos, it in enumerate(items) if done.get(it.id) != it.hash]
    seconds = 0.0
    if todo:
        lm = holder.get()
        start = time.perf_counter()
        tokenizer = lm.tokenizer
        window = model_window(lm)
        encoder = Encoder(tokenizer, window, add_special_tokens)
        bar = progress(f"{variant} · {label}", len(todo)) if progress else None
        finished: list[tuple[int, GenItem, Any]] = []

        def keep(i: int, generation: Any) -> None:
            finished.append((*todo[i], generation))
            if len(finished) >= chunk:
                store.write_generations(run_id, finished)
                finished.clear()

        try:
            # lm-eval's tokenisation (the tokenizer's own special tokens unless the prompt starts with BOS),
            # left-truncated to leave room for the answer, as its HF model's generate_until
            prompts = [encoder.encode(it.prompt)[-(window - max_new_tokens):] for _, it in todo]
            update = (lambda n: bar.update(n)) if bar else None
            if is_engine(lm.model):  # the engine batches everything itself: stored in chunks as it returns them
                for begin in range(0, len(todo), chunk):
                    part = generate_with_engine(lm.model, tokenizer, prompts[begin:begin + chunk], until,
                                                max_new_tokens, update)
                    for i, generation in enumerate(part, start=begin):
                        keep(i, generation)
            else:
                generate_greedy(lm.model, tokenizer, prompts, until, max_new_tokens, batch_size, progress=update,
                                on_done=keep)
        finally:
            if finished:
                store.write_generations(run_id, finished)
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
    return GenerationJobResult(run_id, [it.id for it in items], len(todo), seconds)


@dataclass(frozen=True)
class ExtraMeasures:
    """The confidences that need a further pass: P(True) (a second prompt) and ``samples`` answers drawn at
    ``temperature`` (``conf_consistency``), seeded per item."""

    p_true: bool = False
    samples: int = 0
    temperature: float = 1.0
    seed: int = 0

    @property
    def samples_key(self) -> str:
        return f"{SAMPLES_PREFIX}k={self.samples},t={self.temperature:g},seed={self.seed}"

    @classmethod
    def held(cls, keys: Collection[str]) -> "ExtraMeasures":
        """The measures a run's stored extras (their keys) hold, as :func:`quantcal.analysis.generated.held_keys`
        picks them (the sampling setting read back from its :attr:`samples_key`)."""
        p_true, sampled = held_keys(keys)
        if sampled is None:
            return cls(p_true=p_true)
        fields = dict(part.split("=", 1) for part in sampled.removeprefix(SAMPLES_PREFIX).split(","))
        return cls(p_true, int(fields["k"]), float(fields["t"]), int(fields["seed"]))


def measure_extras(store: Store, run_id: int, task: GenerationTask, items: Sequence[GenItem], holder: Any,
                   extras: ExtraMeasures, max_new_tokens: int, batch_size: int,
                   say: Callable[[str], None] = lambda m: None) -> int:
    """P(True) and sampled answers for the items whose generation is stored and who lack them; returns how many
    items were measured now."""
    from quantcal.analysis.generated import P_TRUE_CHOICES, P_TRUE_PROMPT, proposed_answer
    from quantcal.engines.encoding import Encoder
    from quantcal.engines.generator import generate_greedy, generate_with_engine
    from quantcal.engines.hf_scorer import iter_flat, score_items
    from quantcal.tasks.items import Item

    texts = {r["item_id"]: r["text"] for r in store.generations(run_id)}
    measured = 0
    if extras.p_true:
        have = store.generation_extras(run_id, "p_true")
        todo = [it for it in items if it.id in texts and it.id not in have]
        if todo:
            lm = holder.get()
            encoder = Encoder(lm.tokenizer, model_window(lm))
            encoded = [encoder.encode_item(i, Item(it.id, P_TRUE_PROMPT.format(question=it.question,
                                                                                answer=proposed_answer(task, texts[it.id])),
                                                   P_TRUE_CHOICES, 0), " ") for i, it in enumerate(todo)]
            pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
            scores = iter_flat(lm.model.score(encoded) if is_engine(lm.model) else
                               score_items(lm.model, encoded, batch_size=32, pad_token_id=pad))
            store.write_generation_extras(run_id, "p_true", {todo[s.item_index].id: list(s.logliks) for s in scores})
            say(f"P(True) measured for {len(todo)} answers")
            measured = max(measured, len(todo))
    if extras.samples:
        key = extras.samples_key
        have = store.generation_extras(run_id, key)
        todo = [it for it in items if it.id in texts and it.id not in have]
        if todo:
            lm = holder.get()
            encoder = Encoder(lm.tokenizer, model_window(lm))
            prompts, seeds = [], []
            for it in todo:
                ids = encoder.encode(it.prompt)[-(model_window(lm) - max_new_tokens):]
                for j in range(extras.samples):
                    prompts.append(ids)
                    seeds.append(int(hashlib.sha256(f"{extras.seed}:{it.id}:{j}".encode()).hexdigest()[:12], 16))
            drawn = (generate_with_engine(lm.model, lm.tokenizer, prompts, task.until, max_new_tokens,
                                          temperature=extras.temperature, seeds=seeds) if is_engine(lm.model) else
                     generate_greedy(lm.model, lm.tokenizer, prompts, task.until, max_new_tokens, batch_size,
                                     temperature=extras.temperature, seeds=seeds))
            k = extras.samples
            store.write_generation_extras(run_id, key, {it.id: [g.text for g in drawn[n * k:(n + 1) * k]]
                                                        for n, it in enumerate(todo)})
            say(f"{k} samples at temperature {extras.temperature:g} drawn for {len(todo)} items")
            measured = max(measured, len(todo))
    return measured


def scored_answers(store: Store, run_id: int, task: GenerationTask, item_ids: Sequence[str] | None = None,
                   filter_name: str | None = None, extras: ExtraMeasures = ExtraMeasures()) -> list[dict[str, Any]]:
    """The run's generations (of ``item_ids``, when given) scored under the task's first filter (or ``filter_name``),
    with P(True) and consistency when ``extras`` asks for them (and they are stored)."""
    wanted = set(item_ids) if item_ids is not None else None
    records = [r for r in store.generations(run_id) if wanted is None or r["item_id"] in wanted]
    if not records:
        raise QuantcalError(f"{store.path}: run {run_id} holds no generations")
    p_true = store.generation_extras(run_id, "p_true") if extras.p_true else {}
    samples = store.generation_extras(run_id, extras.samples_key) if extras.samples else {}
    out = []
    for r in records:
        more = {**({"p_true": p_true[r["item_id"]]} if r["item_id"] in p_true else {}),
                **({"samples": samples[r["item_id"]]} if r["item_id"] in samples else {})}
        out.append(score_generation(task, r, filter_name, more))
    return out


def answer_metrics(answers: Sequence[dict[str, Any]], resamples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict[str, dict[str, Interval]]:
    """Per confidence measure, every answer metric with its bootstrap interval (items resampled, all measures on the
    same draws)."""
    import numpy as np

    from quantcal.metrics import bootstrap
    from quantcal.metrics.answer_confidence import ANSWER_METRICS, as_pair

    correct = np.array([a["correct"] for a in answers], dtype=np.int64)
    out: dict[str, dict[str, Interval]] = {}
    measured = [c for c in EXTRA_CONFIDENCES if all(c in a for a in answers)]
    for conf in (*CONFIDENCES, *measured):
        probs, labels = as_pair(np.array([a[conf] for a in answers]), correct)
        out[conf] = {name: bootstrap(fn, probs, labels, n_resamples=resamples, seed=seed, level=level)
                     for name, fn in ANSWER_METRICS.items()}
    return out


def compare_answers(ref: Sequence[dict[str, Any]], var: Sequence[dict[str, Any]], resamples: int = 1000,
                    seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """A variant's scored answers against the reference's on the items both answered (matched by id): per
    confidence measure both carry, each metric's paired difference (variant - reference) with its interval; the
    answers that changed, and those that flipped right -> wrong and wrong -> right."""
    import numpy as np

    from quantcal.metrics.answer_confidence import ANSWER_METRICS, paired_answer_bootstrap

    by_id = {a["item_id"]: a for a in var}
    pairs = [(a, by_id[a["item_id"]]) for a in ref if a["item_id"] in by_id]
    if not pairs:
        raise QuantcalError("the two runs share no answered items")
    measures = [c for c in (*CONFIDENCES, *EXTRA_CONFIDENCES) if all(c in a and c in b for a, b in pairs)]
    differences: dict[str, dict[str, Interval]] = {}
    ya = np.array([a["correct"] for a, _ in pairs], dtype=np.int64)
    yb = np.array([b["correct"] for _, b in pairs], dtype=np.int64)
    for conf in measures:
        ca = np.array([a[conf] for a, _ in pairs])
        cb = np.array([b[conf] for _, b in pairs])
        differences[conf] = {name: paired_answer_bootstrap(fn, (ca, ya), (cb, yb), resamples, seed, level)
                             for name, fn in ANSWER_METRICS.items()}
    return {"n": len(pairs), "differences": differences,
            "changed_answers": sum(a["filtered"] != b["filtered"] for a, b in pairs),
            "right_to_wrong": int(((ya == 1) & (yb == 0)).sum()), "wrong_to_right": int(((ya == 0) & (yb == 1)).sum())}
