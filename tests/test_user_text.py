"""User text is text: names, paths, task names and messages that look like rich markup (``[/x]``, ``[bold]``,
``[link=…]``) are printed as written by every command that prints them, and help text keeps its brackets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from tests.conftest import write_jsonl

runner = CliRunner()
NAMES = ("[/x]a", "[bold]b[link=https://example.org]c")


def _questions(n: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1), "seven"],
             "answer": 0} for i in range(n)]


def _ok(result, *shown: str) -> str:  # noqa: ANN001
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "MarkupError" not in result.output
    for text in shown:
        assert text in result.output, (text, result.output)
    return result.output


@pytest.fixture()
def marked_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "a[" / "y]out"  # its path reads ".../a[/y]out"
    folder.mkdir(parents=True)
    return folder


def test_names_and_paths_that_look_like_markup_pass_through_every_command(marked_folder: Path, tiny_llama: Path) -> None:
    data = write_jsonl(marked_folder / "q.jsonl", _questions(6))
    store = marked_folder / "s.sqlite"
    for name in NAMES:
        _ok(runner.invoke(app, ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data),
                                "--store", str(store), "--name", name, "--output-json", str(marked_folder / "r.json")]),
            name, str(store))
    _ok(runner.invoke(app, ["metrics", str(store), "--resamples", "20"], env={"COLUMNS": "300"}), *NAMES)
    _ok(runner.invoke(app, ["compare", str(store), "--ref", NAMES[0], "--variant", NAMES[1], "--resamples", "20"],
                      env={"COLUMNS": "300"}), *NAMES)
    _ok(runner.invoke(app, ["export", str(store), "--out", str(marked_folder / "[bold]x.jsonl")]), "[bold]x.jsonl")
    rows = [json.loads(line) for line in (marked_folder / "[bold]x.jsonl").read_text().splitlines()]
    assert {r["variant"] for r in rows} == set(NAMES)


def test_a_study_variant_named_like_markup_is_planned_as_written(marked_folder: Path, tiny_llama: Path) -> None:
    write_jsonl(marked_folder / "q.jsonl", _questions(4))
    study = marked_folder / "study.yaml"
    study.write_text(f"reference: {tiny_llama}\nvariants:\n  - name: '[/bold]w2'\n    recipe: rtn:bits=2,group_size=16\n"
                     "tasks:\n  - name: custom\n    data_file: q.jsonl\noutput: '[bold]report'\n")
    _ok(runner.invoke(app, ["run", str(study), "--dry-run"], env={"COLUMNS": "300"}), "[/bold]w2")


def test_an_error_that_quotes_markup_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--task", "[/x]nope", "--limit", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "[/x]nope" in result.output, result.output


def test_help_and_lists_keep_their_square_brackets() -> None:
    for command, shown in ((["eval", "--help"], ("quantcal[lm-eval]", "quantcal[vllm]")), (["tasks"], ("quantcal[lm-eval]",))):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        joined = "".join(result.output.split())  # help wraps at spaces and hyphens
        assert all(text in joined for text in shown), result.output


def test_metrics_list_prints_each_docstring_formula_as_written() -> None:
    """``metrics --list`` once printed Brier as ``mean_i sum_k (p_ik - 1)^2``: rich ate ``[k = y_i]`` as a tag."""
    import re

    from quantcal.metrics import METRICS

    result = runner.invoke(app, ["metrics", "--list"])
    assert result.exit_code == 0, result.output
    joined = "".join(result.output.replace("│", "").split())
    for metric in METRICS.values():
        for formula in re.findall(r"``([^`]+)``", metric.fn.__doc__ or "")[:1]:
            assert "".join(formula.split()) in joined, (metric.name, formula)
    assert "n_bins=15" in joined and "tau=0.8" in joined and "``" not in result.output
