"""Greedy generation with a KV cache, for tasks answered in free text: each sequence stops at its own stop strings
(or end-of-sequence, or ``max_new_tokens``) and leaves the batch when it does, and every generated token's
log-probability is kept (what the confidences of a generated answer are computed from).

The prompts of a batch are left-padded; positions count from each prompt's first real token, so a padded row
computes what it would alone (up to the float rounding of batched matmuls). The prompt pass computes the logits of
the last position only (``logits_to_keep=1``, as transformers' ``generate``); each step then feeds only the new token
of every unfinished row with the cache of what came before (transformers' ``DynamicCache``). A finished row leaves
the cache (``batch_select_indices``) and its place goes to the next prompt (continuous batching): the newcomer's
prompt pass runs on its own and its cache joins the batch's, both left-padded to the longer, and the leading columns
no row attends to any more are cut. (A cache with sliding-window layers, which keep their own record of what they
dropped, only shrinks: its batch refills when it empties.) Prompts are taken longest first.

A prompt pass whose prompts begin with the same tokens (fixed few-shot examples, a chat template's system turn) runs
that shared prefix once, for one row, and gives each row a copy of its cache (the prefix is kept, so the prompts
that later refill the batch, often one at a time, start from it too); the rows' own remainders follow,
left-padded after the prefix (the mask has the padding between the two; positions continue from the prefix), which
computes what each row would alone up to the same float rounding as padding does. Not for models with sliding-window
attention: the window is counted in cache columns, and the padding between prefix and remainder would count.

The stop strings are looked for in the text of each row's last tokens at every step (a window of the longest stop
string's length plus 8 tokens: the check costs the same at any length); the text is cut at the first stop string of
the whole decoded continuation as lm-eval cuts it (:func:`quantcal.tasks.answer_filters.cut_at_stop`), and the kept
tokens are the shortest prefix of the generated tokens whose text covers the kept text (a token that straddles the
cut is kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

#: Tokens a prompt pass's prompts must share before their prefix is computed once.
MIN_SHARED_PREFIX = 16


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


def finish(tokenizer: Any, tokens: list[int], logprobs: list[float], until: Sequence[str], reason: str) -> Generation:
    """A continuation as kept: its text cut at the first stop string, the tokens that cover it and their
    log-probabilities (module doc)."""
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


def _tail_has_stop(tokenizer: Any, tokens: Sequence[int], until: Sequence[str], window: int) -> bool:
    """Whether the text of the last ``window`` tokens holds a stop string (checked each step: decoding only the
    tail keeps the check linear in the length; the text is cut at the first stop of the whole decode at the end)."""
    tail = tokenizer.decode(list(tokens[-window:]), skip_special_tokens=True)
    return any(u and u in tail for u in until)


@dataclass
class _Batch:
    """The rows being generated together: their cache, attention mask (one column per cached token plus the token
    about to be fed), the token each feeds next and its position."""

    rows: list[int]  # prompt indices
    cache: Any
    mask: Any
    step_ids: Any = None
    step_pos: Any = None


def _mergeable(cache: Any) -> bool:
    """A cache whose layers are plain growing tensors can take rows from another and lose leading padding (a
    sliding-window layer keeps its own bookkeeping of what it dropped: its batch only shrinks)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)


def _pad_left(x: Any, width: int, dim: int) -> Any:
    import torch

    missing = width - x.shape[dim]
    if not missing:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=x.dtype, device=x.device), x], dim=dim)


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """One batch of ``a``'s rows then ``b``'s: caches and masks left-padded to the longer."""
    import torch

    width = max(a.mask.shape[1], b.mask.shape[1])
    for la, lb in zip(a.cache.layers, b.cache.layers):
        la.keys = torch.cat([_pad_left(la.keys, width - 1, 2), _pad_left(lb.keys, width - 1, 2)])
        la.values = torch.cat([_pad_left(la.values, width - 1, 2), _pad_left(lb.values, width - 1, 2)])
    return _Batch(a.rows + b.rows, a.cache, torch.cat([_pad_left(a.mask, width, 1), _pad_left(b.mask, width, 1)]),
                  torch.cat([a.step_ids, b.step_ids]), torch.cat([a.step_pos, b.step_pos]))


def _trim(batch: _Batch) -> None:
    """Drop the leading cache columns that no row attends to (padding left behind by rows that finished)."""
    used = batch.mask[:, :-1].any(dim=0).nonzero()
    lead = int(used[0]) if len(used) else batch.mask.shape[1] - 1
    if lead:
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
        batch.mask = batch.mask[:, lead:]


def generate_greedy(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], until: Sequence[str],
                    max_new_tokens: int = 256, batch_size: int = 8,
                    progress: Callable[[int], Any] | None = None, temperature: float = 0.0,
                    seeds: Sequence[int] | None = None, share_prefix: bool = True,
                    on_done: Callable[[int, Generation], Any] | None = None) -> list[Generation]:
    """Greedy continuations of token-id ``prompts`` (module doc), in order. With ``temperature > 0`` each token is
    drawn from ``softmax(logits / temperature)`` instead, row ``i`` from its own ``torch.Generator`` seeded with
    ``seeds[i]`` (so a sample does not depend on the batch it ran in); the log-probabilities kept are then the
    model's own (temperature 1) of the drawn tokens. ``on_done(i, generation)``: called as each prompt finishes (in
    the order they finish), so a caller can keep answers before the whole call returns."""
    import inspect

    import torch
    from transformers import DynamicCache

    from quantcal.engines.hf_scorer import sliding_windows

    device = next(model.parameters()).device
    parameters = inspect.signature(model.forward).parameters
    # transformers 5.25 names the cache argument `cache` (`past_key_values` before, deprecated since)
    cache_arg = "cache" if "cache" in parameters else "past_key_values"
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    eos = end_of_sequence_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos) if eos else 0)
    window = max((len(u) for u in until), default=0) + 8  # tokens decoded for the per-step stop check
    generators = {}
    if temperature > 0:
        if seeds is None or len(seeds) != len(prompts):
            raise ValueError("sampling needs one seed per prompt")
        for i, seed in enumerate(seeds):
            generators[i] = torch.Generator(device=device).manual_seed(int(seed))
    tokens: dict[int, list[int]] = {}
    logps: dict[int, list[float]] = {}
    results: dict[int, Generation] = {}

    def advance(batch: _Batch, logits: Any) -> _Batch | None:
        """Take each row's next token from ``logits``; rows that finish leave the batch (None when none is left)."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        if temperature > 0:
            tempered = torch.softmax(logits.float() / temperature, dim=-1)
            best = torch.stack([torch.multinomial(tempered[r], 1, generator=generators[i])[0]
                                for r, i in enumerate(batch.rows)])
        else:
            best = logprobs.argmax(dim=-1)
        keep = []
        for r, i in enumerate(batch.rows):
            token = int(best[r])
            reason = None
            if token in eos:
                reason = "eos"
            else:
                tokens[i].append(token)
                logps[i].append(float(logprobs[r, token]))
                if _tail_has_stop(tokenizer, tokens[i], until, window):
                    reason = "stop"
                elif len(tokens[i]) == max_new_tokens:
                    reason = "length"
            if reason:
                results[i] = finish(tokenizer, tokens[i], logps[i], until, reason)
                if on_done:
                    on_done(i, results[i])
                if progress:
                    progress(1)
            else:
                keep.append(r)
        if not keep:
            return None
        if len(keep) < len(batch.rows):  # finished rows leave the batch
            index = torch.tensor(keep, device=device)
            batch.cache.batch_select_indices(index)
            batch.mask, best, batch.step_pos = batch.mask[index], best[index], batch.step_pos[index]
            batch.rows = [batch.rows[r] for r in keep]
        batch.step_ids = best[:, None]
        batch.step_pos = batch.step_pos + 1
        batch.mask = torch.cat([batch.mask, torch.ones((len(keep), 1), dtype=batch.mask.dtype, device=device)], 1)
        return batch

    # a sliding window counts its width in cache columns, and the padding between a shared prefix and a row's own
    # tokens would count in it: such models run every prompt pass whole
    sharing = {"on": share_prefix and all(w is None for w in sliding_windows(model)[0].values())}

    kept: dict[str, Any] = {}  # the last shared prefix: its tokens and each layer's keys and values (one row)

    def shared_prefix(rows: list[int]) -> tuple[int, Any]:
        """The prefix the rows share, run once (its length and a cache holding a copy per row), or (0, a new
        cache). The last prefix run is kept: a later pass whose prompts begin with it (the next prompts refilling
        a batch, often one at a time) starts from it."""
        if not sharing["on"]:
            return 0, DynamicCache()
        room = min(len(prompts[i]) for i in rows) - 1  # each row keeps a token of its own
        prefix = kept.get("ids", ())
        # the kept prefix, cut to what these rows share with it (a causal cache's first L columns are the cache of
        # the first L tokens)
        reuse = min(common_prefix_length([prefix] + [prompts[i] for i in rows]), room) if prefix else 0
        if reuse >= MIN_SHARED_PREFIX:
            prefix = prefix[:reuse]
        else:
            length = min(common_prefix_length([prompts[i] for i in rows]), room) if len(rows) > 1 else 0
            if length < MIN_SHARED_PREFIX:
                return 0, DynamicCache()
            ids = torch.tensor([list(prompts[rows[0]][:length])], device=device)
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                        **{cache_arg: DynamicCache()}, **last_only)
            cache = getattr(out, "cache", None) or out.past_key_values
            if not _mergeable(cache):
                sharing["on"] = False
                return 0, DynamicCache()
            prefix = tuple(prompts[rows[0]][:length])
            kept.update(ids=prefix, layers=[(layer.keys, layer.values) for layer in cache.layers])
        cache = DynamicCache()
        n = len(prefix)
        for index, (keys, values) in enumerate(kept["layers"]):
            cache.update(keys[:, :, :n].repeat(len(rows), 1, 1, 1), values[:, :, :n].repeat(len(rows), 1, 1, 1), index)
        return n, cache

    def prefill(rows: list[int]) -> _Batch | None:
        shared, cache = shared_prefix(rows)
        width = max(len(prompts[i]) for i in rows) - shared
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            own = list(prompts[i][shared:])
            ids[r, width - len(own):] = torch.tensor(own)
            mask[r, width - len(own):] = 1
            tokens[i], logps[i] = [], []
        ids, mask = ids.to(device), mask.to(device)
        positions = shared + (mask.cumsum(-1) - 1).clamp_min(0)
        mask = torch.cat([torch.ones((len(rows), shared), dtype=mask.dtype, device=device), mask], dim=1)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_arg: cache}, **last_only)
        cache = getattr(out, "cache", None) or out.past_key_values
        return advance(_Batch(rows, cache, mask, step_pos=positions[:, -1:]), out.logits[:, -1])

    queue = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
    batch: _Batch | None = None
    with torch.inference_mode():
        while queue or batch is not None:
            free = batch_size - (len(batch.rows) if batch is not None else 0)
            if queue and free > 0 and (batch is None or _mergeable(batch.cache)):
                # a finished row's place goes to the next prompt (when the cache can take it)
                fresh = prefill(queue[:free])
                queue = queue[free:]
                if batch is None or fresh is None:
                    batch = batch if fresh is None else fresh
                elif _mergeable(fresh.cache):
                    batch = _merge(batch, fresh)
                else:  # cannot happen with a mergeable batch of the same model; kept as a guard
                    raise RuntimeError("generation caches of one model differ in kind")
                continue
            assert batch is not None
            out = model(input_ids=batch.step_ids, attention_mask=batch.mask, position_ids=batch.step_pos,
                        use_cache=True, **{cache_arg: batch.cache})
            batch.cache = getattr(out, "cache", None) or out.past_key_values
            batch = advance(batch, out.logits[:, -1])
            if batch is not None and _mergeable(batch.cache):
                _trim(batch)
    return [results[i] for i in range(len(prompts))]


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``prompts`` share."""
    first = prompts[0]
    length = min(len(p) for p in prompts)
    for p in prompts[1:]:
        k = 0
        while k < length and p[k] == first[k]:
            k += 1
        length = k
    return length


def end_of_sequence_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids that end a generation: the generation config's (one or several) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    return {t for t in [*ids, tokenizer.eos_token_id] if isinstance(t, int)}


def generate_with_engine(engine: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], until: Sequence[str],
                         max_new_tokens: int, progress: Callable[[int], Any] | None = None, temperature: float = 0.0,
                         seeds: Sequence[int] | None = None) -> list[Generation]:
    """:func:`generate_greedy`'s answers from an engine with its own ``generate`` (vLLM: ``--backend vllm``), cut
    and kept exactly as the HF generator's (:func:`finish`)."""
    out = []
    for tokens, logprobs in engine.generate(prompts, until, max_new_tokens, temperature, seeds):
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        reason = "stop" if any(u and u in text for u in until) else ("length" if len(tokens) >= max_new_tokens else "eos")
        out.append(finish(tokenizer, tokens, logprobs, until, reason))
        if progress:
            progress(1)
    return out
