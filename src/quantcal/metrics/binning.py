"""Assigning scores to bins: equal-width and equal-mass.

Equal width (Guo et al. 2017): ``M`` bins ``((m-1)/M, m/M]``, right-closed, with 0 in the first bin; the
edges are ``m / M`` exactly as computed by ``uncertainty-calibration``.

Equal mass (Kumar et al. 2019, ``uncertainty-calibration.get_equal_bins``, the binning HELM uses): the sorted
scores are split into ``min(M, n)`` nearly equal chunks (``numpy.array_split``); each inner edge is the
midpoint between one chunk's last and the next chunk's first score, the last edge is 1; duplicate edges merge.
Bins are right-closed as above, so equal scores never straddle a bin edge.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from quantcal.errors import QuantcalError

Binning = Literal["width", "mass"]


def width_edges(n_bins: int) -> np.ndarray:
    return np.array([m / n_bins for m in range(1, n_bins + 1)])


def mass_edges(scores: np.ndarray, n_bins: int) -> np.ndarray:
    ordered = np.sort(scores)
    chunks = np.array_split(ordered, min(n_bins, ordered.size))
    inner = [(a[-1] + b[0]) / 2.0 for a, b in zip(chunks[:-1], chunks[1:])]
    return np.unique(np.array(inner + [1.0]))


def bin_index(scores: np.ndarray, n_bins: int, binning: str = "width") -> tuple[np.ndarray, int]:
    """Bin of each score and the number of bins."""
    if n_bins < 1:
        raise QuantcalError(f"n_bins must be at least 1, got {n_bins}")
    if binning == "width":
        edges = width_edges(n_bins)
    elif binning == "mass":
        edges = mass_edges(scores, n_bins)
    else:
        raise QuantcalError(f"binning must be 'width' or 'mass', got {binning!r}")
    return np.minimum(np.searchsorted(edges, scores, side="left"), edges.size - 1), edges.size


def bin_sums(index: np.ndarray, n_bins: int, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per bin: item count, then the sum of each of ``values``."""
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    return (counts, *(np.bincount(index, weights=v, minlength=n_bins) for v in values))
