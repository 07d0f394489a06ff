"""Probabilities over choices, length normalisation, padding, ties and lm-eval's headline numbers."""

from __future__ import annotations

import numpy as np
import pytest

from quantcal.errors import QuantcalError
from quantcal.analysis.predictions import predictions, softmax_rows, task_summary
from quantcal.store.database import ScoredItem


def scored(item_id: str, logliks, gold=0, golds=None, chars=None, tokens=None) -> ScoredItem:  # noqa: ANN001
    k = len(logliks)
    chars = chars or [1] * k
    return ScoredItem(item_id, 0, gold, tuple(golds or (gold,)), "h", tuple(logliks), tuple(tokens or [1] * k),
                      tuple(chars), tuple(chars), tuple([False] * k))


def test_softmax_and_padding() -> None:
    p = predictions([scored("a", [np.log(0.2), np.log(0.8)]), scored("b", [0.0, 0.0, 0.0])]).probs
    assert p.shape == (2, 3)
    assert p[0] == pytest.approx([0.2, 0.8, 0.0])
    assert p[1] == pytest.approx([1 / 3] * 3)


def test_ties_go_to_lowest_index() -> None:
    preds = predictions([scored("a", [-1.0, -1.0], gold=1)])
    assert preds.pred[0] == 0 and not preds.correct[0]


def test_char_normalisation_is_lm_eval_acc_norm() -> None:
    item = scored("a", [-10.0, -12.0], gold=1, chars=[5, 12])
    assert predictions([item], "none").pred[0] == 0
    assert predictions([item], "chars").pred[0] == 1  # -12/12 > -10/5
    assert task_summary([item]) == {"n": 1.0, "acc": 0.0, "acc_norm": 1.0}


def test_token_normalisation() -> None:
    item = scored("a", [-4.0, -6.0], tokens=[1, 3])
    assert predictions([item], "tokens").probs[0] == pytest.approx(softmax_rows(np.array([[-4.0, -2.0]]))[0])


def test_mc2_is_probability_mass_on_true_answers() -> None:
    item = scored("a", list(np.log([0.5, 0.3, 0.2])), gold=0, golds=(0, 2))
    assert task_summary([item], "mc2")["acc"] == pytest.approx(0.7)
    assert predictions([item]).true_mass[0] == pytest.approx(0.7)


def test_unknown_normalisation() -> None:
    with pytest.raises(QuantcalError, match="unknown length normalization"):
        predictions([scored("a", [0.0, 0.0])], "words")
