"""Accuracy, the probability of the truth, and proper scoring rules: ``acc``, ``p_gold``, ``nll``, ``brier``,
``brier_top``, ``entropy``."""

from __future__ import annotations

import numpy as np

from quantcal.metrics.inputs import Inputs, as_inputs

TINY = np.finfo(np.float64).tiny


def correct_items(d: Inputs) -> np.ndarray:
    return d.correct


def p_gold_items(d: Inputs) -> np.ndarray:
    return d.p_gold


def nll_items(d: Inputs) -> np.ndarray:
    return -np.log(np.maximum(d.p_gold, TINY))


def brier_items(d: Inputs) -> np.ndarray:
    # sum_k (p_k - 1[k = y])^2 = sum_k p_k^2 - 2 p_y + 1
    return np.square(d.probs).sum(axis=1) - 2 * d.p_gold + 1


def brier_top_items(d: Inputs) -> np.ndarray:
    return np.square(d.confidence - d.correct)


def entropy_items(d: Inputs) -> np.ndarray:
    """Per-item entropy in nats (``0 log 0 = 0``)."""
    p = d.probs
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)


def acc(probs: np.ndarray | Inputs, labels: np.ndarray | None = None) -> float:
    """Accuracy: ``mean_i 1[argmax_k p_ik = y_i]`` (ties to the lowest index)."""
    return float(correct_items(as_inputs(probs, labels)).mean())


def p_gold(probs: np.ndarray | Inputs, labels: np.ndarray | None = None) -> float:
    """Mean probability of the gold answer: ``mean_i p_{i,y_i}`` (Study B's p(y|x) after the softmax over choices;
    a linear score, not a proper one: read it beside NLL and Brier)."""
    return float(p_gold_items(as_inputs(probs, labels)).mean())


def nll(probs: np.ndarray | Inputs, labels: np.ndarray | None = None) -> float:
    """Negative log-likelihood of the gold answer: ``mean_i -ln p_{i,y_i}``.

    A gold probability that underflowed to 0 counts as the smallest positive double (``-ln`` ≈ 708), so the
    score stays finite.
    """
    return float(nll_items(as_inputs(probs, labels)).mean())


def brier(probs: np.ndarray | Inputs, labels: np.ndarray | None = None) -> float:
    """Multi-class Brier score (Brier 1950), as lm-evaluation-harness's ``brier_score``:
    ``mean_i sum_k (p_ik - 1[k = y_i])^2``. Ranges over [0, 2]."""
    return float(brier_items(as_inputs(probs, labels)).mean())


def brier_top(probs: np.ndarray | Inputs, labels: np.ndarray | None = None) -> float:
    """Top-label (binary) Brier score of confidence against correctness: ``mean_i (conf_i - correct_i)^2``."""
    return float(brier_top_items(as_inputs(probs, labels)).mean())


def entropy(probs: np.ndarray | Inputs, labels: np.ndarray | None = None, base: float = np.e) -> float:
    """Mean predictive entropy ``mean_i -sum_k p_ik log_b p_ik`` (``0 log 0 = 0``); natural log by default,
    ``base=2`` gives bits as in Study B."""
    return float(entropy_items(as_inputs(probs, labels)).mean() / np.log(base))
