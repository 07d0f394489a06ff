"""``quantcal import-lm-eval``: lm-eval's logged samples into a store (:func:`quantcal.api.import_lm_eval`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from quantcal.cli.common import out, user_errors


def import_lm_eval_command(
    paths: list[Path] = typer.Argument(..., help="lm-eval --log_samples output: samples_<task>_<date>.jsonl files or folders holding them."),
    store: Path = typer.Option(..., "--store", help="SQLite store to write into (created if missing)."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Variant name (default: lm-eval's model_name from its results file)."),
    task: Optional[str] = typer.Option(None, "--task", help="Task name in the store (default: lm-eval's task name); one samples file only."),
) -> None:
    """Put lm-eval's per-choice log-likelihoods into a store: then `quantcal metrics`, `compare` and `report`
    give calibration for a run you already have, without scoring anything again."""
    with user_errors():
        from quantcal import api

        imported = api.import_lm_eval(paths, store, variant=variant, task=task)
        table = Table(title=f"imported into {store}")
        for column in ("variant", "task", "items", "acc (quantcal)", "acc (lm-eval)", "acc_norm (quantcal)", "acc_norm (lm-eval)"):
            table.add_column(column, justify="left" if column in ("variant", "task") else "right")
        for run in imported:
            theirs = run.lm_eval
            table.add_row(run.variant, run.task, str(run.n_items), f"{run.acc:.4f}",
                          f"{theirs['acc']:.4f}" if "acc" in theirs else "—",
                          f"{run.acc_norm:.4f}" if run.acc_norm is not None else "—",
                          f"{theirs['acc_norm']:.4f}" if "acc_norm" in theirs else "—")
        out.print(table)
