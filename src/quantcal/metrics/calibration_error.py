"""Binned calibration errors of the top label: ``ece``, ``mce``, ``oe``; and the reliability table behind them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantcal.metrics.binning import bin_index, bin_sums
from quantcal.metrics.inputs import Inputs, as_inputs


@dataclass(frozen=True)
class ReliabilityBins:
    """Per non-empty bin: item count, mean confidence, accuracy (for reliability diagrams)."""

    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def reliability_bins(probs: np.ndarray | Inputs, labels: np.ndarray | None = None, n_bins: int = 15,
                     binning: str = "width") -> ReliabilityBins:
    d = as_inputs(probs, labels)
    index, m = bin_index(d.confidence, n_bins, binning)
    counts, conf_sum, correct_sum = bin_sums(index, m, d.confidence, d.correct)
    keep = counts > 0
    return ReliabilityBins(counts[keep], conf_sum[keep] / counts[keep], correct_sum[keep] / counts[keep])


def ece(probs: np.ndarray | Inputs, labels: np.ndarray | None = None, n_bins: int = 15, binning: str = "width") -> float:
    """Expected calibration error of the top label (Naeini et al. 2015; Guo et al. 2017):

    ``ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)|`` over bins of the confidence, equal-width
    (``binning="width"``) or equal-mass (``"mass"``, see :mod:`quantcal.metrics.binning`). With ``n_bins=1``
    it is ``|mean confidence - accuracy|``.
    """
    d = as_inputs(probs, labels)
    index, m = bin_index(d.confidence, n_bins, binning)
    _, conf_sum, correct_sum = bin_sums(index, m, d.confidence, d.correct)
    return float(np.abs(correct_sum - conf_sum).sum() / d.n)


def mce(probs: np.ndarray | Inputs, labels: np.ndarray | None = None, n_bins: int = 15, binning: str = "width") -> float:
    """Maximum calibration error (Naeini et al. 2015): ``max_m |acc(B_m) - conf(B_m)|`` over non-empty bins."""
    r = reliability_bins(probs, labels, n_bins, binning)
    return float(np.abs(r.accuracy - r.confidence).max())


def oe(probs: np.ndarray | Inputs, labels: np.ndarray | None = None, n_bins: int = 15, binning: str = "width") -> float:
    """Overconfidence error (Thulasidasan et al. 2019):
    ``OE = sum_m |B_m|/n * conf(B_m) * max(conf(B_m) - acc(B_m), 0)``."""
    d = as_inputs(probs, labels)
    r = reliability_bins(d, None, n_bins, binning)
    return float((r.counts / d.n * r.confidence * np.maximum(r.confidence - r.accuracy, 0.0)).sum())


def overconfidence_rate(probs: np.ndarray | Inputs, labels: np.ndarray | None = None, tau: float = 0.8) -> float:
    """Share of all items answered wrongly with confidence at least ``tau`` (Study A's behavioural metric):
    ``mean_i 1[conf_i >= tau and pred_i != y_i]``."""
    return float(overconfident_items(as_inputs(probs, labels), tau).mean())


def overconfident_items(d: Inputs, tau: float = 0.8) -> np.ndarray:
    return ((d.confidence >= tau) & (d.correct == 0)).astype(np.float64)
