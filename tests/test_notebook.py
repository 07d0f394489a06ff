"""quantcal in a notebook (issue 34 item 10): compact reprs, HTML tables, precise return types, progress bars by
default (tqdm.auto, opt-out) with transformers' own loading bars silenced meanwhile and restored after."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

import quantcal
from quantcal import api


def test_evaluate_prints_compactly_renders_a_table_and_shows_one_bar_per_task(tiny_llama: Path, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as in a fresh notebook (other tests in this process may have turned it off)
    result = quantcal.evaluate(str(tiny_llama), "arithmetic", limit=12, store=tmp_path / "s.sqlite")
    bars = capsys.readouterr().err
    assert "arithmetic" in bars and "12/12" in bars  # tqdm's bar, on by default
    assert hf_logging.is_progress_bar_enabled()  # transformers' bars are back on after the call
    text = repr(result)
    assert text.count("\n") == 1 and "TaskResult('arithmetic', n=12, acc " in text and "ece " in text
    assert "arith-" not in text and "item_ids" not in text  # no list of item ids
    html = result._repr_html_()
    assert html.count("<tr>") == 2 and "ece [95%]" in html and "acc_norm" in html
    quantcal.evaluate(str(tiny_llama), "arithmetic", limit=12, store=tmp_path / "s.sqlite", progress=None)
    assert "12/12" not in capsys.readouterr().err  # opted out


def test_a_study_result_prints_in_one_line_and_renders_its_headline(tiny_llama: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    study = quantcal.run_study({"reference": str(tiny_llama), "variants": [{"name": "w2", "recipe": "rtn:bits=2,group_size=16"}],
                                "tasks": [{"name": "arithmetic", "limit": 20}], "bootstrap": {"resamples": 50}},
                               output=tmp_path / "r", progress=None)
    text = repr(study)
    assert "\n" not in text and len(text) < 300 and "jobs=2" in text and "tasks=['arithmetic']" in text
    html = study._repr_html_()
    assert "<table>" in html and "Δacc" in html and "w2" in html and html.count("<tr>") == 3


def test_public_functions_name_their_return_types() -> None:
    hints = typing.get_type_hints(api.load_items, globalns={**vars(api), "pd": __import__("pandas")})
    assert hints["return"].__name__ == "DataFrame"
    for method in (api.EvalResult.items, api.StudyResult.metrics, api.StudyResult.items):
        assert typing.get_type_hints(method, globalns={**vars(api), "pd": __import__("pandas")})["return"].__name__ == "DataFrame"
    assert repr(quantcal.Interval(0.1971427338882965, 0.05, 0.253, 0.95, 1000))  # the full record stays in repr
    assert str(quantcal.Interval(0.1971427338882965, 0.05, 0.253, 0.95, 1000)) == "0.197 [0.050, 0.253]"
