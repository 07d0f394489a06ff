"""Reference-vs-variant analysis and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from quantcal.analysis import (apply_temperature, compare, cross_fit_temperature, fit_temperature, flips, item_changes,
                               paired_tests, recalibration_report, stratify)
from quantcal.errors import QuantcalError
from quantcal.metrics import ece


def pair(seed: int = 0, n: int = 400, k: int = 4):  # noqa: ANN201
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    ref = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (rng.random((n, 1)) > ref.cumsum(1)).sum(1)
    noisy = logits + rng.normal(size=(n, k)) * (1.5 - ref.max(1, keepdims=True))  # unsure items move more
    var = np.exp(noisy) / np.exp(noisy).sum(1, keepdims=True)
    return ref, var, labels


def test_item_changes_by_definition() -> None:
    ref = np.array([[0.7, 0.3], [0.4, 0.6]])
    var = np.array([[0.4, 0.6], [0.4, 0.6]])
    ch = item_changes(ref, var, np.array([0, 1]))
    assert ch.delta_p_gold == pytest.approx([-0.3, 0.0])
    assert ch.delta_confidence == pytest.approx([-0.1, 0.0])
    assert list(ch.flipped) == [True, False]
    m = (ref[0] + var[0]) / 2
    js = np.sqrt(0.5 * (ref[0] * np.log2(ref[0] / m)).sum() + 0.5 * (var[0] * np.log2(var[0] / m)).sum())
    assert ch.js_distance[0] == pytest.approx(js) and ch.js_distance[1] == 0


def test_paired_tests_equal_scipy() -> None:
    ref, var, labels = pair()
    out = paired_tests(ref, var, labels)
    idx = np.arange(labels.size)
    pr, pv = ref[idx, labels], var[idx, labels]
    assert out["p_gold_all"]["t_pvalue"] == pytest.approx(stats.ttest_rel(pv, pr).pvalue)
    assert out["p_gold_all"]["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(pv, pr).pvalue)
    right = ref.argmax(1) == labels
    assert out["p_gold_ref_correct"]["n"] == right.sum()
    assert out["p_gold_ref_correct"]["t_pvalue"] == pytest.approx(stats.ttest_rel(pv[right], pr[right]).pvalue)
    b = int((right & (var.argmax(1) != labels)).sum())
    c = int((~right & (var.argmax(1) == labels)).sum())
    assert out["mcnemar"]["correct_to_wrong"] == b and out["mcnemar"]["wrong_to_correct"] == c
    assert out["mcnemar"]["pvalue"] == pytest.approx(stats.binomtest(b, b + c).pvalue)


def test_identical_variants_show_no_change() -> None:
    ref, _, labels = pair()
    out = compare(ref, ref.copy(), labels)
    assert out.mean_js_distance == 0 and out.flip_rate == 0
    assert out.tests["p_gold_all"]["t_pvalue"] == 1.0 and out.tests["mcnemar"]["pvalue"] == 1.0


def test_stratified_finds_unsure_items_move_more() -> None:
    ref, var, labels = pair(n=3000)
    s = stratify(ref, var, labels, n_bins=5)
    assert sum(r["n"] for r in s["bins"]) == 3000 and len(s["bins"]) == 5
    js = [r["mean_js_distance"] for r in s["bins"]]
    assert js[0] > js[-1]
    assert s["spearman_ref_confidence_vs_abs_delta_p_gold"]["rho"] < 0


def test_flips_table_adds_up() -> None:
    ref, var, labels = pair()
    f = flips(ref, var, labels)
    cells = ("correct_to_wrong", "wrong_to_correct", "both_correct", "both_wrong")
    assert sum(f[c]["count"] for c in cells) == labels.size
    assert sum(f[c]["share"] for c in cells) == pytest.approx(1.0)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(QuantcalError, match="same items"):
        item_changes(np.full((3, 2), 0.5), np.full((3, 3), 1 / 3), np.zeros(3, dtype=int))


def overconfident(seed: int = 0, n: int = 2000, k: int = 4):  # noqa: ANN201
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, k))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = (rng.random((n, 1)) > p.cumsum(1)).sum(1)
    return true_logits * 3.0, labels  # scores 3x too sharp: T* = 3


def test_temperature_recovers_known_scale_and_keeps_predictions() -> None:
    scores, labels = overconfident()
    t = fit_temperature(scores, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    fit = cross_fit_temperature(scores, labels, k=5)
    assert (fit.probs.argmax(1) == scores.argmax(1)).all()
    assert ece(fit.probs, labels) < 0.5 * ece(apply_temperature(scores, 1.0), labels)


def test_recalibration_report_out_of_fold_and_padding() -> None:
    scores, labels = overconfident(n=1000)
    scores[:100, 3] = -np.inf  # items with 3 choices
    labels[:100] = np.minimum(labels[:100], 2)
    report = recalibration_report(scores, labels)
    assert report["after"]["acc"] == report["before"]["acc"]
    assert report["after"]["ece"] < report["before"]["ece"] and report["share_recovered"]["ece"] > 0.3
    assert len(report["fold_temperatures"]) == 5


def test_fit_on_one_set_apply_to_another() -> None:
    scores, labels = overconfident(n=2000)
    t = fit_temperature(scores[:1000], labels[:1000])
    before = ece(apply_temperature(scores[1000:], 1.0), labels[1000:])
    after = ece(apply_temperature(scores[1000:], t), labels[1000:])
    assert after < before
