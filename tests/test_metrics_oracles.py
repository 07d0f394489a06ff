"""Metrics against independent implementations (dev-only oracles): netcal, torchmetrics, uncertainty-calibration
(HELM's equal-mass ECE), relplot, scikit-learn and lm-evaluation-harness's Brier definition; plus hand-computed
ACE and SCE, and the documented edge cases where the libraries' binning conventions differ."""

from __future__ import annotations

import numpy as np
import pytest

from quantcal.errors import QuantcalError
from quantcal.metrics import (METRICS, ace, acc, aurc, auroc, brier, brier_top, compute, ece, entropy, mce, nll, oe, p_gold,
                              overconfidence_rate, sce, selective_acc, smece)


def random_case(seed: int, n: int, k: int, pad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.7), size=n)
    labels = np.array([rng.choice(k, p=row) if rng.random() < 0.6 else rng.integers(k) for row in probs])
    if pad:  # some items have only 2 choices: zero-padded
        short = rng.random(n) < 0.3
        probs[short, 2:] = 0
        probs[short] /= probs[short].sum(axis=1, keepdims=True)
        labels[short] = rng.integers(0, 2, short.sum())
    return probs, labels


CASES = [(0, 400, 2, False), (1, 300, 5, False), (2, 257, 4, True), (3, 1, 3, False), (4, 31, 5, True)]


@pytest.mark.parametrize("seed,n,k,pad", CASES)
def test_ece_mce_equal_netcal_and_torchmetrics(seed: int, n: int, k: int, pad: bool) -> None:
    import torch
    from netcal.metrics import ECE, MCE
    from torchmetrics.functional.classification import multiclass_calibration_error as tm_ce

    probs, labels = random_case(seed, n, k, pad)
    # netcal reads an (n, 2) array as binary: the calibration of p(class 1) against the label, not of the top
    # label (Study B's released-code pitfall); it also reads a single item as binary. Its top-label ECE there
    # is measure(confidence, correctness).
    conf, right = probs.max(1), (probs.argmax(1) == labels).astype(int)
    net_in = (probs, labels) if k > 2 and n > 1 else (conf, right)
    if k == 2:
        assert ECE(bins=15).measure(probs, labels) != pytest.approx(ece(probs, labels))
    for bins in (1, 10, 15):
        assert ece(probs, labels, n_bins=bins) == pytest.approx(ECE(bins=bins).measure(*net_in), abs=1e-6)
        assert mce(probs, labels, n_bins=bins) == pytest.approx(MCE(bins=bins).measure(*net_in), abs=1e-6)
        tp, tl = torch.tensor(probs, dtype=torch.float64), torch.tensor(labels)
        assert ece(probs, labels, n_bins=bins) == pytest.approx(tm_ce(tp, tl, num_classes=k, n_bins=bins, norm="l1").item(), abs=1e-6)
        assert mce(probs, labels, n_bins=bins) == pytest.approx(tm_ce(tp, tl, num_classes=k, n_bins=bins, norm="max").item(), abs=1e-6)


@pytest.mark.parametrize("seed,n,k,pad", CASES)
def test_ece_equals_uncertainty_calibration(seed: int, n: int, k: int, pad: bool) -> None:
    import calibration

    probs, labels = random_case(seed, n, k, pad)
    assert ece(probs, labels, n_bins=15) == pytest.approx(calibration.get_ece(probs, labels, num_bins=15), abs=1e-9)
    assert ece(probs, labels, n_bins=10, binning="mass") == pytest.approx(calibration.get_ece_em(probs, labels, num_bins=10), abs=1e-9)


def test_bin_edges_ties_and_extremes() -> None:
    """Confidences exactly on bin edges, ties, all-correct, all-wrong, one item.

    quantcal and uncertainty-calibration use right-closed bins ((m-1)/M, m/M] (Guo et al.); torchmetrics uses
    left-closed bins [m/M, (m+1)/M). They agree except when a confidence lies exactly on an inner edge, shown below.
    """
    import calibration
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error as tm_ce

    on_edges = np.array([[0.6, 0.4], [0.6, 0.4], [0.8, 0.2], [0.5, 0.5], [1.0, 0.0], [0.9, 0.1]])
    labels = np.array([0, 1, 0, 1, 0, 1])
    ours = ece(on_edges, labels, n_bins=5)
    assert ours == pytest.approx(calibration.get_ece(on_edges, labels, num_bins=5), abs=1e-12)
    # by hand, right-closed bins of width 0.2: {0.5, 0.6, 0.6} in (0.4, 0.6]; {0.8} in (0.6, 0.8]; {0.9, 1.0} in (0.8, 1]
    by_hand = (abs(1 - 1.7) + abs(1 - 0.8) + abs(1 - 1.9)) / 6
    assert ours == pytest.approx(by_hand, abs=1e-12)
    tm = tm_ce(torch.tensor(on_edges, dtype=torch.float64), torch.tensor(labels), num_classes=2, n_bins=5, norm="l1").item()
    # left-closed: {0.5} in [0.4, 0.6), {0.6, 0.6} in [0.6, 0.8), {0.8, 0.9, 1.0} in [0.8, 1]
    assert tm == pytest.approx((abs(0 - 0.5) + abs(1 - 1.2) + abs(2 - 2.7)) / 6, abs=1e-6)  # float32 inside
    assert tm != pytest.approx(ours)

    ties = np.full((10, 4), 0.25)
    assert acc(ties, np.zeros(10, dtype=int)) == 1.0  # ties go to the lowest index
    assert ece(ties, np.zeros(10, dtype=int)) == pytest.approx(0.75)
    correct = np.tile([0.7, 0.2, 0.1], (5, 1))
    assert ece(correct, np.zeros(5, dtype=int), n_bins=1) == pytest.approx(0.3)
    assert ece(correct, np.ones(5, dtype=int), n_bins=1) == pytest.approx(0.7)
    assert overconfidence_rate(np.array([[0.8, 0.2]]), np.array([1])) == 1.0  # >= tau counts
    assert np.isnan(auroc(correct, np.zeros(5, dtype=int)))  # undefined with one class only
    for name in METRICS:
        value = compute(name, np.array([[0.3, 0.7]]), np.array([1]))
        assert np.isnan(value) or np.isfinite(value), name


def test_ece_with_one_bin_is_confidence_minus_accuracy() -> None:
    probs, labels = random_case(7, 200, 4)
    assert ece(probs, labels, n_bins=1) == pytest.approx(abs(probs.max(1).mean() - (probs.argmax(1) == labels).mean()))


def test_brier_is_lm_eval_definition() -> None:
    probs, labels = random_case(3, 100, 4, pad=True)
    gold_one_hot = np.eye(probs.shape[1])[labels]  # lm-eval's brier_score
    assert brier(probs, labels) == pytest.approx(np.mean(np.sum((probs - gold_one_hot) ** 2, axis=1)), abs=1e-12)
    conf, right = probs.max(1), (probs.argmax(1) == labels)
    assert brier_top(probs, labels) == pytest.approx(np.mean((conf - right) ** 2), abs=1e-12)


def test_nll_entropy_by_definition() -> None:
    probs, labels = random_case(5, 50, 3)
    assert nll(probs, labels) == pytest.approx(-np.mean(np.log(probs[np.arange(50), labels])))
    assert entropy(probs, labels, base=2) == pytest.approx(np.mean(-(probs * np.log2(probs)).sum(1)))
    assert nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(np.finfo(float).tiny))
    assert p_gold(probs, labels) == pytest.approx(np.mean(probs[np.arange(50), labels]), abs=1e-15)


@pytest.mark.parametrize("seed,n,k,pad", CASES[:3])
def test_auroc_equals_sklearn_and_smece_equals_relplot(seed: int, n: int, k: int, pad: bool) -> None:
    import relplot
    from sklearn.metrics import roc_auc_score

    probs, labels = random_case(seed, n, k, pad)
    probs = np.round(probs, 2) / np.round(probs, 2).sum(1, keepdims=True)  # force ties
    conf, right = probs.max(1), (probs.argmax(1) == labels).astype(float)
    assert auroc(probs, labels) == pytest.approx(roc_auc_score(right, conf), abs=1e-12)
    assert smece(probs, labels) == pytest.approx(relplot.smECE(conf, right), abs=1e-12)


def test_ace_and_sce_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    # ACE with R=2, class 0: p0 sorted [0.3, 0.4 | 0.8, 0.9], gold==0 [0, 0 | 0, 1]: |0-0.35| + |0.5-0.85| = 0.7
    #              class 1: p1 sorted [0.1, 0.2 | 0.6, 0.7], gold==1 [0, 1 | 1, 1]: |0.5-0.15| + |1-0.65| = 0.7
    assert ace(probs, labels, n_ranges=2) == pytest.approx(1.4 / 4)
    # SCE with 2 equal-width bins (0, .5], (.5, 1]: class 0: bin1 {0.3, 0.4} hits 0 -> |0-0.7|; bin2 {0.8, 0.9} hits 1 -> |1-1.7|
    #                                              class 1: bin1 {0.1, 0.2} hits 1 -> |1-0.3|; bin2 {0.6, 0.7} hits 2 -> |2-1.3|
    assert sce(probs, labels, n_bins=2) == pytest.approx(((0.7 + 0.7) / 4 + (0.7 + 0.7) / 4) / 2)


def test_ace_skips_classes_no_item_offers() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    labels = np.array([0, 1])
    padded_free = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert ace(probs, labels) == pytest.approx(ace(padded_free, labels))
    assert sce(probs, labels) == pytest.approx(sce(padded_free, labels))


def test_overconfidence_and_selective_by_hand() -> None:
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([1, 0, 1, 0])
    assert overconfidence_rate(probs, labels, tau=0.8) == 0.25
    assert selective_acc(probs, labels, coverage=0.5) == 0.5
    # risk after 1, 2, 3, 4 most confident: 1, 1/2, 2/3, 2/4
    assert aurc(probs, labels) == pytest.approx((1 + 0.5 + 2 / 3 + 0.5) / 4)
    # OE, 15 bins: (14/15, 1] holds 0.95 (acc 0) -> 0.25 * 0.95 * 0.95; (8/15, 9/15] holds 0.6 and 0.55
    # (acc 0.5, conf 0.575) -> 0.5 * 0.575 * 0.075; the 0.85 bin (acc 1) is not overconfident
    assert oe(probs, labels) == pytest.approx(0.25 * 0.95 ** 2 + 0.5 * 0.575 * 0.075)


def test_bad_inputs_are_clear() -> None:
    with pytest.raises(QuantcalError, match="sum to 1"):
        ece(np.array([[0.5, 0.6]]), np.array([0]))
    with pytest.raises(QuantcalError, match="labels must lie"):
        ece(np.array([[0.5, 0.5]]), np.array([2]))
    with pytest.raises(QuantcalError, match="shape"):
        ece(np.array([0.5, 0.5]), np.array([0]))
    with pytest.raises(QuantcalError, match="unknown metric"):
        compute("accuracy", np.array([[0.5, 0.5]]), np.array([0]))
