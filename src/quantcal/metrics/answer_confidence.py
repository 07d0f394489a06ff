"""Calibration of a stated confidence in one answer against whether the answer is right: the metrics for generated
answers, where there are no choices to take a softmax over, only a confidence ``c_i`` in ``[0, 1]`` and a
correctness ``y_i`` in ``{0, 1}`` (Kadavath et al. 2022; the ``conf_*`` measures of
:mod:`quantcal.analysis.generated`).

- ``ece``: ``sum_m |B_m|/n |mean(y in B_m) - mean(c in B_m)|`` over 15 equal-width bins of ``c`` (the binary ECE of
  Study B; the same binning as :func:`quantcal.metrics.ece`);
- ``ace``: ``1/R sum_r |mean(y in r) - mean(c in r)|`` over ``R = 15`` ranges of (nearly) equal size of the answers
  sorted by ``c`` (equal ``c`` ordered by ``y``), Nixon et al. 2019's adaptive calibration error on the one
  binary outcome "the answer is right" (a confidence of 0 counts: it is a stated confidence, not a missing choice);
- ``brier``: ``mean_i (c_i - y_i)^2``;
- ``nll``: ``-mean_i [y_i log c_i + (1 - y_i) log(1 - c_i)]``, ``c`` clipped to ``[1e-12, 1 - 1e-12]``;
- ``auroc``: the probability that a right answer has a higher confidence than a wrong one, ties one half
  (Mann-Whitney U / (n+ n-)); NaN when all answers are right or all wrong;
- ``aurc``: the area under the risk-coverage curve, ``1/n sum_i risk(i/n)`` with ``risk(i/n)`` the error rate of the
  ``i`` most confident answers (Geifman & El-Yaniv 2017; ties spread evenly); lower is better;
- ``selective_acc``: the accuracy of the 80% most confident answers (ties spread evenly);
- ``overconfidence_rate``: ``mean_i 1[c_i >= tau and y_i = 0]`` (tau 0.8, Study A's);
- ``acc``: ``mean_i y_i``; ``mean_confidence``: ``mean_i c_i``.

Every function takes ``(probs, labels)`` as the bootstrap passes them: ``probs[:, 1]`` is ``c`` and ``labels`` is
``y`` (:func:`as_pair` builds them), so :func:`quantcal.metrics.bootstrap` and ``paired_bootstrap`` resample them
like any metric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
from scipy.stats import rankdata

from quantcal.metrics.binning import bin_index, bin_sums
from quantcal.metrics.selective import accuracy_at_coverage, risk_coverage_area

if TYPE_CHECKING:
    from quantcal.metrics.bootstrap import Interval

CLIP = 1e-12


def as_pair(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, labels)`` carrying confidences and correctness through the bootstrap: rows ``[1 - c, c]``, label ``y``."""
    c = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    return np.stack([1.0 - c, c], axis=1), np.asarray(correct).astype(np.int64)


def _unpack(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(getattr(probs, "probs", probs))
    y = np.asarray(getattr(probs, "labels", labels))
    return p[:, 1], y.astype(np.float64)


def acc(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(_unpack(probs, labels)[1].mean())


def mean_confidence(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(_unpack(probs, labels)[0].mean())


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """A reliability diagram's points: per non-empty bin of ``c`` (``n_bins`` equal-width, as :func:`ece` bins it)
    its mean confidence, its accuracy ``mean(y)`` and its count."""
    c = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(correct, dtype=np.float64)
    index, m = bin_index(c, n_bins, "width")
    counts, c_sum, y_sum = bin_sums(index, m, c, y)
    keep = counts > 0
    return {"confidence": (c_sum[keep] / counts[keep]).tolist(), "accuracy": (y_sum[keep] / counts[keep]).tolist(),
            "counts": counts[keep].tolist()}


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    c, y = _unpack(probs, labels)
    index, m = bin_index(c, n_bins, "width")
    _, c_sum, y_sum = bin_sums(index, m, c, y)
    return float(np.abs(y_sum - c_sum).sum() / c.size)


def ace(probs: np.ndarray, labels: np.ndarray, n_ranges: int = 15) -> float:
    c, y = _unpack(probs, labels)
    order = np.lexsort((y, c))
    parts = min(n_ranges, c.size)
    return float(np.mean([abs(h.mean() - s.mean()) for s, h in zip(np.array_split(c[order], parts),
                                                                    np.array_split(y[order], parts))]))


def aurc(probs: np.ndarray, labels: np.ndarray) -> float:
    return risk_coverage_area(*_unpack(probs, labels))


def selective_acc(probs: np.ndarray, labels: np.ndarray, coverage: float = 0.8) -> float:
    return accuracy_at_coverage(*_unpack(probs, labels), coverage)


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    c, y = _unpack(probs, labels)
    return float(np.mean((c - y) ** 2))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    c, y = _unpack(probs, labels)
    c = np.clip(c, CLIP, 1 - CLIP)
    return float(-np.mean(y * np.log(c) + (1 - y) * np.log(1 - c)))


def auroc(probs: np.ndarray, labels: np.ndarray) -> float:
    c, y = _unpack(probs, labels)
    right = y > 0.5
    n_pos, n_neg = int(right.sum()), int((~right).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(c)
    return float((ranks[right].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def overconfidence_rate(probs: np.ndarray, labels: np.ndarray, tau: float = 0.8) -> float:
    c, y = _unpack(probs, labels)
    return float(np.mean((c >= tau) & (y < 0.5)))


#: The metrics a generated-answer evaluation reports, in order.
ANSWER_METRICS = {"acc": acc, "mean_confidence": mean_confidence, "ece": ece, "ace": ace, "brier": brier, "nll": nll,
                  "auroc": auroc, "aurc": aurc, "selective_acc": selective_acc,
                  "overconfidence_rate": overconfidence_rate}


def paired_answer_bootstrap(fn: Callable[[np.ndarray, np.ndarray], float], a: tuple[np.ndarray, np.ndarray],
                            b: tuple[np.ndarray, np.ndarray], n_resamples: int = 1000, seed: int = 0,
                            level: float = 0.95) -> "Interval":
    """``fn(b) - fn(a)`` on the same items, each side with its own confidences and correctness (two models answer
    the same questions, right or wrong on their own), with the percentile interval and p-value of resampling items
    jointly (:mod:`quantcal.metrics.bootstrap`)."""
    from dataclasses import replace

    from quantcal.metrics.bootstrap import _interval, bootstrap_p_value, check_resamples

    (pa, ya), (pb, yb) = as_pair(*a), as_pair(*b)
    n = ya.shape[0]
    check_resamples(n_resamples, n)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    samples = np.array([fn(pb[row], yb[row]) - fn(pa[row], ya[row]) for row in idx])
    estimate = fn(pb, yb) - fn(pa, ya)
    return replace(_interval(estimate, samples, level), p_value=bootstrap_p_value(estimate, samples))
