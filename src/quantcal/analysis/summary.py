"""From a store to numbers: per-run metrics with bootstrap intervals, and reference-vs-variant comparisons.

The glue between the store (I/O) and the pure metrics/analysis functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Optional, Sequence

from quantcal.analysis import Comparison, compare
from quantcal.errors import QuantcalError
from quantcal.metrics import DEFAULT_METRICS, Interval, bootstrap_all, paired_bootstrap
from quantcal.analysis.predictions import Predictions, predictions
from quantcal.store.database import ScoredItem, Store


@dataclass(frozen=True)
class Aligned:
    ref: Predictions
    var: Predictions
    n_ref: int
    n_var: int


def run_predictions(store: Store, variant: str, task: str, normalization: str = "none",
                    items: Optional[Collection[str]] = None) -> tuple[Predictions, list[ScoredItem]]:
    """A run's scored items as predictions; ``items``: only those ids (a study's plan: the store may hold more, from
    a larger ``limit`` earlier), ``None``: every scored item."""
    run = store.find_run(variant, task)
    scored = store.scored_items(run.run_id)
    if items is not None:
        wanted = set(items)
        scored = [it for it in scored if it.item_id in wanted]
    if not scored:
        raise QuantcalError(f"{store.path}: run {variant}/{task} has no scored items yet")
    return predictions(scored, normalization), scored


def align(store: Store, ref: str, variant: str, task: str, normalization: str = "none",
          items: Optional[Collection[str]] = None) -> Aligned:
    """The items both runs scored (of ``items`` when given), matched by id; a content mismatch (different prompt or
    data) is an error."""
    a, sa = run_predictions(store, ref, task, items=items)
    b, sb = run_predictions(store, variant, task, items=items)
    by_id = {it.item_id: it for it in sb}
    common = [it for it in sa if it.item_id in by_id]
    if not common:
        raise QuantcalError(f"{ref} and {variant} share no items on {task}")
    for it in common:
        if it.item_hash != by_id[it.item_id].item_hash:
            raise QuantcalError(f"item {it.item_id} of {task} differs between {ref} and {variant} (prompt or data changed)")
    return Aligned(predictions(common, normalization), predictions([by_id[it.item_id] for it in common], normalization),
                   len(sa), len(sb))


def run_metrics(preds: Predictions, names: Sequence[str] = DEFAULT_METRICS, n_resamples: int = 1000,
                seed: int = 0, level: float = 0.95) -> dict[str, Interval]:
    """Each metric with its percentile bootstrap interval (all metrics on the same resamples)."""
    return bootstrap_all(list(names), preds.probs, preds.labels, n_resamples, seed, level)


def paired_analysis(aligned: Aligned, names: Sequence[str] = DEFAULT_METRICS, n_resamples: int = 1000,
                    seed: int = 0, n_bins: int = 5, level: float = 0.95) -> tuple[dict[str, Interval], Comparison]:
    """Paired metric differences (variant − reference, same resampled items) and the reference-vs-variant analysis."""
    labels = aligned.ref.labels
    diffs = {name: paired_bootstrap(name, aligned.ref.probs, aligned.var.probs, labels, n_resamples, seed, level)
             for name in names}
    return diffs, compare(aligned.ref.probs, aligned.var.probs, labels, n_bins)


def comparison_report(aligned: Aligned, names: Sequence[str] = DEFAULT_METRICS, n_resamples: int = 1000,
                      seed: int = 0, n_bins: int = 5, level: float = 0.95) -> dict[str, Any]:
    """:func:`paired_analysis` as JSON: ``{n, paired_difference: {metric: interval}, analysis}``."""
    diffs, analysis = paired_analysis(aligned, names, n_resamples, seed, n_bins, level)
    return {"n": analysis.n, "paired_difference": {k: v.to_json() for k, v in diffs.items()}, "analysis": analysis.to_json()}
