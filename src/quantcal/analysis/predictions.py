"""From stored per-choice log-likelihoods to probabilities, predictions, confidence and correctness.

``p_j = softmax_j(ll_j / L_j)`` over an item's choices, with the length normalisation ``L``:
``none`` (L = 1, Study B's p(y|x) = product of token probabilities), ``tokens``, ``chars`` (lm-eval's
``acc_norm``: the choice's character count, without the target delimiter) or ``bytes`` (UTF-8 bytes).
Items with fewer choices than the widest item are zero-padded. Prediction = argmax (ties: lowest index,
as numpy and lm-eval), confidence = max probability, correct = prediction is a true answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from quantcal.errors import QuantcalError
from quantcal.store.database import ScoredItem

Normalization = Literal["none", "tokens", "chars", "bytes"]
NORMALIZATIONS: tuple[str, ...] = ("none", "tokens", "chars", "bytes")


@dataclass(frozen=True)
class Predictions:
    item_ids: list[str]
    item_hashes: list[str]
    probs: np.ndarray  # (n, k), rows sum to 1, zero-padded
    scores: np.ndarray  # (n, k) the choice scores ``probs`` is the softmax of (length-normalised), -inf padded
    labels: np.ndarray  # (n,) first true answer
    golds: list[tuple[int, ...]]
    normalization: str

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)

    @property
    def correct(self) -> np.ndarray:
        pred = self.pred
        return np.array([p in g for p, g in zip(pred, self.golds)], dtype=bool)

    @property
    def true_mass(self) -> np.ndarray:
        """Probability mass on the true answers (TruthfulQA MC2's score; p(gold) for single-answer tasks)."""
        return np.array([self.probs[i, list(g)].sum() for i, g in enumerate(self.golds)])


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax that treats -inf entries (padding) as probability 0."""
    top = np.max(scores, axis=1, keepdims=True)
    exp = np.exp(scores - top)
    return exp / exp.sum(axis=1, keepdims=True)


def log_softmax_rows(scores: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, computed without underflow (a probability of 1e-400 stays about -921, not -inf);
    ``-inf`` entries (padding) stay ``-inf``."""
    top = np.max(scores, axis=1, keepdims=True)
    shifted = scores - top
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def normalization_problem(values: Sequence[str]) -> str | None:
    """Why ``values`` is not a non-empty list of length normalizations (None when it is)."""
    bad = [v for v in values if v not in NORMALIZATIONS]
    if bad or not values:
        return (f"unknown normalization {', '.join(map(repr, bad)) or '(none given)'}; "
                f"expected some of {', '.join(NORMALIZATIONS)}")
    return None


def choice_scores(items: Sequence[ScoredItem], normalization: str = "none") -> np.ndarray:
    """(n, k) matrix of length-normalised log-likelihoods, ``-inf`` where an item has fewer choices."""
    if normalization not in NORMALIZATIONS:
        raise QuantcalError(f"unknown length normalization {normalization!r}; expected one of {', '.join(NORMALIZATIONS)}")
    if not items:
        raise QuantcalError("no scored items")
    k = max(len(it.logliks) for it in items)
    scores = np.full((len(items), k), -np.inf)
    for i, it in enumerate(items):
        ll = np.asarray(it.logliks, dtype=np.float64)
        if normalization == "tokens":
            if 0 in it.n_tokens:
                raise QuantcalError(f"item {it.item_id}: token counts unknown (a run imported from lm-eval); "
                                    "use normalization none, chars or bytes")
            ll = ll / np.asarray(it.n_tokens, dtype=np.float64)
        elif normalization == "chars":
            ll = ll / np.asarray(it.n_chars, dtype=np.float64)
        elif normalization == "bytes":
            ll = ll / np.asarray(it.n_bytes, dtype=np.float64)
        scores[i, : len(ll)] = ll
    return scores


def predictions(items: Sequence[ScoredItem], normalization: str = "none") -> Predictions:
    scores = choice_scores(items, normalization)
    return Predictions(
        item_ids=[it.item_id for it in items],
        item_hashes=[it.item_hash for it in items],
        probs=softmax_rows(scores),
        scores=scores,
        labels=np.array([it.gold for it in items]),
        golds=[it.golds for it in items],
        normalization=normalization,
    )


def task_summary(items: Sequence[ScoredItem], kind: str = "mc") -> dict[str, float]:
    """lm-eval's headline numbers: ``acc`` (raw log-likelihood argmax) and ``acc_norm`` (per-character).

    For TruthfulQA MC2 (``kind="mc2"``) ``acc`` is lm-eval's MC2 score: the mean normalised probability
    mass on the true answers; ``acc_norm`` is not defined there and is left out.
    """
    raw = predictions(items, "none")
    out = {"n": float(len(items))}
    if kind == "mc2":
        out["acc"] = float(raw.true_mass.mean())
        return out
    out["acc"] = float(raw.correct.mean())
    out["acc_norm"] = float(predictions(items, "chars").correct.mean())
    return out
