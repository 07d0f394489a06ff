"""The scorer: summed log-probability of every choice given its context, computed once per context.

Default (packed) layout: one row per item, ``context + choice_1[:-1] + choice_2[:-1] + ...``, with a 4D
attention mask under which each choice's tokens see the context and their own earlier tokens only, and
position ids that restart after the context for every choice. So each context token and each choice token
is computed exactly once, in one model call per batch, and the LM head runs only on the positions whose next
token is scored (the last context position predicts every choice's first token). Models with sliding-window
layers (Gemma 2/3) get the window applied in their sliding layers' mask.

Cross-item prefix sharing (packed layout): contexts that start with the same tokens (few-shot examples, a task's
preamble, a system prompt, a subject line) are sorted next to each other; a run of items whose contexts share at
least ``MIN_SHARED_PREFIX`` tokens is batched together, the shared prefix runs through the model once (one row), and
its keys and values are reused, without copying, by every row of the batch, whose own tokens sit after it (positions
continue from the prefix; the block mask gains the prefix as columns every token sees; sliding windows count from
the prefix's positions). The last prefix's keys and values are kept for the next batch that starts with it.

The other layout (``packed=False``): contexts run left-padded through the model once, the key/value cache
is gathered per choice and the choices' tokens run on top of it; it pads every choice to the longest in the
batch. Both equal a plain forward of ``context + choice`` (the input lm-evaluation-harness builds) up to float
rounding; the tests check both against that.

Per choice the scorer reports the log-likelihood, the token count, and whether every choice token is
the model's greedy (argmax) continuation. A NaN or infinite log-likelihood is an error for that item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from quantcal.engines.encoding import EncodedItem, Group

#: Rows of (batch x positions x vocabulary) logits turned into log-probabilities at once; bounds memory.
LOGPROB_CHUNK_ELEMENTS = 1 << 25
#: Padded token positions per forward pass. On a 2-core CPU, batches of 1-2k tokens ran 1.1-2x faster than
#: uncapped 64-row batches of long items (benchmarks/README.md).
DEFAULT_MAX_BATCH_TOKENS = 2048
#: ``max_batch_tokens="auto"`` on a CUDA device: the share of the memory free at the start that one pass may use...
CUDA_MEMORY_SHARE = 0.4
#: ... and the widest row the per-token cost assumes (attention scores and the block mask grow with the row).
AUTO_ROW_WIDTH = 2048
#: Items whose contexts share this many leading tokens are scored on one prefix computed once (packed layout)...
MIN_SHARED_PREFIX = 32
#: ... when sharing saves at least this many token positions over the run; smaller runs would only split batches.
MIN_SHARED_SAVING = 256


@dataclass(frozen=True)
class ItemScores:
    item_index: int
    logliks: tuple[float, ...]
    greedy: tuple[bool, ...]
    n_tokens: tuple[int, ...]
    error: str | None = None


def packed_length(group: Group) -> int:
    return len(group.context) + sum(len(c) - 1 for c in group.continuations)


def plan_batches(items: Sequence[EncodedItem], batch_size: int, packed: bool = False,
                 max_tokens: int | None = None) -> list[list[Group]]:
    """Longest groups first (padding waste stays small, memory peaks early); at most ``batch_size`` choice rows and,
    when ``max_tokens`` is set, at most that many padded token positions (input rows x width) per batch.

    A group wider than ``max_tokens`` forms a batch of its own: an item is never split.
    """
    size = packed_length if packed else (lambda g: g.length)
    return _fill([g for it in items for g in it.groups], batch_size, max_tokens, size, packed)


def _fill(groups: Sequence[Group], batch_size: int, max_tokens: int | None, size: Callable[[Group], int],
          packed: bool) -> list[list[Group]]:
    groups = sorted(groups, key=lambda g: (-size(g), g.item_index))
    batches: list[list[Group]] = []
    current: list[Group] = []
    rows = 0
    for group in groups:
        n = len(group.continuations)
        width = size(current[0]) if current else size(group)  # the batch's first group is its widest
        tensor_rows = len(current) + 1 if packed else rows + n
        if current and (rows + n > batch_size or (max_tokens is not None and tensor_rows * width > max_tokens)):
            batches.append(current)
            current, rows = [], 0
        current.append(group)
        rows += n
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class Batch:
    """Groups scored in one forward pass; the first ``shared`` context tokens are the same in all of them."""

    groups: list[Group]
    shared: int = 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def shared_runs(groups: Sequence[Group], min_shared: int,
                min_saving: int = MIN_SHARED_SAVING) -> list[tuple[int, list[Group]]]:
    """Groups in runs whose contexts share at least ``min_shared`` leading tokens (sorted by context, so such
    contexts are neighbours), each with the length all of the run shares; the groups in no run come last, with 0.

    The shared length stops one token before the shortest context of the run: each context's last token must be in
    its own row (it predicts every choice's first token). A run that would save fewer than ``min_saving`` token
    positions ((size - 1) x shared) is not worth its own batches: its groups join the others."""
    order = sorted(groups, key=lambda g: (g.context, g.item_index))
    runs: list[tuple[int, list[Group]]] = []
    alone: list[Group] = []
    current: list[Group] = []
    shared = 0
    for g in order + [None]:  # type: ignore[list-item]
        common = common_prefix(current[-1].context, g.context) if current and g is not None else 0
        if g is not None and current and min(common, len(g.context) - 1, shared) >= min_shared:
            shared = min(shared, common, len(g.context) - 1)
            current.append(g)
            continue
        if len(current) > 1 and (len(current) - 1) * shared >= min_saving:
            runs.append((shared, current))
        else:
            alone.extend(current)
        current = [g] if g is not None else []
        shared = len(g.context) - 1 if g is not None else 0
    return runs + [(0, alone)] if alone else runs


def plan_shared_batches(items: Sequence[EncodedItem], batch_size: int, max_tokens: int | None = None,
                        min_shared: int = MIN_SHARED_PREFIX, min_saving: int = MIN_SHARED_SAVING) -> list[Batch]:
    """Packed batches, each within one run of shared-prefix contexts (:func:`shared_runs`): longest first within a
    run, at most ``batch_size`` choice rows and ``max_tokens`` padded positions past the prefix."""
    groups = [g for it in items for g in it.groups]
    batches = []
    for shared, run in shared_runs(groups, min_shared, min_saving):
        size = (lambda g, p=shared: packed_length(g) - p)
        batches += [Batch(b, shared) for b in _fill(run, batch_size, max_tokens, size, packed=True)]
    return batches


def auto_batch_tokens(model: Any, device: Any) -> int:
    """The padded token positions per pass for ``device`` (``max_batch_tokens="auto"``).

    Off CUDA: :data:`DEFAULT_MAX_BATCH_TOKENS`, the fastest measured on CPU. On CUDA: the tokens whose working
    memory fits in :data:`CUDA_MEMORY_SHARE` of the free memory, at ``b (V + 3 I + 6 H + 2 A W)`` bytes per token
    (``b`` bytes per element of the model's dtype; ``V`` vocabulary, for the logits of kept positions; ``I`` and ``H``
    intermediate and hidden sizes, for one layer's activations; ``A`` heads and ``W`` = :data:`AUTO_ROW_WIDTH`, for
    one row of attention scores and its block mask), rounded down to a multiple of 256 and at least the CPU default.
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_MAX_BATCH_TOKENS
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = int(config.hidden_size)
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 1))
    element = next(model.parameters()).element_size()
    per_token = element * (int(config.vocab_size) + 3 * intermediate + 6 * hidden + 2 * heads * AUTO_ROW_WIDTH)
    free, _ = torch.cuda.mem_get_info(device)
    tokens = int(CUDA_MEMORY_SHARE * free // per_token) // 256 * 256
    return max(DEFAULT_MAX_BATCH_TOKENS, tokens)


def score_items(
    model: Any,
    items: Sequence[EncodedItem],
    batch_size: int = 32,
    pad_token_id: int = 0,
    on_batch: Callable[[int], None] | None = None,
    packed: bool = True,
    max_batch_tokens: int | None | str = DEFAULT_MAX_BATCH_TOKENS,
    min_shared_prefix: int | None = MIN_SHARED_PREFIX,
    min_shared_saving: int = MIN_SHARED_SAVING,
) -> Iterator[list[ItemScores]]:
    """Score encoded items; after each batch yield the items it completed (for transactional storing).

    A batch holds at most ``batch_size`` choice rows and ``max_batch_tokens`` padded token positions (``None``: no
    token cap; ``"auto"``: :func:`auto_batch_tokens` for the model's device). The cap keeps matrix products at the
    sizes a CPU runs fastest and bounds the logits held at once.
    Contexts sharing ``min_shared_prefix`` leading tokens share one prefix computation (``None``: never) when that
    saves ``min_shared_saving`` token positions.
    """
    if min_shared_prefix is None:
        min_shared_prefix = 1 << 62
    by_index = {it.item_index: it for it in items}
    pending: dict[int, dict[int, tuple[float, bool]]] = {}
    device = next(model.parameters()).device
    if max_batch_tokens == "auto":
        max_batch_tokens = auto_batch_tokens(model, device)
    prefixes = PrefixMemo()
    if packed:
        plan = plan_shared_batches(items, batch_size, max_batch_tokens, min_shared_prefix, min_shared_saving)
    else:
        plan = [Batch(b) for b in plan_batches(items, batch_size, False, max_batch_tokens)]
    with grad_free(model):
        for planned in plan:
            batch = planned.groups
            if packed:
                results = _score_batch_packed(model, batch, pad_token_id, device, planned.shared, prefixes)
            else:
                results = _score_batch(model, batch, pad_token_id, device)
            done: list[ItemScores] = []
            for group, values in zip(batch, results):
                slot = pending.setdefault(group.item_index, {})
                slot.update(zip(group.choices, values))
                item = by_index[group.item_index]
                if len(slot) == len(item.n_tokens):
                    done.append(finish_item(item, slot))
                    del pending[group.item_index]
            if on_batch is not None:
                on_batch(len(done))
            yield done


def finish_item(item: EncodedItem, slot: dict[int, tuple[float, bool]]) -> ItemScores:
    """An item's scores from its choices' ``(log-likelihood, greedy)``; a non-finite value is the item's error."""
    logliks = tuple(slot[j][0] for j in range(len(item.n_tokens)))
    greedy = tuple(slot[j][1] for j in range(len(item.n_tokens)))
    bad = [j for j, v in enumerate(logliks) if not math.isfinite(v)]
    error = f"non-finite log-likelihood for choice(s) {bad}: {[logliks[j] for j in bad]}" if bad else None
    return ItemScores(item.item_index, logliks, greedy, item.n_tokens, error)


def _score_batch(model: Any, batch: list[Group], pad_token_id: int, device: Any) -> list[list[tuple[float, bool]]]:
    import torch

    n_ctx = max(len(g.context) for g in batch)
    ids = torch.full((len(batch), n_ctx), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(batch), n_ctx), dtype=torch.long)
    for i, g in enumerate(batch):
        ids[i, n_ctx - len(g.context):] = torch.tensor(g.context)
        mask[i, n_ctx - len(g.context):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = [(i, cont) for i, g in enumerate(batch) for cont in g.continuations]
    longest = max(len(cont) for _, cont in rows)
    out = model(
        input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
        use_cache=longest > 1, logits_to_keep=1,
    )
    last = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # predicts each choice's first token
    row_group = torch.tensor([i for i, _ in rows])
    first_tok = torch.tensor([cont[0] for _, cont in rows])
    first_lp = last[row_group.to(device), first_tok.to(device)].cpu()
    first_greedy = (last.argmax(-1)[row_group.to(device)].cpu() == first_tok)
    totals = first_lp.double()
    greedy = first_greedy.clone()
    if longest > 1:
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        cache.reorder_cache(row_group.to(device))
        n_rest = longest - 1
        x = torch.full((len(rows), n_rest), pad_token_id, dtype=torch.long)
        targets = torch.zeros((len(rows), n_rest), dtype=torch.long)
        valid = torch.zeros((len(rows), n_rest), dtype=torch.bool)
        for r, (_, cont) in enumerate(rows):
            m = len(cont) - 1
            if m:
                x[r, :m] = torch.tensor(cont[:-1])
                targets[r, :m] = torch.tensor(cont[1:])
                valid[r, :m] = True
        attn = torch.cat([mask[row_group], valid.long()], dim=1)
        ctx_len = mask.sum(-1)[row_group]
        pos = ctx_len[:, None] + torch.arange(n_rest)[None, :]
        out2 = model(
            input_ids=x.to(device), attention_mask=attn.to(device), position_ids=pos.to(device),
            use_cache=False, **{_cache_argument(model): cache},
        )
        flat = out2.logits.reshape(-1, out2.logits.shape[-1])
        lp, hit = _gather_logprobs(flat, None, targets.reshape(-1).to(device))
        lp, hit = lp.reshape(targets.shape), hit.reshape(targets.shape)
        valid_d = valid.to(device)
        totals += torch.where(valid_d, lp, torch.zeros_like(lp)).sum(-1).double().cpu()
        greedy &= (hit | ~valid_d).all(-1).cpu()
        del out2, cache
    del out
    results: list[list[tuple[float, bool]]] = [[] for _ in batch]
    for r, (i, _) in enumerate(rows):
        results[i].append((float(totals[r]), bool(greedy[r])))
    return results


def sliding_windows(model: Any) -> tuple[dict[str, int | None], bool]:
    """Per attention kind, its window (None: full); and whether the model takes a dict of masks by layer type."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types and "sliding_attention" in layer_types:
        return {"full_attention": None, "sliding_attention": window}, True
    if window and getattr(config, "use_sliding_window", True):
        return {"all": window}, False
    return {"all": None}, False


def _logits_at(model: Any, keep: Any, **inputs: Any) -> Any:
    """Logits at the ``keep`` positions of a (rows, width) batch, flattened row-major to (kept, vocab).

    transformers releases that take a boolean (rows, width) ``logits_to_keep`` run the LM head on those positions
    only; older 5.x releases take a 1-D index, so the LM head runs from the first kept column of any row on.
    """
    import torch
    from transformers import modeling_utils

    if hasattr(modeling_utils, "slice_logits_to_keep"):
        out = model(**inputs, use_cache=False, logits_to_keep=keep.to(inputs["input_ids"].device))
        return out.logits.reshape(-1, out.logits.shape[-1])
    start = int(keep.float().argmax(dim=1).min())
    columns = torch.arange(start, keep.shape[1], device=inputs["input_ids"].device)
    out = model(**inputs, use_cache=False, logits_to_keep=columns)
    return out.logits[keep[:, start:].to(out.logits.device)]


class PrefixMemo:
    """The keys and values (one row) of the last shared prefix, for the next batch that starts with it."""

    def __init__(self) -> None:
        self.tokens: tuple[int, ...] = ()
        self.layers: list[tuple[Any, Any]] = []

    def get(self, model: Any, tokens: tuple[int, ...], mask: Callable[..., Any], device: Any) -> list[tuple[Any, Any]]:
        if tokens != self.tokens:
            self.layers = []  # free the old prefix first
            self.layers = _prefix_keys_values(model, tokens, mask, device)
            self.tokens = tokens
        return self.layers


def _cache_argument(model: Any) -> str:
    """The forward keyword that takes a key/value cache: ``cache`` in newer transformers, ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prefix_keys_values(model: Any, tokens: tuple[int, ...], mask: Callable[..., Any], device: Any) -> list[tuple[Any, Any]]:
    """One plain forward of the prefix; its keys and values per layer, each (1, heads, length, head_dim)."""
    import torch
    from transformers import DynamicCache

    n = len(tokens)
    cache = DynamicCache()  # full layers: sliding windows are applied by the masks, not by dropping keys
    position = torch.arange(n)[None]
    segment = torch.zeros((1, n), dtype=torch.long)
    model(input_ids=torch.tensor([tokens], device=device), attention_mask=mask(segment, position, 0),
          position_ids=position.to(device), use_cache=True, logits_to_keep=1, **{_cache_argument(model): cache})
    return [(layer.keys, layer.values) for layer in cache.layers]


def _shared_prefix_cache(layers: list[tuple[Any, Any]], rows: int) -> Any:
    """A cache that hands each of ``rows`` rows the prefix's keys and values (expanded, not copied) before its own
    and keeps nothing: built per batch on the stored prefix (a subclass, so models accept it as their cache)."""
    import torch
    from transformers import DynamicCache

    class SharedPrefixCache(DynamicCache):
        def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any) -> Any:
            k, v = layers[layer_idx]
            return (torch.cat([k.expand(rows, -1, -1, -1), key_states], dim=-2),
                    torch.cat([v.expand(rows, -1, -1, -1), value_states], dim=-2))

        def get_seq_length(self, layer_idx: int = 0) -> int:
            return int(layers[0][0].shape[-2])

    return SharedPrefixCache()


def _block_masks(model: Any, device: Any) -> Callable[..., Any]:
    """``mask(segment, position, shared)``: the additive attention mask(s) of a packed batch whose rows follow a
    ``shared``-token prefix (columns 0..shared-1 are the prefix, at positions 0..shared-1; every real token sees
    them). ``segment``: -1 pad, 0 context, j + 1 choice j. A dict by layer type for models with sliding layers."""
    import torch

    dtype = next(model.parameters()).dtype
    floor = torch.finfo(dtype).min
    windows, by_layer_type = sliding_windows(model)

    def build(segment: Any, position: Any, shared: int) -> Any:
        # built where the model runs: only the (rows, width) segment ids and positions cross to the device
        segment, position = segment.to(device), position.to(device)
        rows, width = segment.shape
        q, k = segment[:, :, None], segment[:, None, :]
        columns = torch.arange(width, device=device)
        eye = torch.eye(width, dtype=torch.bool, device=device)[None]
        own = (columns[:, None] >= columns[None, :])[None] & (q >= 0) & ((k == 0) | (k == q))
        own |= eye  # a padding query sees itself (no empty softmax rows)
        prefix = (segment >= 0)[:, :, None].expand(rows, width, shared)
        allowed = torch.cat([prefix, own], dim=2)
        key_position = torch.cat([torch.arange(shared, device=device)[None].expand(rows, shared), position], dim=1)

        def as_mask(window: int | None) -> Any:
            ok = allowed
            if window:
                distance = position[:, :, None] - key_position[:, None, :]
                ok = allowed & (distance < window)
                ok[:, :, shared:] |= eye
            zero = torch.zeros((), dtype=dtype, device=device)
            return torch.where(ok, zero, torch.full((), floor, dtype=dtype, device=device))[:, None]

        return {kind: as_mask(w) for kind, w in windows.items()} if by_layer_type else as_mask(windows["all"])

    return build


def _score_batch_packed(model: Any, batch: list[Group], pad_token_id: int, device: Any, shared: int = 0,
                        prefixes: PrefixMemo | None = None) -> list[list[tuple[float, bool]]]:
    """One row per group: context (after the ``shared`` prefix), then every choice's tokens but the last, under a
    block mask (module docstring)."""
    import torch

    if shared:
        shared = min(shared, min(len(g.context) for g in batch) - 1,
                     min(common_prefix(batch[0].context, g.context) for g in batch))
    width = max(packed_length(g) for g in batch) - shared
    rows = len(batch)
    ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    segment = torch.full((rows, width), -1, dtype=torch.long)  # -1 pad, 0 context, j + 1 choice j
    position = torch.zeros((rows, width), dtype=torch.long)
    target = torch.zeros((rows, width), dtype=torch.long)  # next token scored at this position
    keep = torch.zeros((rows, width), dtype=torch.bool)
    owner: list[tuple[int, int]] = []  # (row, choice) of each kept position, in row-major order
    for r, g in enumerate(batch):
        own = g.context[shared:]
        c = len(own)
        owner.append((r, -1))  # the last context position (kept first in the row): every choice's first token
        ids[r, :c] = torch.tensor(own)
        segment[r, :c] = 0
        position[r, :c] = torch.arange(shared, shared + c)
        start = c
        for j, cont in enumerate(g.continuations):
            m = len(cont) - 1
            ids[r, start:start + m] = torch.tensor(cont[:-1], dtype=torch.long)
            segment[r, start:start + m] = j + 1
            position[r, start:start + m] = torch.arange(shared + c, shared + c + m)
            target[r, start:start + m] = torch.tensor(cont[1:], dtype=torch.long)
            keep[r, start:start + m] = True
            owner += [(r, j)] * m
            start += m
        keep[r, c - 1] = True
    masks = _block_masks(model, device)
    extra: dict[str, Any] = {}
    if shared:
        memo = prefixes if prefixes is not None else PrefixMemo()
        layers = memo.get(model, tuple(batch[0].context[:shared]), masks, device)
        extra[_cache_argument(model)] = _shared_prefix_cache(layers, rows)
    if not shared and all(len(cont) == 1 for g in batch for cont in g.continuations):
        # rows hold contexts only: causal attention over real tokens is the whole rule, so a (rows, width) padding
        # mask lets the model build its own causal (and sliding) masks and pick its fused kernels. (Not after a
        # shared prefix: transformers sizes a 2D mask from the cache, and the shared-prefix cache stores nothing.)
        attention = (segment >= 0).long().to(device)
    else:
        attention = masks(segment, position, shared)
    logits = _logits_at(model, keep, input_ids=ids.to(device), attention_mask=attention,
                        position_ids=position.to(device), **extra)
    targets = target[keep]  # same order; the context's last position holds a dummy 0
    first_rows = [i for i, (_, j) in enumerate(owner) if j == -1]
    pair_row = torch.tensor([first_rows[r] for r, g in enumerate(batch) for _ in g.continuations])
    pair_tok = torch.tensor([cont[0] for g in batch for cont in g.continuations])
    rest = torch.tensor([i for i, (_, j) in enumerate(owner) if j != -1], dtype=torch.long)
    # first tokens of every choice, then every later choice token: one gather over the kept positions
    index = torch.cat([pair_row, rest])
    lp, hit = _gather_logprobs(logits, index.to(logits.device), torch.cat([pair_tok, targets[rest]]).to(logits.device))
    both = torch.stack([lp.double(), hit.double()]).cpu()  # one device-to-host transfer per batch
    lp, hit = both[0].tolist(), (both[1] > 0).tolist()
    totals: dict[tuple[int, int], list] = {}
    slots = [(r, j) for r, g in enumerate(batch) for j in range(len(g.continuations))] + [owner[i] for i in rest.tolist()]
    for slot, value, h in zip(slots, lp, hit):
        acc = totals.setdefault(slot, [0.0, True])
        acc[0] += value
        acc[1] = acc[1] and h
    del logits
    return [[(totals[(r, j)][0], bool(totals[(r, j)][1])) for j in range(len(g.continuations))] for r, g in enumerate(batch)]


def _gather_logprobs(logits: Any, rows: Any | None, targets: Any) -> tuple[Any, Any]:
    """Log-probabilities of ``targets`` at ``logits[rows]`` (rows of a (positions, vocab) matrix; ``None``: all) and
    whether each is the argmax; a chunk of rows at a time, so at most ``LOGPROB_CHUNK_ELEMENTS`` float32
    log-probabilities exist at once and the indexed rows are never copied all together."""
    import torch

    step = max(1, LOGPROB_CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    lps, hits = [], []
    for start in range(0, len(targets), step):
        picked = logits[start:start + step] if rows is None else logits[rows[start:start + step]]
        chunk = torch.log_softmax(picked.float(), dim=-1)
        t = targets[start:start + step]
        lps.append(chunk.gather(-1, t[:, None]).squeeze(-1))
        hits.append(chunk.argmax(-1) == t)
        del chunk
    return torch.cat(lps), torch.cat(hits)


def grad_free(model: Any) -> Any:
    """``torch.inference_mode()``, or ``torch.no_grad()`` when the model holds tensor-subclass weights (quanto's
    quantized tensors cannot run under inference mode)."""
    import torch

    plain = all(type(p) in (torch.nn.Parameter, torch.Tensor) for p in model.parameters())
    return torch.inference_mode() if plain else torch.no_grad()


def reference_loglik(model: Any, context: Sequence[int], continuation: Sequence[int]) -> tuple[float, bool]:
    """The plain, unbatched computation (one forward of context + continuation); the scorer's test oracle."""
    import torch

    with torch.inference_mode():
        ids = torch.tensor([list(context) + list(continuation)[:-1]])
        logits = model(input_ids=ids).logits[0].float()
        lp = torch.log_softmax(logits[-len(continuation):], dim=-1)
        target = torch.tensor(list(continuation))
        return float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


def iter_flat(batches: Iterable[list[ItemScores]]) -> list[ItemScores]:
    return [s for batch in batches for s in batch]
