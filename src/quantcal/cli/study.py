"""``quantcal run`` (the main job) and ``quantcal report``: :func:`quantcal.api.run_study`, :func:`~quantcal.api.rebuild_report`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from quantcal.cli.common import console, item_bar, out, phase, quiet_transformers, say, step_bar, user_errors
from quantcal.errors import QuantcalError


def run_command(
    study: Optional[Path] = typer.Argument(None, help="Study YAML (schema in the README). Omit to run the built-in default study on the bundled SmolLM2."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="A data folder in hub schema (quantcal download TASK... --out DIR writes one: DIR/TASK/SPLIT.jsonl). A study file: what ${data_dir} in its data files stands for. The default study: also run the benchmarks found there (piqa, openbookqa, hellaswag, boolq)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Cap every task at its first N items (for a quick or CI-sized run)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Report directory (overrides the study's 'output')."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and stop."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: the plan as JSON on stdout (every value whole; the table cuts long ones)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:0 ... (overrides the study's 'device')."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto, float32, bfloat16, float16 (overrides the study's 'dtype')."),
    executor: str = typer.Option("local", "--executor", help="local (one job after another, in this process) or ray (jobs as Ray tasks; the driver alone writes the store)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (e.g. ray://head:10001 or auto); default: start a local Ray instance."),
    job_cpus: float = typer.Option(1.0, "--job-cpus", help="Ray: CPUs each job declares (and the torch threads it uses)."),
    job_gpus: float = typer.Option(0.0, "--job-gpus", help="Ray: GPUs each job declares (1 by default when the study's device is cuda)."),
) -> None:
    """The main job: score the reference and every variant on every task (resuming what the study's store holds),
    then write the report: report.html, results.json, tables.md, tables.tex, items.parquet, figures/."""
    with user_errors():
        if executor not in ("local", "ray"):
            raise QuantcalError(f"`executor` must be local or ray, got {executor!r}")
        if executor == "local" and (address is not None or job_cpus != 1.0 or job_gpus != 0.0):
            raise QuantcalError("`address`, `job_cpus` and `job_gpus` go with `executor` ray")
        from quantcal import api
        from quantcal.study.ray_executor import RaySettings

        if as_json and not dry_run:
            raise QuantcalError("`json` goes with `dry_run` (the plan as JSON)")
        plan = api.plan_study(study, output=output, limit=limit, data_dir=data_dir, device=device, dtype=dtype)
        from quantcal.study.generation_study import plan_generation

        rows = [_plan_row(i, j) for i, j in enumerate([*plan.jobs, *plan_generation(plan.spec)], 1)]
        if as_json:
            import json

            typer.echo(json.dumps({"study": plan.spec.name, "output": str(plan.output), "jobs": rows}, indent=2))
            return
        table = Table(title=f"plan · {plan.spec.name} · {len(rows)} jobs")
        widths = _plan_widths(rows, (out if dry_run else console).width)
        for column, key in PLAN_COLUMNS:  # one line per job: long values cut (whole in --dry-run --json), never wrapped
            table.add_column(column, no_wrap=True, overflow="ellipsis")
        for r in rows:
            table.add_row(*(_cut(str(r[key]), widths[key]) for _, key in PLAN_COLUMNS))
        (out if dry_run else console).print(table)  # a dry run's plan is its output: stdout, so `> plan.txt` keeps it
        if dry_run:
            return
        quiet_transformers()
        ray = RaySettings(address, job_cpus, job_gpus) if executor == "ray" else None
        start = time.perf_counter()
        result = api.run_study(plan, executor=executor, ray=ray, progress=item_bar, step_progress=step_bar, say=say,
                               phase=phase)
        _print_summary(result.report.results)
        console.print(f"report: {result.page}")
        for exported in result.checkpoints:
            console.print(f"checkpoint: {exported.out} ({exported.format})")
        console.print(f"{len(result.jobs)} job(s) in {_duration(time.perf_counter() - start)}", highlight=False)
        if result.failures:
            console.print(Text.assemble((f"{len(result.failures)} of {len(result.jobs)} job(s) failed", "red"),
                                        "; the report covers the others"))
            raise typer.Exit(1)


PLAN_COLUMNS = (("#", "job"), ("variant", "variant"), ("model", "model"), ("adapter / recipe", "how"), ("task", "task"),
                ("items", "items"))


def _plan_widths(rows: list[dict[str, Any]], width: int) -> dict[str, int]:
    """Each plan column's width so the table fits ``width``: variant and task at most 24, the rest shared by model
    and recipe (each at least 12)."""
    longest = {key: max([len(column)] + [len(str(r[key])) for r in rows]) for column, key in PLAN_COLUMNS}
    out = {key: longest[key] for key in ("job", "items")}
    out.update({key: min(longest[key], 24) for key in ("variant", "task")})
    room = max(width - 3 * len(PLAN_COLUMNS) - 1 - sum(out.values()), 24)  # borders and padding: 3 per column, 1
    model = min(longest["model"], max(12, room - min(longest["how"], room // 2)))
    out["model"], out["how"] = model, min(longest["how"], max(12, room - model))
    return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _plan_row(number: int, job: Any) -> dict[str, Any]:
    d = job.definition
    how = " + ".join(x for x in (f"adapter ({d.deploy_form})" if d.adapter else "", d.recipe or "") if x)
    free_text = " (free text)" if getattr(job.task, "max_gen_toks", False) is not False else ""
    return {"job": number, "variant": job.variant, "model": d.model or "adapter's base", "how": how or "—",
            "task": job.label + free_text, "items": job.task.limit or "all"}


def _print_summary(results: dict[str, Any]) -> None:
    for task, by_norm in results["tasks"].items():
        norm, block = next(iter(by_norm.items()))
        table = Table(title=f"{task} · normalization {norm} · Δ vs reference (* interval excludes 0)")
        for column in ("variant", "n", "acc", "ECE", "Δacc", "ΔECE"):
            table.add_column(column, justify="left" if column == "variant" else "right")
        for name, v in block["variants"].items():
            m = v["metrics"]
            p = block["paired"].get(name, {}).get("difference", {})
            table.add_row(name, str(v["n"]), f"{m['acc']['estimate']:.4f}" if "acc" in m else "—",
                          f"{m['ece']['estimate']:.4f}" if "ece" in m else "—", _delta(p.get("acc")), _delta(p.get("ece")))
        out.print(table)
        for flag in block["deployment"]["flags"]:  # only changes whose intervals both exclude 0
            if flag["both_intervals_exclude_zero"]:
                console.print(Text.assemble(("warning", "yellow"), f": {task} ({norm}): {flag['message']}"),
                              highlight=False)
    for note in results.get("scope", []):
        console.print(Text.assemble(("note", "yellow"), ": " + note), highlight=False)
    found = results.get("findings", {})
    for b in found.get("blocks", []):  # one line per variant, wrapped to the terminal
        out.print(Text(f"findings · {b['task']} · normalization {b['normalization']} (variant − reference, 95% interval):"))
        for line in b["lines"]:  # wrapped to a terminal's width, whole lines in logs and pipes
            out.print(Text(f"  - {line}"), soft_wrap=not out.is_terminal)
    if found.get("multiple_comparisons"):
        out.print(Text(found["multiple_comparisons"]), soft_wrap=not out.is_terminal)
    for caveat in found.get("caveats", []):
        out.print(Text("caveat: " + caveat), soft_wrap=not out.is_terminal)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


def _delta(interval: Optional[dict[str, Any]]) -> str:
    if not interval or interval.get("estimate") is None:
        return "—"
    star = "*" if interval["low"] is not None and (interval["low"] > 0 or interval["high"] < 0) else ""
    return f"{interval['estimate']:+.4f}{star}"


def report_command(
    store: Path = typer.Argument(..., help="A study's store (study.sqlite) or any quantcal store."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Reference variant (default: the study's reference, else 'reference', else the first run)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Report directory (default: the store's folder)."),
    resamples: Optional[int] = typer.Option(None, "--resamples", help="Bootstrap resamples (default: the study's, else 1000)."),
    normalization: Optional[str] = typer.Option(
        None, "--normalization",
        help="Length normalization(s) to report, comma-separated from none, tokens, chars, bytes (default: the "
             "study's, else none). The store keeps every choice's log-likelihood and length: nothing is rescored."),
    all_items: bool = typer.Option(False, "--all-items", help="Report every item the store holds, not only those of the study's last run (its --limit)."),
) -> None:
    """Rebuild the report from a store without scoring anything (generated answers: their page too, scored again from
    the stored text)."""
    with user_errors():
        from quantcal import api

        written = api.rebuild_report(store, ref=ref, output=output, resamples=resamples, normalization=normalization,
                                     all_items=all_items, say=say)
        console.print(f"report: {written.page}")
