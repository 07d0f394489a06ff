"""``quantcal sensitivity``: which units of a model a recipe's calibration damage comes from
(:func:`quantcal.study.sensitivity.run_sensitivity`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from quantcal.cli.common import BATCH_TOKENS_HELP, batch_tokens, console, item_bar, out, phase, quiet_transformers, say, user_errors
from quantcal.sources.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from quantcal.study.sensitivity import SensitivityResult


def sensitivity_command(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="The reference model (bundled name, .gguf, checkpoint dir, hub id)."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="The recipe whose damage is located, e.g. rtn:bits=3,group_size=64 or gptq:bits=4 (simulated)."),
    task: str = typer.Option(..., "--task", "-t", help="Task(s) of the ranking split: NAME, NAME=FILE, or a comma list of them."),
    data_file: Optional[Path] = typer.Option(None, "--data-file", help="A local copy of the (single) task's data in hub schema."),
    limit: Optional[int] = typer.Option(None, "--limit", help="The ranking split: the first N items of each task (keep the evaluation items apart: --skip N there)."),
    unit: str = typer.Option("block", "--unit", help="block: one decoder block at a time; linear: each block's attention (q/k/v/o) and MLP linears apart."),
    out_dir: Path = typer.Option(Path("quantcal-sensitivity"), "--out", help="Folder for sensitivity.json (what `mixed:...,ranking=` reads), sensitivity.md, the figure and the store."),
    normalization: str = typer.Option("none", "--normalization", help="Choice scores: none (sum of log-likelihoods), tokens, chars or bytes."),
    batch_size: int = typer.Option(64, "--batch-size", help="Choice rows per forward pass."),
    max_batch_tokens: str = typer.Option("auto", "--max-batch-tokens", help=BATCH_TOKENS_HELP),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for each paired interval."),
    replay: bool = typer.Option(True, "--replay/--no-replay", help="Start each unit's passes at its own block from the reference's recorded hidden states (same scores, about half the compute; memory: a quarter of the free RAM at most)."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
) -> None:
    """Quantize one unit at a time with RECIPE (everything else in float), score the ranking items, and rank the units
    by the paired change of NLL, ECE, Brier and p(gold) against the reference.

    The recipe is built once; each unit's quantized weights are swapped into the reference and out again. Scores go
    to OUT/sensitivity.sqlite, so an interrupted run resumes. Exit codes: 0 done; 2 bad input."""
    with user_errors():
        quiet_transformers()
        from quantcal import api

        result = api.run_sensitivity(model, recipe, task, data_file=data_file, limit=limit, unit=unit, out=out_dir,
                                 normalization=normalization, batch_size=batch_size,
                                 max_batch_tokens=batch_tokens(max_batch_tokens), device=device, dtype=dtype,
                                 resamples=resamples, replay=replay, progress=item_bar, say=say, phase=phase)
        _print_tables(result)
        console.print(f"sensitivity: {result.json_path} (table: {result.out / 'sensitivity.md'})")


def merge_sensitivity_command(
    runs: list[Path] = typer.Argument(..., help="Sensitivity runs (folders or their sensitivity.json), one task set each."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the merged sensitivity.json, sensitivity.md and figure."),
) -> None:
    """Merge sensitivity runs of one recipe on different tasks into one ranking, as if one run had scored every task.

    Run the ranking task by task (on other days or machines), then merge: a `mixed` recipe ranked on the result
    averages each unit's harm over all the tasks and refuses all their items. Runs of another model, recipe build,
    unit kind or setting, or with a task in common, are refused. Exit codes: 0 done; 2 bad input."""
    with user_errors():
        from quantcal import api

        result = api.merge_sensitivity(runs, out_dir)
        _print_tables(result)
        console.print(f"merged sensitivity ({', '.join(result.data['tasks'])}): {result.json_path}")


def _print_tables(result: "SensitivityResult") -> None:
    for name, block in result.data["tasks"].items():
        table = Table(title=f"{name} · {block['n']} items · {result.data['recipe']}, one {result.data['unit']} at a time")
        for column in ("unit", "ΔNLL", "ΔECE", "ΔBrier", "Δp(gold)", "Δacc", "mean JS"):
            table.add_column(column, justify="left" if column == "unit" else "right")
        ranked = sorted(block["units"].items(), key=lambda kv: -kv[1]["nll"]["estimate"])
        for unit_name, e in ranked[:10] + [("all (full recipe)", block["full_recipe"])]:
            table.add_row(unit_name, *(f"{e[m]['estimate']:+.4f}" for m in ("nll", "ece", "brier", "p_gold", "acc")),
                          f"{e['mean_js']:.4f}")
        out.print(table)
