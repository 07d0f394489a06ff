"""The ``quantcal`` command line: each command parses its flags, calls :mod:`quantcal.api`, and renders the result.

No library logic lives here. The API is imported inside each command, so ``quantcal --help`` answers without
loading torch. Library errors name parameters (`` `limit` ``); :func:`~quantcal.cli.common.as_flags` shows flags.
"""

from __future__ import annotations

import typer

from quantcal.cli.analysis import compare_command, export_command, metrics_command
from quantcal.cli.cache import cache_app
from quantcal.cli.catalog import download_command, models_command, tasks_command
from quantcal.cli.evaluate import eval_command
from quantcal.cli.finetune import finetune_command
from quantcal.cli.lm_eval import import_lm_eval_command
from quantcal.cli.sensitivity import merge_sensitivity_command, sensitivity_command
from quantcal.cli.study import report_command, run_command
from quantcal.cli.variants import export_checkpoint_command, export_model_command, quantize_command, recipes_command

app = typer.Typer(
    help="quantcal: when you compress an LLM, what happens to how much you can trust its confidence?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is plain text: "pip install 'quantcal[lm-eval]'" keeps its brackets
    add_completion=False,
)

def _version(value: bool) -> None:
    if value:
        from quantcal import __version__

        typer.echo(f"quantcal {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print quantcal's version and exit.")) -> None:
    """quantcal: when you compress an LLM, what happens to how much you can trust its confidence?"""


for _name, _command in (
    ("eval", eval_command), ("quantize", quantize_command), ("finetune", finetune_command), ("recipes", recipes_command),
    ("export", export_command), ("metrics", metrics_command), ("compare", compare_command), ("run", run_command),
    ("report", report_command), ("import-lm-eval", import_lm_eval_command), ("tasks", tasks_command),
    ("models", models_command), ("sensitivity", sensitivity_command),
    ("merge-sensitivity", merge_sensitivity_command), ("export-checkpoint", export_checkpoint_command),
    ("export-model", export_model_command), ("download", download_command),
):
    app.command(_name)(_command)
app.add_typer(cache_app, name="cache")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends a command as Ctrl-C does: work in progress is cleaned up, finished work kept, exit 130."""
    raise KeyboardInterrupt


def main() -> None:  # pragma: no cover - console script entry
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    app()


__all__ = ["app", "main"]
