"""Uncertainty of any metric: percentile bootstrap (Efron & Tibshirani 1993), single and paired.

``bootstrap`` resamples items with replacement ``n_resamples`` times and reports the metric on the full data
with the ``level`` percentile interval of the resampled values. ``paired_bootstrap`` resamples the *same*
items for two variants and reports ``metric(b) - metric(a)`` with its interval: an interval that excludes 0 is
a change that item sampling alone does not explain. Resamples are drawn from ``numpy.random.default_rng(seed)``.

With default parameters every metric is evaluated on all resamples at once from the matrix of draw counts
(:mod:`quantcal.metrics.resampling`); other parameters and custom callables recompute the metric per resample.
For ``smece`` with automatic bandwidth, the resamples use the bandwidth chosen on the full data (a
fixed-bandwidth smECE per resample).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from quantcal.errors import QuantcalError
from quantcal.metrics.inputs import Inputs, as_inputs
from quantcal.metrics.registry import METRICS, get_metric
from quantcal.metrics.resampling import VECTORISED, counts_from_indices, smece_resampled


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float
    n_resamples: int

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


MetricArg = str | Callable[..., float]


def _resolve(metric: MetricArg, d: Inputs, params: dict[str, Any]) -> tuple[str | None, Callable[[Inputs], float]]:
    """The metric as a function of inputs, and its name when the vectorised resampling applies."""
    if callable(metric):
        return None, lambda x: float(metric(x.probs, x.labels, **params))
    fn = get_metric(metric).fn
    if metric == "smece" and params.get("sigma") is None:
        from quantcal.metrics.smooth import smece_bandwidth

        params = {**params, "sigma": smece_bandwidth(d)}
    fast = metric if (not params and metric in VECTORISED) or (metric == "smece" and set(params) == {"sigma"}) else None
    return fast, lambda x: fn(x, **params)


def _indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    if n_resamples < 1:
        raise QuantcalError(f"n_resamples must be at least 1, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _resampled(name: str | None, fn: Callable[[Inputs], float], d: Inputs, idx: np.ndarray,
               sigma: float | None = None) -> np.ndarray:
    if name == "smece":
        return smece_resampled(d, counts_from_indices(idx, d.n), sigma)
    if name is not None:
        return VECTORISED[name](d, counts_from_indices(idx, d.n))
    return np.array([fn(d.take(row)) for row in idx])


def _interval(estimate: float, samples: np.ndarray, level: float) -> Interval:
    if not 0 < level < 1:
        raise QuantcalError(f"level must be in (0, 1), got {level}")
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return Interval(estimate, float("nan"), float("nan"), level, int(samples.size))
    alpha = (1 - level) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return Interval(float(estimate), float(low), float(high), level, int(samples.size))


def bootstrap(metric: MetricArg, probs: np.ndarray | Inputs, labels: np.ndarray | None = None, n_resamples: int = 1000,
              seed: int = 0, level: float = 0.95, **params: Any) -> Interval:
    """The metric with its percentile bootstrap interval."""
    d = as_inputs(probs, labels)
    name, fn = _resolve(metric, d, params)
    estimate = get_metric(metric).fn(d, **params) if isinstance(metric, str) else fn(d)
    sigma = _sigma(metric, d, params)
    return _interval(estimate, _resampled(name, fn, d, _indices(d.n, n_resamples, seed), sigma), level)


def _sigma(metric: MetricArg, d: Inputs, params: dict[str, Any]) -> float | None:
    if metric != "smece":
        return None
    if params.get("sigma") is not None:
        return float(params["sigma"])
    from quantcal.metrics.smooth import smece_bandwidth

    return smece_bandwidth(d)


def paired_bootstrap(metric: MetricArg, probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray,
                     n_resamples: int = 1000, seed: int = 0, level: float = 0.95, **params: Any) -> Interval:
    """``metric(b) - metric(a)`` on the same items, with an interval from resampling items jointly."""
    a, b = as_inputs(probs_a, labels), as_inputs(probs_b, labels)
    name_a, fn_a = _resolve(metric, a, params)
    _, fn_b = _resolve(metric, b, params)
    idx = _indices(a.n, n_resamples, seed)
    estimate = fn_b(b) - fn_a(a)
    if metric == "smece" and params.get("sigma") is None:
        estimate = get_metric("smece").fn(b) - get_metric("smece").fn(a)
    return _interval(estimate, _resampled(name_a, fn_b, b, idx, _sigma(metric, b, params))
                     - _resampled(name_a, fn_a, a, idx, _sigma(metric, a, params)), level)


def bootstrap_all(names: list[str] | None, probs: np.ndarray | Inputs, labels: np.ndarray | None = None,
                  n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Interval]:
    """Every registered metric (or ``names``) with default parameters, on the same resamples (drawn once)."""
    d = as_inputs(probs, labels)
    idx = _indices(d.n, n_resamples, seed)
    counts = counts_from_indices(idx, d.n)
    out = {}
    for name in names or list(METRICS):
        estimate = get_metric(name).fn(d)
        if name in VECTORISED:
            samples = VECTORISED[name](d, counts)
        elif name == "smece":
            samples = smece_resampled(d, counts, _sigma(name, d, {}))
        else:
            _, fn = _resolve(name, d, {})
            samples = np.array([fn(d.take(row)) for row in idx])
        out[name] = _interval(estimate, samples, level)
    return out
