"""Write a study's report directory: report.html, results.json, tables.md, tables.tex, items.parquet, figures/."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from quantcal.report.collect import ReportSettings, collect
from quantcal.report.explorer import explorer_data
from quantcal.report.figures import Figure, task_figures
from quantcal.report.html import render
from quantcal.faults import write_text_atomic, writing
from quantcal.records import item_records, write_records
from quantcal.report.tables import latex, markdown
from quantcal.store import Store
from quantcal.versions import package_versions


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@dataclass(frozen=True)
class WrittenReport:
    """What :func:`write_report` wrote: the page, every number on it (as in ``results.json``) and every file."""

    page: Path
    results: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def write_report(store: Store, out_dir: Path, settings: ReportSettings, title: str = "quantcal study",
                 failures: Sequence[dict[str, Any]] = (), say: Callable[[str], None] | None = None) -> WrittenReport:
    """Compute every number from ``store`` and write the report's files into ``out_dir`` (each file whole or not at
    all: a full disk or a read-only folder ends in one user error, and the store is untouched)."""
    with writing(out_dir, "write the report to"):
        return _write_report(store, Path(out_dir), settings, title, failures, say)


def _write_report(store: Store, out_dir: Path, settings: ReportSettings, title: str,
                  failures: Sequence[dict[str, Any]], say: Callable[[str], None] | None) -> WrittenReport:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = collect(store, settings, say)
    environment = package_versions(("quantcal", "torch", "transformers", "numpy", "scipy", "relplot"))
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["study"] = {"name": title, "store": str(store.path), "written": written, "environment": environment,
                        "failures": list(failures)}
    figures: dict[str, list[Figure]] = {}
    for task, by_norm in results["tasks"].items():
        if say:
            say(f"figures · {task}")
        figures[task] = task_figures(next(iter(by_norm.values())), settings.reference, task, out_dir / "figures")
    results["figures"] = {t: [str(f.png.relative_to(out_dir)) for f in fs] for t, fs in figures.items()}
    write_text_atomic(out_dir / "results.json", json.dumps(_finite(results), indent=2))
    write_text_atomic(out_dir / "tables.md", markdown(results))
    write_text_atomic(out_dir / "tables.tex", latex(results))
    write_records(item_records(store, settings.normalizations), out_dir / "items.parquet", "parquet")
    items = explorer_data(store, {task: list(next(iter(by_norm.values()))["variants"]) for task, by_norm in results["tasks"].items()},
                          settings.reference, settings.normalizations[0])
    page = render(results, figures, {"title": title, "failures": list(failures), "environment": environment,
                                     "written": written, "items": items})
    target = out_dir / "report.html"
    write_text_atomic(target, page)
    files = [target] + [out_dir / n for n in ("results.json", "tables.md", "tables.tex", "items.parquet")]
    files += [f for fs in figures.values() for fig in fs for f in (fig.png, fig.svg)]
    return WrittenReport(target, _finite(results), files)
