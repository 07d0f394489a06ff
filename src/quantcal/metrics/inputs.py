"""Validated metric inputs: probabilities over choices and gold labels, with derived quantities cached.

Conventions (every metric): ``probs`` has shape (n, k), each row a probability vector over the item's
choices, zero-padded when items have different numbers of choices; ``labels`` has shape (n,) with the gold
index. Confidence is the row maximum; the prediction is the argmax, ties going to the lowest index (numpy's
and lm-evaluation-harness's rule). An entry that is exactly 0 is a choice the item does not offer (padding)
for the class-wise metrics (ACE, SCE).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from quantcal.errors import QuantcalError

ROW_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True, eq=False)
class Inputs:
    probs: np.ndarray
    labels: np.ndarray

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @cached_property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @cached_property
    def confidence(self) -> np.ndarray:
        return self.probs[np.arange(self.n), self.pred]

    @cached_property
    def correct(self) -> np.ndarray:
        return (self.pred == self.labels).astype(np.float64)

    @cached_property
    def p_gold(self) -> np.ndarray:
        return self.probs[np.arange(self.n), self.labels]

    def take(self, index: np.ndarray) -> "Inputs":
        """The items at ``index`` (with repeats, for resampling), without validating again."""
        return Inputs(self.probs[index], self.labels[index])


def as_inputs(probs: "np.ndarray | Inputs", labels: np.ndarray | None = None) -> Inputs:
    """Validate once; metrics also accept an :class:`Inputs` so repeated calls (bootstrap) skip this."""
    if isinstance(probs, Inputs):
        return probs
    p = np.asarray(probs, dtype=np.float64)
    if labels is None:
        raise QuantcalError("labels are required")
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] < 2:
        raise QuantcalError(f"probs must have shape (n, k) with k >= 2, got {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise QuantcalError(f"labels must have shape ({p.shape[0]},), got {y.shape}")
    if p.shape[0] == 0:
        raise QuantcalError("no items")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise QuantcalError("labels must be integer class indices")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise QuantcalError(f"labels must lie in 0..{p.shape[1] - 1}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise QuantcalError("probs must be finite and within [0, 1]")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > ROW_SUM_TOLERANCE)
    if bad.size:
        raise QuantcalError(f"each row of probs must sum to 1; row {bad[0]} sums to {sums[bad[0]]:.6g}")
    return Inputs(p, y.astype(np.int64))
