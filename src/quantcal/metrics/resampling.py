"""Bootstrap resamples of many metrics at once.

A resample is a vector of item counts ``c`` (how often each item was drawn; ``sum c = n``). Every metric here
is rewritten as a function of ``c`` so that all resamples are evaluated together with matrix operations. Each
function equals the scalar metric on the expanded resample exactly (a test checks it); items with equal scores
are ordered canonically in both, so no result depends on the order of draws.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from quantcal.metrics.binning import bin_index
from quantcal.metrics.inputs import Inputs
from quantcal.metrics.classwise import class_columns


def counts_from_indices(idx: np.ndarray, n: int) -> np.ndarray:
    """(R, n) draw counts from (R, n) drawn indices."""
    r = idx.shape[0]
    flat = (idx + (np.arange(r) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)


def _mean_of(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return counts @ values / counts.sum(axis=1)


def _binned(d: Inputs, counts: np.ndarray, n_bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index, m = bin_index(d.confidence, n_bins, "width")
    onehot = np.zeros((d.n, m))
    onehot[np.arange(d.n), index] = 1.0
    return counts @ onehot, counts @ (onehot * d.confidence[:, None]), counts @ (onehot * d.correct[:, None])


def ece_counts(d: Inputs, counts: np.ndarray) -> np.ndarray:
    _, conf_sum, correct_sum = _binned(d, counts)
    return np.abs(correct_sum - conf_sum).sum(axis=1) / counts.sum(axis=1)


def mce_counts(d: Inputs, counts: np.ndarray) -> np.ndarray:
    size, conf_sum, correct_sum = _binned(d, counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(size > 0, np.abs(correct_sum - conf_sum) / size, -np.inf)
    return gap.max(axis=1)


def oe_counts(d: Inputs, counts: np.ndarray) -> np.ndarray:
    size, conf_sum, correct_sum = _binned(d, counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(size > 0, conf_sum / np.maximum(size, 1), 0.0)
        accuracy = np.where(size > 0, correct_sum / np.maximum(size, 1), 0.0)
    return (size * conf * np.maximum(conf - accuracy, 0.0)).sum(axis=1) / counts.sum(axis=1)


def sce_counts(d: Inputs, counts: np.ndarray, n_bins: int = 15) -> np.ndarray:
    per_class = []
    for offered, scores, hits in class_columns(d):
        c = np.take(counts, np.flatnonzero(offered), axis=1)
        index, m = bin_index(scores, n_bins, "width")
        onehot = np.zeros((scores.size, m))
        onehot[np.arange(scores.size), index] = 1.0
        gap = np.abs(c @ (onehot * hits[:, None]) - c @ (onehot * scores[:, None])).sum(axis=1)
        per_class.append(gap / c.sum(axis=1))
    return np.nanmean(np.array(per_class), axis=0)


def _prefix_sums(cum_count: np.ndarray, weighted: list[np.ndarray], values: list[np.ndarray],
                 t: np.ndarray) -> list[np.ndarray]:
    """Per row, the sum of the first ``t`` entries of the expanded (repeated) sequence, for each value array.

    ``cum_count`` is the row-wise cumulative count, ``weighted`` holds ``counts * value`` per value array and
    ``t`` (shape (R, q), non-decreasing along a row) the positions. One ``searchsorted`` over the row-offset
    flattening finds the item ``j`` holding each position; the whole items before it are summed segment by
    segment with one ``np.add.reduceat`` (no (R, n) cumulative sum per value array), the item itself adds its
    share ``(t - items before) * value[j]``.
    """
    rows, n = cum_count.shape
    offset = (np.arange(rows) * (n + 1.0))[:, None]
    flat = (cum_count + offset).ravel()
    j = np.searchsorted(flat, (t + offset).ravel(), side="left").reshape(t.shape) - np.arange(rows)[:, None] * n
    j = np.clip(j, 0, n - 1)
    r = np.arange(rows)[:, None]
    before_count = np.where(j > 0, cum_count[r, np.maximum(j - 1, 0)], 0.0)
    bounds = np.concatenate([np.zeros((rows, 1), dtype=j.dtype), j], axis=1) + r * n  # segment k: items [j_k-1, j_k)
    flat_bounds = bounds.ravel()
    empty = np.r_[flat_bounds[1:] <= flat_bounds[:-1], False].reshape(bounds.shape)  # reduceat gives a[i], not 0
    out = []
    for w, v in zip(weighted, values):
        seg = np.add.reduceat(w.ravel(), flat_bounds).reshape(bounds.shape)
        seg = np.where(empty, 0.0, seg)[:, :-1]
        out.append(np.cumsum(seg, axis=1) + (t - before_count) * v[j])
    return out


def ace_counts(d: Inputs, counts: np.ndarray, n_ranges: int = 15) -> np.ndarray:
    per_class = []
    for offered, scores, hits in class_columns(d):
        order = np.lexsort((hits, scores))
        c = np.take(counts, np.flatnonzero(offered)[order], axis=1)  # C order (counts[:, idx] would be F order)
        s, h = scores[order], hits[order]
        cum_n = np.cumsum(c, axis=1)
        total = cum_n[:, -1]
        parts = np.minimum(n_ranges, total)
        r = np.arange(n_ranges)[None, :]
        sizes = np.floor(total / parts)[:, None] + (r < np.mod(total, parts)[:, None])
        sizes = np.where(r < parts[:, None], sizes, 0.0)
        ends = np.cumsum(sizes, axis=1)
        end_s, end_h = _prefix_sums(cum_n, [c * s, c * h], [s, h], ends)
        span_s = np.diff(end_s, axis=1, prepend=0.0)
        span_h = np.diff(end_h, axis=1, prepend=0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            gaps = np.where(sizes > 0, np.abs(span_h - span_s) / sizes, 0.0)
        per_class.append(gaps.sum(axis=1) / parts)
    return np.mean(np.array(per_class), axis=0)


def _sorted_blocks(d: Inputs, counts: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts and wrong-answer counts per block of equal confidence, blocks in confidence order."""
    conf = d.confidence
    order = np.argsort(-conf if descending else conf, kind="stable")
    sorted_conf = conf[order]
    starts = np.flatnonzero(np.r_[True, sorted_conf[1:] != sorted_conf[:-1]])
    c = np.take(counts, order, axis=1)  # C order, unlike counts[:, order]
    size = np.add.reduceat(c, starts, axis=1)
    wrong = np.add.reduceat(c * (1.0 - d.correct[order]), starts, axis=1)
    return size, wrong, sorted_conf[starts]


def auroc_counts(d: Inputs, counts: np.ndarray) -> np.ndarray:
    size, wrong, _ = _sorted_blocks(d, counts, descending=False)
    right = size - wrong
    neg_below = np.cumsum(wrong, axis=1) - wrong
    pos, neg = right.sum(axis=1), wrong.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (right * (neg_below + 0.5 * wrong)).sum(axis=1) / (pos * neg)
    return np.where((pos > 0) & (neg > 0), out, np.nan)


def _harmonic(n: int) -> np.ndarray:
    return np.r_[0.0, np.cumsum(1.0 / np.arange(1, n + 1))]


def aurc_counts(d: Inputs, counts: np.ndarray) -> np.ndarray:
    size, wrong, _ = _sorted_blocks(d, counts, descending=True)
    n = counts.sum(axis=1)
    before = np.cumsum(size, axis=1) - size
    errors_before = np.cumsum(wrong, axis=1) - wrong
    h = _harmonic(int(n.max()))
    start, end = before.astype(np.int64), (before + size).astype(np.int64)
    h_span = h[end] - h[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.where(size > 0, wrong / size * (size - before * h_span), 0.0)
    return (errors_before * h_span + spread).sum(axis=1) / n


def selective_acc_counts(d: Inputs, counts: np.ndarray, coverage: float = 0.8) -> np.ndarray:
    import math

    size, wrong, _ = _sorted_blocks(d, counts, descending=True)
    n = counts.sum(axis=1)
    k = np.array([max(1, math.ceil(coverage * x - 1e-12)) for x in n])
    cum = np.cumsum(size, axis=1)
    g = (cum < k[:, None]).sum(axis=1)
    rows = np.arange(size.shape[0])
    before = cum[rows, g] - size[rows, g]
    errors_before = np.cumsum(wrong, axis=1)[rows, g] - wrong[rows, g]
    errors = errors_before + wrong[rows, g] * (k - before) / size[rows, g]
    return 1.0 - errors / k


def smece_resampled(d: Inputs, counts: np.ndarray, sigma: float) -> np.ndarray:
    """relplot's fixed-bandwidth smECE on every resample at once.

    relplot smooths ``f - y`` by rounding each item onto a grid (two neighbouring grid points, linear weights),
    convolving the grid with its reflected Gaussian kernel and interpolating at the evaluation mesh. Every step
    is linear in the per-item values, so a resample's smoothing is the same map applied to count-weighted values:
    the grid rounding becomes a sparse matrix, the kernel a dense grid-to-mesh matrix (relplot's kernel and
    ``interpolate``; its reflected convolution of all grid unit vectors done at once by FFT). A test checks the result against ``relplot.smECE_sigma`` per resample.
    """
    from relplot import config, kernels
    from relplot import metrics as relplot_metrics
    from scipy import sparse
    from scipy.signal import fftconvolve

    kernel = relplot_metrics._get_default_kernel()(sigma)
    if not isinstance(kernel, kernels.ReflectedGaussianKernel):  # logit scaling configured: no fast path
        from relplot import smECE_sigma

        return np.array([smECE_sigma(d.take(np.repeat(np.arange(d.n), c.astype(int))).confidence,
                                     d.take(np.repeat(np.arange(d.n), c.astype(int))).correct, sigma) for c in counts])
    mesh = np.linspace(0, 1, max(round(10 / sigma), config.smECE_mesh_pts))
    grid_points = (max(2000, round(20 / sigma)) // 2) + 1
    f = d.confidence
    bins = (f * (grid_points - 1)).astype(int).clip(0, grid_points - 2)
    frac = f * (grid_points - 1) - bins
    rows = np.r_[np.arange(d.n), np.arange(d.n)]
    rounding = sparse.csr_matrix((np.r_[1 - frac, frac], (rows, np.r_[bins, bins + 1])), shape=(d.n, grid_points))
    # relplot's reflected convolution (ReflectedGaussianKernel.convolve) of every grid unit vector at once, by FFT
    eye = np.eye(grid_points)
    extended = np.concatenate([eye[:, ::-1][:, :-1], eye, eye[:, ::-1][:, 1:]], axis=1)
    convolved = fftconvolve(extended, kernel.kernel_ev(grid_points)[None, :], mode="valid", axes=1)
    convolved = convolved[:, grid_points // 2: grid_points // 2 + grid_points]
    smoothing = np.stack([kernels.interpolate(mesh, row) for row in convolved])
    numerator = np.asarray((rounding.T @ (counts * (f - d.correct)).T).T) @ smoothing
    density = np.asarray((rounding.T @ counts.T).T) @ smoothing + 0.0001
    return (np.abs(numerator / density) * density).sum(axis=1) / density.sum(axis=1)


def per_item(values: Callable[[Inputs], np.ndarray]) -> Callable[[Inputs, np.ndarray], np.ndarray]:
    """A mean of per-item values, on every resample: ``counts @ values / n``."""
    return lambda d, counts: _mean_of(values(d), counts)

