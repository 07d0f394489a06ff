"""Confidence as a predictor of correctness: ``auroc``, ``aurc`` and ``selective_acc``.

Items with equal confidence are indistinguishable to a threshold, so ties are resolved by their expectation
over a random order (ranks averaged for AUROC; errors spread evenly across a tied block for the risk-coverage
curve). The results are therefore independent of item order.
"""

from __future__ import annotations

import math

import numpy as np

from quantcal.errors import QuantcalError
from quantcal.metrics.inputs import Inputs, as_inputs


def auroc(probs: np.ndarray | Inputs, labels: np.ndarray | None = None) -> float:
    """Area under the ROC curve of confidence separating correct from wrong answers (Mann-Whitney U / (n+ n-),
    ties counted one half). NaN when all answers are correct or all wrong."""
    d = as_inputs(probs, labels)
    positive = d.correct == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # scipy: imported when a metric is computed, not when one is listed

    ranks = rankdata(d.confidence)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_errors_by_coverage(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """``E[errors among the i most confident items]`` for ``i = 1..n``, ties spread evenly (``correct`` in {0, 1})."""
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    wrong = 1.0 - np.asarray(correct, dtype=np.float64)[order]
    starts = np.flatnonzero(np.r_[True, conf[1:] != conf[:-1]])
    ends = np.r_[starts[1:], conf.size]
    block_errors = np.add.reduceat(wrong, starts)
    before = np.r_[0.0, np.cumsum(block_errors)[:-1]]
    position = np.arange(1, conf.size + 1)
    block = np.repeat(np.arange(starts.size), ends - starts)
    return before[block] + block_errors[block] * (position - starts[block]) / (ends - starts)[block]


def risk_coverage_area(confidence: np.ndarray, correct: np.ndarray) -> float:
    """:func:`aurc` of a confidence per item and whether the item is right."""
    errors = expected_errors_by_coverage(confidence, correct)
    return float((errors / np.arange(1, confidence.size + 1)).mean())


def accuracy_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float = 0.8) -> float:
    """:func:`selective_acc` of a confidence per item and whether the item is right."""
    if not 0 < coverage <= 1:
        raise QuantcalError(f"coverage must be in (0, 1], got {coverage}")
    k = max(1, math.ceil(coverage * confidence.size - 1e-12))
    return float(1.0 - expected_errors_by_coverage(confidence, correct)[k - 1] / k)


def aurc(probs: np.ndarray | Inputs, labels: np.ndarray | None = None) -> float:
    """Area under the risk-coverage curve (Geifman & El-Yaniv 2017): ``1/n sum_{i=1..n} risk(i/n)``, where
    ``risk(i/n)`` is the error rate among the ``i`` most confident items. Lower is better."""
    d = as_inputs(probs, labels)
    return risk_coverage_area(d.confidence, d.correct)


def selective_acc(probs: np.ndarray | Inputs, labels: np.ndarray | None = None, coverage: float = 0.8) -> float:
    """Accuracy on the ``ceil(coverage * n)`` most confident items (ties spread evenly)."""
    d = as_inputs(probs, labels)
    return accuracy_at_coverage(d.confidence, d.correct, coverage)
