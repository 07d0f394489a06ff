"""The record every task produces: one multiple-choice question, ready to score."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Item:
    """One multiple-choice item.

    ``context`` is the full prompt (description included); each choice is scored as the
    continuation ``target_delimiter + choice`` of it, as lm-evaluation-harness does.
    ``golds`` holds every true choice (TruthfulQA MC2 has several); ``gold`` is the first.

    Items built by another harness may give the scored pairs explicitly: ``contexts[j]`` and ``continuations[j]``
    (delimiter included) for choice ``j``. Multiple-input items (Winogrande) put the choices in the contexts and
    score one shared continuation after each; ``context`` then holds what the contexts have in common, for display.
    """

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int
    golds: tuple[int, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    contexts: tuple[str, ...] = ()
    continuations: tuple[str, ...] = ()

    def pairs(self, delimiter: str) -> list[tuple[str, str]]:
        """``(context, continuation)`` scored for each choice."""
        contexts = self.contexts or (self.context,) * len(self.choices)
        continuations = self.continuations or tuple(delimiter + choice for choice in self.choices)
        return list(zip(contexts, continuations))

    def __post_init__(self) -> None:
        if not self.golds:
            object.__setattr__(self, "golds", (self.gold,))

    @property
    def content_hash(self) -> str:
        """A stable hash of what is scored (context, choices, golds): joins items across variants."""
        parts: list[Any] = [self.context, list(self.choices), list(self.golds)]
        if self.contexts or self.continuations:
            parts += [list(self.contexts), list(self.continuations)]
        blob = json.dumps(parts, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
