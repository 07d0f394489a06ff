"""Every metric by name, so reports and the CLI can ask for them by string."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from quantcal.errors import QuantcalError
from quantcal.metrics import calibration_error, classwise, scores, selective, smooth
from quantcal.metrics.inputs import Inputs


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., float]
    higher_is_better: bool
    kind: str  # "accuracy", "calibration", "proper score", "uncertainty", "selective"

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().split("\n")[0]


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("acc", scores.acc, True, "accuracy"),
    Metric("nll", scores.nll, False, "proper score"),
    Metric("brier", scores.brier, False, "proper score"),
    Metric("brier_top", scores.brier_top, False, "proper score"),
    Metric("entropy", scores.entropy, False, "uncertainty"),
    Metric("ece", calibration_error.ece, False, "calibration"),
    Metric("mce", calibration_error.mce, False, "calibration"),
    Metric("ace", classwise.ace, False, "calibration"),
    Metric("sce", classwise.sce, False, "calibration"),
    Metric("oe", calibration_error.oe, False, "calibration"),
    Metric("overconfidence_rate", calibration_error.overconfidence_rate, False, "calibration"),
    Metric("smece", smooth.smece, False, "calibration"),
    Metric("auroc", selective.auroc, True, "selective"),
    Metric("aurc", selective.aurc, False, "selective"),
    Metric("selective_acc", selective.selective_acc, True, "selective"),
)}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise QuantcalError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None


def compute(name: str, probs: np.ndarray | Inputs, labels: np.ndarray | None = None, **params: float) -> float:
    """``compute("ece", probs, labels, n_bins=10)`` is ``ece(probs, labels, n_bins=10)``."""
    return get_metric(name).fn(probs, labels, **params)
