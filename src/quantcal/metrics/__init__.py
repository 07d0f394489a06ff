"""Calibration and accuracy metrics: pure functions ``name(probs, labels, **params) -> float``.

See :mod:`quantcal.metrics.inputs` for the input conventions. Each function's docstring gives its formula
and source.
"""

from quantcal.metrics.bootstrap import Interval, bootstrap, bootstrap_all, paired_bootstrap
from quantcal.metrics.calibration_error import ReliabilityBins, ece, mce, oe, overconfidence_rate, reliability_bins
from quantcal.metrics.classwise import ace, sce
from quantcal.metrics.inputs import Inputs, as_inputs
from quantcal.metrics.registry import DEFAULT_METRICS, METRICS, Metric, compute, get_metric
from quantcal.metrics.scores import acc, brier, brier_top, entropy, nll, p_gold
from quantcal.metrics.selective import aurc, auroc, selective_acc
from quantcal.metrics.smooth import smece

__all__ = [
    "DEFAULT_METRICS", "METRICS", "Inputs", "Interval", "Metric", "ReliabilityBins", "acc", "ace", "as_inputs", "aurc", "auroc",
    "bootstrap", "bootstrap_all", "brier", "brier_top", "compute", "ece", "entropy", "get_metric", "mce", "nll",
    "oe", "overconfidence_rate", "p_gold", "paired_bootstrap", "reliability_bins", "sce", "selective_acc", "smece",
]
