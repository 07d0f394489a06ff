"""Every metric by name, so reports and the CLI can ask for them by string.

An entry holds the metric's function, its direction and kind, and its resampled form: the same metric computed on
every bootstrap resample at once from the matrix of draw counts (:mod:`quantcal.metrics.resampling`), or
``None`` where a metric is recomputed per resample.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from quantcal.errors import QuantcalError
from quantcal.metrics import calibration_error, classwise, resampling, scores, selective, smooth
from quantcal.metrics.inputs import Inputs


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., float]
    higher_is_better: bool
    kind: str  # "accuracy", "calibration", "proper score", "uncertainty", "selective", "confidence"
    #: The metric at its default parameters on all resamples at once: ``(inputs, counts (R, n)) -> (R,)``.
    resampled: Optional[Callable[[Inputs, np.ndarray], np.ndarray]] = None
    #: Bootstrap interval: ``percentile``, or ``basic`` (reflected about the estimate) for estimators whose
    #: resamples are biased upward: see :mod:`quantcal.metrics.bootstrap`.
    interval: str = "percentile"

    @property
    def doc(self) -> str:
        """The definition from the metric's docstring as plain text on one line (its first paragraph, and the
        formula paragraph after it when the first ends with a colon), then the parameters the headline number uses
        (``defaults: n_bins=15, binning='width'``)."""
        paragraphs = (self.fn.__doc__ or "").strip().split("\n\n")
        text = paragraphs[0] + (" " + paragraphs[1] if paragraphs[0].rstrip().endswith(":") and len(paragraphs) > 1 else "")
        text = plain_text(" ".join(text.split()))
        shown = ", ".join(f"{k}={'e' if v == np.e else repr(v)}" for k, v in self.defaults.items())
        return f"{text} Defaults: {shown}." if shown else text

    @property
    def defaults(self) -> dict[str, Any]:
        """The metric function's keyword parameters and their defaults (what ``quantcal metrics`` reports with)."""
        return {name: p.default for name, p in inspect.signature(self.fn).parameters.items()
                if p.default is not inspect.Parameter.empty and name not in ("labels",)}


def plain_text(text: str) -> str:
    """Docstring markup as plain text: ````x```` -> ``x``, ``:mod:`~a.b``` -> ``b``, ``:func:`a.b``` -> ``a.b``."""
    text = re.sub(r":[a-z]+:`~?([^`]*)`", lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1),
                  text)
    return text.replace("``", "")


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("acc", scores.acc, True, "accuracy", resampling.per_item(scores.correct_items)),
    Metric("p_gold", scores.p_gold, True, "confidence", resampling.per_item(scores.p_gold_items)),
    Metric("nll", scores.nll, False, "proper score", resampling.per_item(scores.nll_items)),
    Metric("brier", scores.brier, False, "proper score", resampling.per_item(scores.brier_items)),
    Metric("brier_top", scores.brier_top, False, "proper score", resampling.per_item(scores.brier_top_items)),
    Metric("entropy", scores.entropy, False, "uncertainty", resampling.per_item(scores.entropy_items)),
    Metric("ece", calibration_error.ece, False, "calibration", resampling.ece_counts, "basic"),
    Metric("mce", calibration_error.mce, False, "calibration", resampling.mce_counts),
    Metric("ace", classwise.ace, False, "calibration", resampling.ace_counts, "basic"),
    Metric("sce", classwise.sce, False, "calibration", resampling.sce_counts, "basic"),
    Metric("oe", calibration_error.oe, False, "calibration", resampling.oe_counts),
    Metric("overconfidence_rate", calibration_error.overconfidence_rate, False, "calibration",
           resampling.per_item(calibration_error.overconfident_items)),
    Metric("smece", smooth.smece, False, "calibration"),  # fixed-bandwidth form: resampling.smece_resampled
    Metric("auroc", selective.auroc, True, "selective", resampling.auroc_counts),
    Metric("aurc", selective.aurc, False, "selective", resampling.aurc_counts),
    Metric("selective_acc", selective.selective_acc, True, "selective", resampling.selective_acc_counts),
)}

#: What reports, studies and the CLI compute unless told otherwise.
DEFAULT_METRICS: tuple[str, ...] = ("acc", "ece", "ace", "brier", "nll", "overconfidence_rate", "smece", "auroc")


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise QuantcalError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None


def compute(name: str, probs: np.ndarray | Inputs, labels: np.ndarray | None = None, **params: float) -> float:
    """``compute("ece", probs, labels, n_bins=10)`` is ``ece(probs, labels, n_bins=10)``."""
    return get_metric(name).fn(probs, labels, **params)
