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
from quantcal.report.figures import Figure, pareto, sensitivity_figure, task_figures
from quantcal.report.html import render
from quantcal.faults import write_text_atomic, writing
from quantcal.analysis.records import item_records, write_records
from quantcal.report.tables import latex, markdown
from quantcal.store.database import Store
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


def pareto_points(block: dict[str, Any], reference: str,
                  formats: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The Pareto view's points: every variant whose bits per weight are known, with ECE before and after its
    temperature, its accuracy (from the deployment view's recalibrated ranking) and what it quantizes at run time
    besides its weights (``formats``: activations, KV cache)."""
    formats = formats or {}
    return [{"name": r["variant"], "bits": r["bits_per_weight"], "ece": r["ece_before"],
             "ece_after": None if r["at_bound"] else r["ece_after"], "acc": r["acc"] if r["acc"] is not None else 0.0,
             "reference": r["variant"] == reference, "formats": formats.get(r["variant"])}
            for r in block["deployment"].get("recalibrated", []) if r["bits_per_weight"] is not None]


@dataclass(frozen=True)
class WrittenReport:
    """What :func:`write_report` wrote: the page, every number on it (as in ``results.json``) and every file."""

    page: Path
    results: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def write_report(store: Store, out_dir: Path, settings: ReportSettings, title: str = "quantcal study",
                 failures: Sequence[dict[str, Any]] = (), say: Callable[[str], None] | None = None,
                 links: Sequence[tuple[str, str]] = ()) -> WrittenReport:
    """Compute every number from ``store`` and write the report's files into ``out_dir`` (each file whole or not at
    all: a full disk or a read-only folder ends in one user error, and the store is untouched). ``links``: (label,
    page) of the study's other pages, listed in the contents."""
    with writing(out_dir, "write the report to"):
        return _write_report(store, Path(out_dir), settings, title, failures, say, links)


def _write_report(store: Store, out_dir: Path, settings: ReportSettings, title: str,
                  failures: Sequence[dict[str, Any]], say: Callable[[str], None] | None,
                  links: Sequence[tuple[str, str]] = ()) -> WrittenReport:
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
    for task, by_norm in results["tasks"].items():
        points = pareto_points(next(iter(by_norm.values())), settings.reference, results.get("run_time_formats"))
        if len(points) > 1:
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in task)
            figures[task].append(pareto(points, task, out_dir / "figures", f"{safe}_pareto"))
    sensitivity_figures = [sensitivity_figure(run["data"], out_dir / "figures", f"sensitivity_{i}")
                           for i, run in enumerate(results["sensitivity"], start=1)]
    for run in results["sensitivity"]:
        run.pop("data")  # the run's own JSON stays beside it; results.json keeps the summary
    results["figures"] = {t: [str(f.png.relative_to(out_dir)) for f in fs] for t, fs in figures.items()}
    results["figures"]["sensitivity"] = [str(f.png.relative_to(out_dir)) for f in sensitivity_figures]
    write_text_atomic(out_dir / "results.json", json.dumps(_finite(results), indent=2))
    write_text_atomic(out_dir / "tables.md", markdown(results))
    write_text_atomic(out_dir / "tables.tex", latex(results))
    # (generated answers have their own table, answers.parquet)
    write_records(item_records(store, settings.normalizations, items=settings.items, generations=False),
                  out_dir / "items.parquet", "parquet")
    items = explorer_data(store, {task: list(next(iter(by_norm.values()))["variants"]) for task, by_norm in results["tasks"].items()},
                          settings.reference, settings.normalizations[0], items=settings.items)
    page = render(results, figures, {"title": title, "failures": list(failures), "environment": environment,
                                     "written": written, "items": items, "sensitivity_figures": sensitivity_figures,
                                     "links": list(links)})
    target = out_dir / "report.html"
    write_text_atomic(target, page)
    files = [target] + [out_dir / n for n in ("results.json", "tables.md", "tables.tex", "items.parquet")]
    files += [f for fs in [*figures.values(), sensitivity_figures] for fig in fs for f in (fig.png, fig.svg)]
    return WrittenReport(target, _finite(results), files)
