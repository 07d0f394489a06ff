"""Smooth ECE (Błasiok & Nakkiran 2023), computed by the authors' ``relplot`` package."""

from __future__ import annotations

import numpy as np

from quantcal.metrics.inputs import Inputs, as_inputs


def smece(probs: np.ndarray | Inputs, labels: np.ndarray | None = None, sigma: float | None = None) -> float:
    """smECE of the top-label confidence against correctness: the ECE of the kernel-smoothed (reflected
    Gaussian, bandwidth ``sigma``) reliability curve. ``sigma=None`` picks the bandwidth automatically as the
    fixed point ``smECE_sigma = sigma`` (relplot's ``smECE``)."""
    return smece_with_bandwidth(probs, labels, sigma)[0]


def smece_with_bandwidth(probs: np.ndarray | Inputs, labels: np.ndarray | None = None,
                         sigma: float | None = None) -> tuple[float, float]:
    """smECE and the bandwidth it used (chosen automatically when ``sigma`` is None), in one search."""
    import relplot

    d = as_inputs(probs, labels)
    if sigma is None:
        value, width = relplot.smECE(d.confidence, d.correct, return_width=True)
        return float(value), float(width)
    return float(relplot.smECE_sigma(d.confidence, d.correct, sigma)), float(sigma)
