"""``quantcal cache verify``: every cache entry checked against the manifest written when it was built
(:func:`quantcal.api.verify_cache`)."""

from __future__ import annotations

import typer
from rich.table import Table

from quantcal.cli.common import console, out, user_errors

cache_app = typer.Typer(help="quantcal's cache of built variants and dequantized GGUF copies ($QUANTCAL_CACHE, "
                             "else ~/.cache/quantcal).", no_args_is_help=True)


@cache_app.command("verify")
def verify_command(
    quick: bool = typer.Option(False, "--quick", help="Check sizes and the small files' hashes only (the weights' "
                                                      "hashes are skipped)."),
    remove_damaged: bool = typer.Option(False, "--remove-damaged", help="Remove each damaged entry (a symbolic link "
                                        "itself, never what it points to); it is built again when next used."),
) -> None:
    """Check every entry's files (sizes and SHA-256) against the manifest written when it was built; exit 1 if any
    entry is damaged."""
    with user_errors():
        from quantcal import api

        checks = api.verify_cache(full=not quick, remove_damaged=remove_damaged)
        table = Table(title=f"quantcal cache · {len(checks)} entries")
        for column in ("entry", "kind", "MB", "state"):
            table.add_column(column)
        for check in checks:
            state = "ok" if check.problem is None else ("removed: " if remove_damaged else "damaged: ") + check.problem
            table.add_row(check.path.name, check.kind, f"{check.size_bytes / 2**20:.1f}", state)
        out.print(table)
        damaged = [c for c in checks if c.problem is not None]
        if damaged and not remove_damaged:
            console.print(f"{len(damaged)} damaged entr{'y' if len(damaged) == 1 else 'ies'}: quantcal builds each "
                          "again when next used (or run quantcal cache verify --remove-damaged)")
            raise typer.Exit(1)
