"""Reference vs variant on the same items (Study B's analysis, made exact and complete).

Per item: the change of the probability of the true answer ``Δp = p_var(y) - p_ref(y)``, the change of
confidence, the Jensen-Shannon distance between the two probability vectors (base 2, so in [0, 1];
``scipy.spatial.distance.jensenshannon``), and whether the prediction flipped.

Tests: paired t-test and Wilcoxon signed-rank test on ``p(y)`` (all items, and the items the reference answered
correctly: Study B's "confidence of correct predictions"); McNemar's exact test on correctness (binomial test
on the discordant pairs).

Stratified by the reference's confidence (quantile bins): mean ``|Δp|``, mean JS distance and flip rate per bin,
and the Spearman correlation between reference confidence and ``|Δp|``. Study B found that the items the
reference was unsure of move most (a negative correlation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from quantcal.errors import QuantcalError
from quantcal.metrics.inputs import Inputs, as_inputs


@dataclass(frozen=True)
class ItemChanges:
    delta_p_gold: np.ndarray
    delta_confidence: np.ndarray
    js_distance: np.ndarray
    flipped: np.ndarray
    ref_correct: np.ndarray
    var_correct: np.ndarray
    ref_confidence: np.ndarray


def _pair(probs_ref: np.ndarray, probs_var: np.ndarray, labels: np.ndarray) -> tuple[Inputs, Inputs]:
    ref, var = as_inputs(probs_ref, labels), as_inputs(probs_var, labels)
    if ref.probs.shape != var.probs.shape:
        raise QuantcalError(f"reference and variant must score the same items and choices: {ref.probs.shape} vs {var.probs.shape}")
    return ref, var


def item_changes(probs_ref: np.ndarray, probs_var: np.ndarray, labels: np.ndarray) -> ItemChanges:
    ref, var = _pair(probs_ref, probs_var, labels)
    with np.errstate(invalid="ignore"):  # identical rows: a tiny negative under the square root
        js = jensenshannon(ref.probs, var.probs, base=2, axis=1)
    return ItemChanges(
        delta_p_gold=var.p_gold - ref.p_gold,
        delta_confidence=var.confidence - ref.confidence,
        js_distance=np.nan_to_num(js, nan=0.0),  # identical rows can give a tiny negative under the root
        flipped=var.pred != ref.pred,
        ref_correct=ref.correct.astype(bool),
        var_correct=var.correct.astype(bool),
        ref_confidence=ref.confidence,
    )


def _tests(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    out = {"n": float(before.size), "mean_before": float(before.mean()) if before.size else float("nan"),
           "mean_after": float(after.mean()) if after.size else float("nan")}
    diff = after - before
    if before.size < 2 or np.all(diff == 0):
        out.update(t_statistic=float("nan"), t_pvalue=float("nan") if before.size < 2 else 1.0,
                   wilcoxon_statistic=float("nan"), wilcoxon_pvalue=float("nan") if before.size < 2 else 1.0)
        return out
    t = stats.ttest_rel(after, before)
    w = stats.wilcoxon(after, before)
    out.update(t_statistic=float(t.statistic), t_pvalue=float(t.pvalue),
               wilcoxon_statistic=float(w.statistic), wilcoxon_pvalue=float(w.pvalue))
    return out


def paired_tests(probs_ref: np.ndarray, probs_var: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """t-test and Wilcoxon on p(gold) (all items; reference-correct items) and McNemar's exact test on correctness."""
    ref, var = _pair(probs_ref, probs_var, labels)
    right = ref.correct.astype(bool)
    b = int((right & (var.correct == 0)).sum())  # correct -> wrong
    c = int((~right & (var.correct == 1)).sum())  # wrong -> correct
    mcnemar_p = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {
        "p_gold_all": _tests(ref.p_gold, var.p_gold),
        "p_gold_ref_correct": _tests(ref.p_gold[right], var.p_gold[right]),
        "confidence_ref_correct": _tests(ref.confidence[right], var.confidence[right]),
        "mcnemar": {"correct_to_wrong": float(b), "wrong_to_correct": float(c), "pvalue": mcnemar_p},
    }


def stratify(probs_ref: np.ndarray, probs_var: np.ndarray, labels: np.ndarray, n_bins: int = 5) -> dict[str, Any]:
    """Changes by quantile bin of the reference's confidence. Equal confidences share a bin, so quantile edges that
    coincide (many items at confidence 1.0, say) merge their bins: ``merged_bins`` says how many were merged, and no
    two bins show the same range."""
    ch = item_changes(probs_ref, probs_var, labels)
    if n_bins < 1:
        raise QuantcalError(f"n_bins must be at least 1, got {n_bins}")
    edges = np.unique(np.quantile(ch.ref_confidence, np.linspace(0, 1, n_bins + 1)))
    if edges.size < 2:  # every item at the same confidence: one bin
        edges = np.array([edges[0], edges[0]])
    index = np.searchsorted(edges[1:-1], ch.ref_confidence, side="left")
    rows = []
    for b in range(edges.size - 1):
        m = index == b
        if not m.any():
            continue
        rows.append({
            "bin": b, "n": int(m.sum()),
            "ref_confidence_low": float(ch.ref_confidence[m].min()), "ref_confidence_high": float(ch.ref_confidence[m].max()),
            "mean_abs_delta_p_gold": float(np.abs(ch.delta_p_gold[m]).mean()),
            "mean_delta_p_gold": float(ch.delta_p_gold[m].mean()),
            "mean_js_distance": float(ch.js_distance[m].mean()),
            "flip_rate": float(ch.flipped[m].mean()),
        })
    magnitude = np.abs(ch.delta_p_gold)
    if ch.ref_confidence.size > 2 and np.ptp(ch.ref_confidence) > 0 and np.ptp(magnitude) > 0:
        rho = stats.spearmanr(ch.ref_confidence, magnitude)
        spearman = {"rho": float(rho.statistic), "pvalue": float(rho.pvalue)}
    else:
        spearman = {"rho": float("nan"), "pvalue": float("nan")}
    return {"bins": rows, "requested_bins": n_bins, "merged_bins": n_bins - len(rows),
            "spearman_ref_confidence_vs_abs_delta_p_gold": spearman}


def flips(probs_ref: np.ndarray, probs_var: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    ch = item_changes(probs_ref, probs_var, labels)
    n = ch.flipped.size
    cells = {
        "correct_to_wrong": ch.ref_correct & ~ch.var_correct,
        "wrong_to_correct": ~ch.ref_correct & ch.var_correct,
        "both_correct": ch.ref_correct & ch.var_correct,
        "both_wrong": ~ch.ref_correct & ~ch.var_correct,
        "prediction_changed": ch.flipped,
    }
    return {k: {"count": float(v.sum()), "share": float(v.sum() / n)} for k, v in cells.items()}


@dataclass(frozen=True)
class Comparison:
    n: int
    mean_delta_p_gold: float
    mean_abs_delta_p_gold: float
    mean_delta_confidence: float
    mean_js_distance: float
    flip_rate: float
    tests: dict[str, Any]
    stratified: dict[str, Any]
    flips: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(probs_ref: np.ndarray, probs_var: np.ndarray, labels: np.ndarray, n_bins: int = 5) -> Comparison:
    ch = item_changes(probs_ref, probs_var, labels)
    return Comparison(
        n=int(ch.flipped.size),
        mean_delta_p_gold=float(ch.delta_p_gold.mean()),
        mean_abs_delta_p_gold=float(np.abs(ch.delta_p_gold).mean()),
        mean_delta_confidence=float(ch.delta_confidence.mean()),
        mean_js_distance=float(ch.js_distance.mean()),
        flip_rate=float(ch.flipped.mean()),
        tests=paired_tests(probs_ref, probs_var, labels),
        stratified=stratify(probs_ref, probs_var, labels, n_bins),
        flips=flips(probs_ref, probs_var, labels),
    )
