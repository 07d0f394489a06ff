"""Reading a store: ``quantcal metrics``, ``quantcal compare`` and ``quantcal export``
(:func:`quantcal.api.store_metrics`, :func:`~quantcal.api.compare`, :func:`~quantcal.api.export`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from quantcal.cli.common import console, one_store, out, user_errors
from quantcal.errors import QuantcalError
from quantcal.metrics.registry import DEFAULT_METRICS


def export_command(
    store_arg: Optional[Path] = typer.Argument(None, metavar="STORE", help="The SQLite store to read (or a report folder)."),
    store: Optional[Path] = typer.Option(None, "--store", help="The store, as an option (same as the argument)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl, csv or parquet."),
    target: Optional[Path] = typer.Option(None, "--out", help="Output file (default: next to the store, same name, new suffix)."),
    normalization: str = typer.Option("none", "--normalization", help="Length normalization for probabilities: none, tokens, chars, bytes."),
) -> None:
    """Write one record per scored item: per-choice log-likelihoods and probabilities, gold, prediction, confidence, p(gold), question and choices."""
    with user_errors():
        from quantcal import api

        path, n = api.export(one_store(store_arg, store), target, fmt, normalization)
        console.print(f"wrote {n} records to {path}")


def metrics_command(
    store: Optional[Path] = typer.Argument(None, help="The SQLite store to read."),
    list_metrics: bool = typer.Option(False, "--list", help="List every metric (name, kind, direction, definition) and stop."),
    metrics: str = typer.Option(",".join(DEFAULT_METRICS), "--metrics", help="Comma-separated metric names ('quantcal metrics --list' shows them)."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the 95% intervals."),
    normalization: str = typer.Option("none", "--normalization", help="none (Study B: p(y|x) = product of token probabilities), tokens, chars, bytes."),
    output_json: Optional[Path] = typer.Option(None, "--output-json", help="Write every number here."),
) -> None:
    """Accuracy and calibration of every run in a store, each with a 95% bootstrap interval."""
    with user_errors():
        if list_metrics:
            _list_metrics()
            return
        if store is None:
            raise QuantcalError("give a store to read (or --list)")
        from quantcal import api

        names = [m.strip() for m in metrics.split(",") if m.strip()]
        runs = api.store_metrics(store, names, resamples=resamples, normalization=normalization)
        table = Table(title=f"{store.name} · normalization {normalization} · 95% bootstrap intervals")
        table.add_column("variant")
        table.add_column("task")
        for column in ("n", "metric", "estimate", "95% interval"):
            table.add_column(column, justify="right")
        payload: dict = {}
        for run in runs:
            payload.setdefault(run.variant, {})[run.task] = {"n": run.n, **{k: asdict(v) for k, v in run.values.items()}}
            for i, (name, iv) in enumerate(run.values.items()):
                first = i == 0
                table.add_row(run.variant if first else "", run.task if first else "", str(run.n) if first else "",
                              name, f"{iv.estimate:.4f}", f"[{iv.low:.4f}, {iv.high:.4f}]",
                              end_section=i == len(run.values) - 1)
        out.print(table)
        if output_json is not None:
            output_json.write_text(json.dumps(payload, indent=2))


def _list_metrics() -> None:
    from quantcal.metrics.registry import METRICS

    table = Table(title="quantcal metrics (default set marked *)")
    for column in ("metric", "kind", "better", "definition"):
        table.add_column(column)
    for m in METRICS.values():
        table.add_row(m.name + (" *" if m.name in DEFAULT_METRICS else ""), m.kind, "higher" if m.higher_is_better else "lower", m.doc)
    out.print(table)


def _compare_generations(store: Path, ref: Optional[str], variant: Optional[str], task: str, resamples: int,
                         output_json: Optional[Path]) -> None:
    """``compare`` on a free-text task: each confidence measure's paired differences, flipped answers."""
    from quantcal import api

    if ref is None or variant is None:
        raise QuantcalError("name both runs to compare on a free-text task: `ref` and `variant`")
    c = api.compare_generations(store, ref, variant, task, resamples=resamples)
    table = Table(title=f"{c.variant} − {c.ref} on {c.task} (n = {c.n} answers, paired, 95% interval; * excludes 0)")
    shown = ("acc", "ece", "brier", "nll", "auroc")
    for column in ("confidence", *shown):
        table.add_column(column, justify="left" if column == "confidence" else "right")
    for conf, metrics in c.differences.items():
        table.add_row(conf.removeprefix("conf_"), *(f"{metrics[m].estimate:+.3f}{' *' if metrics[m].excludes_zero else ''}"
                                                   f" [{metrics[m].low:+.3f}, {metrics[m].high:+.3f}]" for m in shown))
    out.print(table)
    out.print(f"answers changed: {c.changed_answers} of {c.n}; right → wrong {c.right_to_wrong}, wrong → right "
              f"{c.wrong_to_right}", highlight=False)
    if output_json is not None:
        output_json.write_text(json.dumps(c.to_json(), indent=2))


def compare_command(
    store: Path = typer.Argument(..., help="The SQLite store holding both runs."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Reference variant name (default: the study's reference, 'reference')."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Compressed variant name (default: the only other variant on the task)."),
    task: Optional[str] = typer.Option(None, "--task", help="Task both were scored on (default: the store's only task)."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the paired intervals."),
    normalization: str = typer.Option("none", "--normalization", help="none, tokens, chars, bytes."),
    output_json: Optional[Path] = typer.Option(None, "--output-json", help="Write every number here."),
) -> None:
    """Paired analysis of two variants on the same items: metric differences with intervals, p(gold) tests,
    flips, and changes by the reference's confidence (Study B)."""
    with user_errors():
        from quantcal import api
        from quantcal.tasks.generation_tasks import GENERATION_TASKS

        if task is not None and (task.split("[")[0] in GENERATION_TASKS or api.holds_generations(store, task)):
            _compare_generations(store, ref, variant, task, resamples, output_json)
            return
        c = api.compare(store, ref, variant, task, resamples=resamples, normalization=normalization)
        diff = Table(title=f"{c.variant} − {c.ref} on {c.task} (n = {c.n}, paired, 95% interval; * excludes 0)")
        for column in ("metric", "difference", "interval"):
            diff.add_column(column, justify="right" if column != "metric" else "left")
        for name, iv in c.differences.items():
            star = " *" if iv.excludes_zero else ""
            diff.add_row(name, f"{iv.estimate:+.4f}{star}", f"[{iv.low:+.4f}, {iv.high:+.4f}]")
        out.print(diff)
        a = c.analysis
        tests = a.tests
        out.print(f"mean Δp(gold) {a.mean_delta_p_gold:+.4f}   mean |Δp(gold)| {a.mean_abs_delta_p_gold:.4f}   "
                  f"mean JS distance {a.mean_js_distance:.4f}   prediction flips {a.flip_rate:.2%}", highlight=False)
        out.print(f"p(gold), all items: t-test p = {tests['p_gold_all']['t_pvalue']:.3g}, Wilcoxon p = {tests['p_gold_all']['wilcoxon_pvalue']:.3g}; "
                  f"reference-correct items: t-test p = {tests['p_gold_ref_correct']['t_pvalue']:.3g}; "
                  f"McNemar p = {tests['mcnemar']['pvalue']:.3g} ({int(tests['mcnemar']['correct_to_wrong'])} correct→wrong, "
                  f"{int(tests['mcnemar']['wrong_to_correct'])} wrong→correct)", highlight=False)
        strat = Table(title="by reference confidence (quantile bins)")
        for column in ("bin", "n", "ref confidence", "mean |Δp(gold)|", "mean JS", "flip rate"):
            strat.add_column(column, justify="right")
        for row in a.stratified["bins"]:
            strat.add_row(str(row["bin"]), str(row["n"]), f"{row['ref_confidence_low']:.2f}–{row['ref_confidence_high']:.2f}",
                          f"{row['mean_abs_delta_p_gold']:.4f}", f"{row['mean_js_distance']:.4f}", f"{row['flip_rate']:.2%}")
        out.print(strat)
        rho = a.stratified["spearman_ref_confidence_vs_abs_delta_p_gold"]
        out.print(f"Spearman(reference confidence, |Δp(gold)|) = {rho['rho']:.3f} (p = {rho['pvalue']:.3g})", highlight=False)
        if output_json is not None:
            output_json.write_text(json.dumps(c.to_json(), indent=2))
