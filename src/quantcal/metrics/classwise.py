"""Class-wise calibration errors: adaptive (``ace``) and static (``sce``), Nixon et al. 2019.

For class ``c`` only the items that offer choice ``c`` take part (a zero-padded entry is a choice the item
does not have); a class no item offers is skipped, not counted as zero.
"""

from __future__ import annotations

import numpy as np

from quantcal.metrics.binning import bin_index, bin_sums
from quantcal.metrics.inputs import Inputs, as_inputs


def class_columns(d: Inputs):  # noqa: ANN201 - yields (offered mask, scores, hits) per supported class
    for c in range(d.probs.shape[1]):
        offered = d.probs[:, c] > 0
        if offered.any():
            yield offered, d.probs[offered, c], (d.labels[offered] == c).astype(np.float64)


def ace(probs: np.ndarray | Inputs, labels: np.ndarray | None = None, n_ranges: int = 15) -> float:
    """Adaptive calibration error (Nixon et al. 2019), the multi-class measure of Study B:

    ``ACE = 1/(C R) sum_c sum_r |acc(r, c) - conf(r, c)|`` where, per class ``c``, the items are sorted by
    ``p_c`` (equal ``p_c`` ordered by whether gold is ``c``, so the result does not depend on item order) and split into ``R`` ranges of (nearly) equal size (``numpy.array_split``); ``acc(r, c)`` is the
    share of items in range ``r`` whose gold is ``c`` and ``conf(r, c)`` their mean ``p_c``. A class with
    fewer than ``R`` items uses one range per item.
    """
    d = as_inputs(probs, labels)
    per_class = []
    for _, scores, hits in class_columns(d):
        order = np.lexsort((hits, scores))
        gaps = [abs(h.mean() - s.mean()) for s, h in zip(np.array_split(scores[order], min(n_ranges, scores.size)),
                                                         np.array_split(hits[order], min(n_ranges, scores.size)))]
        per_class.append(np.mean(gaps))
    return float(np.mean(per_class))


def sce(probs: np.ndarray | Inputs, labels: np.ndarray | None = None, n_bins: int = 15) -> float:
    """Static calibration error (Nixon et al. 2019): ``SCE = 1/C sum_c sum_b n_bc/n_c |acc(b, c) - conf(b, c)|``
    with equal-width bins of ``p_c`` (right-closed, as :func:`quantcal.metrics.ece`)."""
    d = as_inputs(probs, labels)
    per_class = []
    for _, scores, hits in class_columns(d):
        index, m = bin_index(scores, n_bins, "width")
        _, s_sum, h_sum = bin_sums(index, m, scores, hits)
        per_class.append(np.abs(h_sum - s_sum).sum() / scores.size)
    return float(np.mean(per_class))
