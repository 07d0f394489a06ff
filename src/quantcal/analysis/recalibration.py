"""Temperature scaling (Guo et al. 2017) on choice scores, cross-fitted so reported metrics are out-of-fold.

``p_j = softmax_j(s_j / T)`` where ``s`` are an item's choice scores (log-likelihoods, possibly length
normalised; ``-inf`` marks padding). ``T`` minimises the NLL of the gold answers, found by bounded 1-D
optimisation over ``log T`` in ``[log 0.01, log 100]``. Dividing by ``T > 0`` keeps every ordering of scores, so
no prediction changes (ties stay ties). ``cross_fit_temperature`` splits the items into ``k`` folds, fits on
``k - 1`` and applies to the held-out fold; the metrics after recalibration are computed on those out-of-fold
probabilities, so the improvement is not measured on the data that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from quantcal.errors import QuantcalError
from quantcal.analysis.predictions import softmax_rows

LOG_T_BOUNDS = (np.log(0.01), np.log(100.0))


def apply_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    return softmax_rows(np.asarray(scores, dtype=np.float64) / temperature)


def _nll(scores: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = scores / temperature
    top = np.max(scaled, axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float((log_z - scaled[np.arange(labels.size), labels]).mean())


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if s.ndim != 2 or y.shape != (s.shape[0],) or s.shape[0] == 0:
        raise QuantcalError(f"scores must be (n, k) and labels (n,), got {s.shape} and {y.shape}")
    if np.isnan(s).any() or np.isposinf(s).any() or not np.isfinite(s[np.arange(y.size), y]).all():
        raise QuantcalError("scores must be finite (-inf only for padding) and finite at the gold answer")
    return s, y.astype(np.int64)


def fit_temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    """The NLL-minimising temperature on these items."""
    s, y = _check(scores, labels)
    result = minimize_scalar(lambda log_t: _nll(s, y, float(np.exp(log_t))), bounds=LOG_T_BOUNDS, method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


@dataclass(frozen=True)
class CrossFit:
    probs: np.ndarray  # out-of-fold recalibrated probabilities
    fold_temperatures: tuple[float, ...]
    temperature_all: float  # fitted on all items (for applying to new data)


def cross_fit_temperature(scores: np.ndarray, labels: np.ndarray, k: int = 5, seed: int = 0) -> CrossFit:
    s, y = _check(scores, labels)
    if k < 2 or k > y.size:
        raise QuantcalError(f"cross-fitting needs 2 <= k <= n items, got k={k}, n={y.size}")
    folds = np.array_split(np.random.default_rng(seed).permutation(y.size), k)
    probs = np.zeros_like(s)
    temps = []
    for held in folds:
        train = np.setdiff1d(np.arange(y.size), held)
        t = fit_temperature(s[train], y[train])
        temps.append(t)
        probs[held] = apply_temperature(s[held], t)
    return CrossFit(probs, tuple(temps), fit_temperature(s, y))


def recalibration_report(scores: np.ndarray, labels: np.ndarray, metrics: Sequence[str] = ("ece", "nll", "brier", "acc"),
                         k: int = 5, seed: int = 0, n_resamples: int = 1000, level: float = 0.95) -> dict[str, Any]:
    """Metrics before and after cross-fitted temperature scaling, the share of each loss it removes, and the
    recovered part ``m(before) - m(after)`` with a paired bootstrap interval (the same items before and after,
    resampled jointly; the fold temperatures are held fixed)."""
    from quantcal.metrics import compute, paired_bootstrap

    s, y = _check(scores, labels)
    fit = cross_fit_temperature(s, y, k, seed)
    before_probs = apply_temperature(s, 1.0)
    before = {m: compute(m, before_probs, y) for m in metrics}
    after = {m: compute(m, fit.probs, y) for m in metrics}
    recovered = {m: (before[m] - after[m]) / before[m] if before[m] else 0.0 for m in metrics if m != "acc"}
    recovered_interval = {m: paired_bootstrap(m, fit.probs, before_probs, y, n_resamples, seed, level).to_json()
                          for m in metrics if m != "acc"}
    return {"temperature": fit.temperature_all, "fold_temperatures": list(fit.fold_temperatures),
            "at_bound": at_bound(fit.temperature_all) or any(at_bound(t) for t in fit.fold_temperatures),
            "before": before, "after": after, "share_recovered": recovered, "recovered": recovered_interval,
            "k": k, "seed": seed}


def recalibrated_difference(ref_scores: np.ndarray, var_scores: np.ndarray, labels: np.ndarray,
                            metrics: Sequence[str] = ("ece",), k: int = 5, seed: int = 0, n_resamples: int = 1000,
                            level: float = 0.95) -> dict[str, Any]:
    """The damage that one temperature leaves: ``m(variant after) - m(reference after)`` with a paired bootstrap
    interval, each model recalibrated by its own cross-fitted temperature (the same folds for both, so each item's
    two out-of-fold probabilities come from temperatures fitted on the same other items). Set beside the paired
    difference before (temperature 1), it answers "how much of the variant's calibration damage is recoverable
    without changing any prediction": all of it when the interval after straddles 0 and the one before did not."""
    a, y = _check(ref_scores, labels)
    b, _ = _check(var_scores, labels)
    if a.shape[0] != b.shape[0]:
        raise QuantcalError(f"the two models' scores cover different items: {a.shape[0]} and {b.shape[0]} rows")
    from quantcal.metrics import paired_bootstrap

    ref_fit, var_fit = cross_fit_temperature(a, y, k, seed), cross_fit_temperature(b, y, k, seed)
    return {m: paired_bootstrap(m, ref_fit.probs, var_fit.probs, y, n_resamples, seed, level).to_json() for m in metrics}


def at_bound(temperature: float) -> bool:
    """Whether a fitted temperature sits at the search bound (within 1% of 0.01 or 100). At T = 100 the scores are
    flattened to near-uniform probabilities: the NLL falls to about ln(k) because the model's preferences are
    removed, not calibrated, so the 'after' numbers describe a useless model and must not read as recovery."""
    log_t = np.log(temperature)
    return bool(min(abs(log_t - LOG_T_BOUNDS[0]), abs(log_t - LOG_T_BOUNDS[1])) < 0.01)
