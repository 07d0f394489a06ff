"""What every command shares: the consoles, one-line errors with CLI flag names, progress bars and news lines."""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.text import Text

from quantcal.errors import QuantcalError

#: Tables and results go to stdout; news, bars and errors to stderr. Neither reads markup: names, paths and
#: messages come from users (``--name "[/x]v"`` is a name, not a closing tag); our own styling is ``style=``/``Text``.
#: Lines are not cut to the terminal's width (``soft_wrap``), so a path or a command prints whole, to copy or grep.
out = Console(markup=False, soft_wrap=True)
console = Console(stderr=True, markup=False, soft_wrap=True)

#: Library parameters whose CLI flag is not simply ``--`` + the name with dashes.
FLAG_NAMES = {"tasks": "--task", "names": "--metrics", "cpus_per_job": "--job-cpus", "gpus_per_job": "--job-gpus"}


def as_flags(message: str) -> str:
    """A library message with each backquoted parameter (`` `max_length` ``) shown as its flag (``--max-length``)."""
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: FLAG_NAMES.get(m.group(1), "--" + m.group(1).replace("_", "-")),
                  message)


def unescape(text: str | None) -> str | None:
    """Backslash escapes typed on a command line (``\\n``, ``\\t``, ``\\\\``) as the characters they name, so
    ``--template 'Q: {question}\\nA:'`` means what the same string means in a study file."""
    if text is None:
        return None
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def one_store(argument: Path | None, option: Path | None) -> Path:
    """The store named as the positional argument or as ``--store`` (one of them)."""
    if argument is not None and option is not None and argument != option:
        raise QuantcalError("name the store once: as the argument or with --store")
    store = argument or option
    if store is None:
        raise QuantcalError("name the store to read (the argument, or --store)")
    return store


BATCH_TOKENS_HELP = ("Padded token positions per forward pass (rows x width): auto (2048 on CPU, the fastest measured "
                     "there; on CUDA, from the free memory), a number, or 0 for no cap.")


def batch_tokens(text: str) -> int | None | str:
    """``--max-batch-tokens``: ``auto``, a positive number, or 0 (no cap: ``None``)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise QuantcalError(f"`--max-batch-tokens` must be auto, 0 (no cap) or a positive number, got {text!r}") from None
    if value < 0:
        raise QuantcalError(f"`--max-batch-tokens` must be auto, 0 (no cap) or a positive number, got {value}")
    return value or None


def say(message: str) -> None:
    """A news line on stderr (building a variant, a failed job), flags named as on the command line."""
    console.print(Text(as_flags(message)), highlight=False, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a user error as one line and exit 2; Ctrl-C exits 130 with a hint that work was kept."""
    try:
        yield
    except QuantcalError as exc:
        console.print(Text.assemble(("error: ", "bold red"), as_flags(str(exc))), soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print(Text.assemble(("interrupted", "yellow"), ": finished work is kept; run the same command again to resume (finetune: add --resume)"))
        raise typer.Exit(130) from None
    except (ImportError, RuntimeError, OSError) as exc:  # a broken install shows as transformers' import error
        from quantcal.versions import environment_problem

        problem = environment_problem()
        if problem is None:
            raise
        console.print(Text.assemble(("error: ", "bold red"), problem), soft_wrap=True, highlight=False)
        raise typer.Exit(2) from exc


def quiet_transformers() -> None:
    """Keep transformers' own warnings and nested bars out of the terminal (our bars tell the progress)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from huggingface_hub.utils import disable_progress_bars  # download bars (nested bars leave escapes in logs)

    disable_progress_bars()
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


@contextmanager
def phase(label: str) -> Iterator[None]:
    """A spinner with the elapsed time while a phase runs (loading, building, writing the report); on a terminal
    only (in logs the start and "ready in" lines say the same), and gone when the phase ends."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if not console.is_terminal:  # logs and pipes: the lines around the phase say it, no blank line left behind
        yield
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(), console=console,
                  transient=True) as spinner:
        spinner.add_task(as_flags(label), total=None)
        yield


class LogBar:
    """Progress for a log file or a pipe (stderr not a terminal), where a bar's carriage-return redraws pile up and
    its last state prints twice: one line when it starts, one every ``every`` seconds, one when it ends."""

    def __init__(self, description: str, total: int, unit: str, initial: int = 0, every: float = 30.0) -> None:
        self.description, self.total, self.unit, self.every = description, total, unit, every
        self.n = self.start_n = initial
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self._line(f"{self.n}/{self.total} {unit}s to do" if not initial else f"{self.n}/{self.total} {unit}s done before")

    def _line(self, text: str) -> None:
        print(f"{self.description}: {text}{self.postfix}", file=sys.stderr, flush=True)

    def _rate(self) -> str:
        seconds = max(time.monotonic() - self.start, 1e-9)
        return f"{(self.n - self.start_n) / seconds:.1f} {self.unit}s/s, {seconds:.1f} s"

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every and self.n < self.total:
            self.last = time.monotonic()
            self._line(f"{self.n}/{self.total} {self.unit}s ({self._rate()})")

    def set_postfix(self, **values: Any) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self) -> None:
        self._line(f"{self.n}/{self.total} {self.unit}s ({self._rate()})")


def item_bar(description: str, total: int) -> Any:
    """A bar over a job's items (the library's ``progress`` callback); plain lines when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return LogBar(description, total, "item")
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="item", dynamic_ncols=True, file=sys.stderr)


def step_bar(total: int, initial: int) -> Any:
    """A bar over fine-tuning steps (the library's ``progress`` callback for training); plain lines in logs."""
    if not sys.stderr.isatty():
        return LogBar("fine-tuning", total, "step", initial)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="fine-tuning", unit="step", dynamic_ncols=True, file=sys.stderr)
