"""Smooth ECE (Błasiok & Nakkiran 2023), computed by the authors' ``relplot`` package."""

from __future__ import annotations

import numpy as np

from quantcal.metrics.inputs import Inputs, as_inputs


def smece(probs: np.ndarray | Inputs, labels: np.ndarray | None = None, sigma: float | None = None) -> float:
    """smECE of the top-label confidence against correctness: the ECE of the kernel-smoothed (reflected
    Gaussian, bandwidth ``sigma``) reliability curve. ``sigma=None`` picks the bandwidth automatically as the
    fixed point ``smECE_sigma = sigma`` (relplot's ``smECE``)."""
    import relplot

    d = as_inputs(probs, labels)
    if sigma is None:
        return float(relplot.smECE(d.confidence, d.correct))
    return float(relplot.smECE_sigma(d.confidence, d.correct, sigma))


def smece_bandwidth(probs: np.ndarray | Inputs, labels: np.ndarray | None = None) -> float:
    import relplot

    d = as_inputs(probs, labels)
    return float(relplot.smECE(d.confidence, d.correct, return_width=True)[1])
