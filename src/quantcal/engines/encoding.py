"""Tokenising (context, choice) pairs exactly as lm-evaluation-harness 0.4.x's HF backend does.

For each item the continuation of choice ``j`` is ``target_delimiter + choice_j``. Trailing whitespace
of the context moves to the front of the continuation; the continuation's tokens are the tail of
``encode(context + continuation)`` after ``len(encode(context))`` tokens. ``encode`` uses the
tokenizer's default special tokens (so a BOS is added where the tokenizer adds one) unless the string
already starts with the BOS text. An empty context becomes the BOS (else EOS) token. Inputs longer than
the model window keep their last ``window + 1`` tokens, as lm-eval does.

Because every choice of an item is tokenised against the same context, the model input of each choice
starts with the same context tokens: the scorer computes them once per item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from quantcal.errors import QuantcalError
from quantcal.tasks.items import Item


@dataclass(frozen=True)
class Group:
    """Choices of one item that share one context token sequence."""

    item_index: int
    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    choices: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.context) + max(len(c) for c in self.continuations)


@dataclass(frozen=True)
class EncodedItem:
    item_index: int
    groups: tuple[Group, ...]
    n_tokens: tuple[int, ...]
    truncated: bool = False  # some choice's context lost its start to the model window (left truncation)


class Encoder:
    """lm-eval-compatible tokenisation with a per-context cache (contexts repeat across choices)."""

    def __init__(self, tokenizer: Any, max_length: int, add_special_tokens: bool | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.add_special_tokens = add_special_tokens
        bos = tokenizer.bos_token_id
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_token_id
        self._bos_text = tokenizer.decode(self.prefix_token_id) if self.prefix_token_id is not None else None

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        flag = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        kwargs: dict[str, bool] = {} if flag is None else {"add_special_tokens": flag}
        if add_special_tokens is None and self._bos_text and text.startswith(self._bos_text):
            kwargs["add_special_tokens"] = False
        return self.tokenizer.encode(text, **kwargs)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if self.prefix_token_id is None:
                raise QuantcalError("empty context and the tokenizer has neither BOS nor EOS token")
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def encode_item(self, index: int, item: Item, delimiter: str) -> EncodedItem:
        pairs = [self.encode_pair(context, continuation) for context, continuation in item.pairs(delimiter)]
        for j, (_, cont) in enumerate(pairs):
            if not cont:
                raise QuantcalError(f"item {item.id}: choice {j} encodes to no tokens")
            if len(cont) > self.max_length:
                raise QuantcalError(f"item {item.id}: choice {j} has {len(cont)} tokens, more than the model window {self.max_length}")
        n_tokens = tuple(len(c) for _, c in pairs)
        contexts = {tuple(c) for c, _ in pairs}
        fits = all(len(c) + len(x) <= self.max_length + 1 for c, x in pairs)
        if fits and len(contexts) == 1:
            groups: Sequence[Group] = (Group(index, tuple(pairs[0][0]), tuple(tuple(x) for _, x in pairs), tuple(range(len(pairs)))),)
        else:
            # Rare: left truncation differs per choice (or an odd tokenizer split the context
            # differently): score each choice on its own, exactly as lm-eval feeds it.
            groups = tuple(Group(index, tuple(truncate(c, x, self.max_length)), (tuple(x),), (j,)) for j, (c, x) in enumerate(pairs))
        return EncodedItem(index, tuple(groups), n_tokens, not fits)


def truncate(context: list[int], continuation: list[int], max_length: int) -> list[int]:
    """The context tokens lm-eval keeps: the model sees ``(context + continuation)[-(max_length + 1):][:-1]``."""
    keep = max_length + 1 - len(continuation)
    return context[-keep:] if len(context) > keep else context
