"""Greedy generation with a KV cache, for tasks answered in free text: each sequence stops at its own stop strings
(or end-of-sequence, or ``max_new_tokens``) and leaves the batch when it does, and every generated token's
log-probability is kept (what the confidences of a generated answer are computed from).

The prompts of a batch are left-padded; positions count from each prompt's first real token, so a padded row
computes what it would alone (up to the float rounding of batched matmuls). Each step feeds only the new token of
every unfinished row with the cache of what came before (transformers' ``DynamicCache``); a finished row is
dropped from the cache (``batch_select_indices``). The text is cut at the first stop string as lm-eval cuts it
(:func:`quantcal.tasks.answer_filters.cut_at_stop`), and the kept tokens are the shortest prefix of the generated
tokens whose text covers the kept text (a token that straddles the cut is kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Generation:
    text: str  # the continuation, cut at the first stop string
    tokens: tuple[int, ...]  # the kept generated tokens
    logprobs: tuple[float, ...]  # log p of each kept token under the model (greedy: its top token)
    offsets: tuple[int, ...]  # each kept token's end offset in the decoded continuation (characters)
    stopped: str  # "stop" (a stop string), "eos", "length" (max_new_tokens)


def token_end_offsets(tokenizer: Any, tokens: Sequence[int]) -> list[int]:
    """Characters of the decoded continuation covered by its first 1, 2, ... tokens."""
    return [len(tokenizer.decode(list(tokens[: i + 1]), skip_special_tokens=True)) for i in range(len(tokens))]


def _finish(tokenizer: Any, tokens: list[int], logprobs: list[float], until: Sequence[str], reason: str) -> Generation:
    from quantcal.tasks.answer_filters import cut_at_stop

    full = tokenizer.decode(tokens, skip_special_tokens=True)
    text = cut_at_stop(full, until)
    if len(text) < len(full):
        reason = "stop"
    offsets = token_end_offsets(tokenizer, tokens)
    keep = next((i + 1 for i, end in enumerate(offsets) if end >= len(text)), len(tokens))
    if not text:
        keep = 0 if reason == "stop" else keep
    return Generation(text, tuple(tokens[:keep]), tuple(logprobs[:keep]), tuple(offsets[:keep]), reason)


def generate_greedy(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], until: Sequence[str],
                    max_new_tokens: int = 256, batch_size: int = 8,
                    progress: Callable[[int], Any] | None = None, temperature: float = 0.0,
                    seeds: Sequence[int] | None = None) -> list[Generation]:
    """Greedy continuations of token-id ``prompts`` (module doc), in order. With ``temperature > 0`` each token is
    drawn from ``softmax(logits / temperature)`` instead, row ``i`` from its own ``torch.Generator`` seeded with
    ``seeds[i]`` (so a sample does not depend on the batch it ran in); the log-probabilities kept are then the
    model's own (temperature 1) of the drawn tokens."""
    import torch
    from transformers import DynamicCache

    import inspect

    device = next(model.parameters()).device
    # transformers 5.25 names the cache argument `cache` (`past_key_values` before, deprecated since)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    eos = end_of_sequence_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos) if eos else 0)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
    generators = {}
    if temperature > 0:
        if seeds is None or len(seeds) != len(prompts):
            raise ValueError("sampling needs one seed per prompt")
        for i, seed in enumerate(seeds):
            generators[i] = torch.Generator(device=device).manual_seed(int(seed))
    results: dict[int, Generation] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, width - len(prompts[i]):] = torch.tensor(list(prompts[i]))
            mask[row, width - len(prompts[i]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache()
        alive = list(range(len(chunk)))
        tokens: list[list[int]] = [[] for _ in chunk]
        logps: list[list[float]] = [[] for _ in chunk]
        step_ids, step_pos = ids, positions
        with torch.inference_mode():
            for step in range(max_new_tokens):
                out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
                            **{cache_arg: cache})
                cache = getattr(out, "cache", None) or out.past_key_values
                logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
                if temperature > 0:
                    tempered = torch.softmax(out.logits[:, -1].float() / temperature, dim=-1)
                    best = torch.stack([torch.multinomial(tempered[r], 1, generator=generators[chunk[alive[r]]])[0]
                                        for r in range(len(alive))])
                else:
                    best = logprobs.argmax(dim=-1)
                keep = []
                for row, local in enumerate(alive):
                    token = int(best[row])
                    tokens[local].append(token)
                    logps[local].append(float(logprobs[row, token]))
                    i = chunk[local]
                    reason = None
                    if token in eos:
                        tokens[local].pop()
                        logps[local].pop()
                        reason = "eos"
                    elif any(u and u in tokenizer.decode(tokens[local], skip_special_tokens=True) for u in until):
                        reason = "stop"
                    elif step + 1 == max_new_tokens:
                        reason = "length"
                    if reason:
                        results[i] = _finish(tokenizer, tokens[local], logps[local], until, reason)
                        if progress:
                            progress(1)
                    else:
                        keep.append(row)
                if not keep:
                    break
                if len(keep) < len(alive):  # finished rows leave the batch
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    mask, best, step_pos = mask[index], best[index], step_pos[index]
                    alive = [alive[r] for r in keep]
                last = (step_pos[:, -1:] if step_pos.shape[1] > 1 else step_pos) + 1
                step_ids, step_pos = best[:, None], last
                mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], dim=1)
    return [results[i] for i in range(len(prompts))]


def end_of_sequence_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids that end a generation: the generation config's (one or several) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    return {t for t in [*ids, tokenizer.eos_token_id] if isinstance(t, int)}
