"""Metric tables as rows of cells, and their Markdown and LaTeX renderings."""

from __future__ import annotations

import html
from typing import Any


def fmt_interval(iv: dict[str, float], signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(iv['estimate'])} [{f.format(iv['low'])}, {f.format(iv['high'])}]"


def excludes_zero(iv: dict[str, float]) -> bool:
    return iv["low"] > 0 or iv["high"] < 0


def metric_rows(block: dict[str, Any], metrics: list[str]) -> list[list[str]]:
    rows = []
    for name, v in block["variants"].items():
        rows.append([name, str(v["n"])] + [fmt_interval(v["metrics"][m]) for m in metrics])
    return rows


def diff_rows(block: dict[str, Any], metrics: list[str]) -> list[list[tuple[str, bool]]]:
    """Per variant: (cell text, interval excludes 0)."""
    rows = []
    for name, p in block["paired"].items():
        cells = [(name, False), (str(p["n"]), False)]
        cells += [(fmt_interval(p["difference"][m], signed=True), excludes_zero(p["difference"][m])) for m in metrics]
        rows.append(cells)
    return rows


def _md(text: str) -> str:
    """Text from names and data as inert Markdown: HTML escaped (renderers pass HTML through), table pipes, code
    ticks and emphasis characters escaped."""
    text = html.escape(str(text), quote=False)
    for ch in ("\\", "|", "`", "*", "_", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text


def markdown(results: dict[str, Any]) -> str:
    metrics = results["settings"]["metrics"]
    level = int(round(results["settings"]["level"] * 100))
    out = [f"# {_md(results.get('study', {}).get('name', 'quantcal study'))}", "",
           f"Reference: {_md(results['reference'])}. Estimates with {level}% bootstrap intervals "
           f"({results['settings']['resamples']} resamples); differences are variant − reference on the same items, "
           "**bold** where the interval excludes 0.", ""]
    found = results.get("findings", {})
    if found.get("blocks") or found.get("caveats"):
        out += ["## Findings", ""]
        for b in found.get("blocks", []):
            out += [f"**{_md(b['task'])}** (normalization {b['normalization']}):", ""]
            out += [f"- {_md(line)}" for line in b["lines"]] + [""]
        if found.get("multiple_comparisons"):
            out += [_md(found["multiple_comparisons"]), ""]
        out += [f"> Caveat: {_md(c)}" for c in found.get("caveats", [])] + [""]
        out += ["Definitions: " + "; ".join(_md(d) for d in found.get("definitions", [])) + ".", ""]
    for task, by_norm in results["tasks"].items():
        for norm, block in by_norm.items():
            out += [f"## {_md(task)} (normalization: {norm})", "", "| variant | n | " + " | ".join(metrics) + " |",
                    "|" + "---|" * (len(metrics) + 2)]
            out += ["| " + " | ".join([_md(r[0])] + r[1:]) + " |" for r in metric_rows(block, metrics)]
            if block["paired"]:
                out += ["", "| difference to reference | n | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
                out += ["| " + " | ".join([_md(r[0][0])] + [f"**{t}**" if bold else t for t, bold in r[1:]]) + " |"
                        for r in diff_rows(block, metrics)]
            out += recalibrated_rows(block.get("deployment", {}).get("recalibrated", []))
            out.append("")
    for name, group in results.get("groups", {}).items():
        how = "weighted by size" if group.get("weight_by_size") else "mean of its tasks"
        out += [f"## {_md(name)}: lm-eval group of {len(group['tasks'])} tasks (acc, {how})", "", "| variant | n | acc |",
                "|---|---|---|"]
        out += [f"| {_md(v)} | {e['n']} | {e['acc']:.4f} |" for v, e in group["variants"].items()] + [""]
    for run in results.get("sensitivity", []):
        out += sensitivity_markdown(run)
    return "\n".join(out)


def sensitivity_markdown(run: dict[str, Any]) -> list[str]:
    """"Where it breaks" for one sensitivity run (:func:`quantcal.report.collect.sensitivity_summary`)."""
    out = [f"## Where it breaks: {_md(run['recipe'])}, one {run['unit']} at a time ({run['units']} units)", ""]
    for task, t in run["tasks"].items():
        out += [f"{_md(task)} ({t['n']} items), most harmful units:", "", "| unit | ΔNLL | ΔECE | Δacc |", "|---|---|---|---|"]
        out += [f"| {u['unit']} | {fmt_interval(u['nll'], True)} | {fmt_interval(u['ece'], True)} | "
                f"{fmt_interval(u['acc'], True)} |" for u in t["top"]]
        out.append("")
    if run.get("combined"):
        out += [f"Over the {len(run['tasks'])} tasks (each unit's ΔNLL as a share of the full recipe's on that task, "
                "averaged: what a mixed recipe ranked on this run protects first): "
                + ", ".join(f"{c['unit']} ({c['share']:.1%})" for c in run["combined"]), ""]
    return out


def recalibrated_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The deployment view after temperature scaling: ECE before/after, the recovered part, ranks, bits."""
    if not rows:
        return []
    out = ["", "| after temperature scaling (rank) | bits/weight | acc | ECE before (rank) | ECE after | recovered "
               "| ΔECE vs reference before | ΔECE vs reference after | T |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bits = f"{r['bits_per_weight']:.2f}" if r["bits_per_weight"] is not None else "—"
        acc = f"{r['acc']:.4f}" if r["acc"] is not None else "—"
        bound = " (T at its bound)" if r["at_bound"] else ""
        deltas = " | ".join(fmt_interval(r[k], signed=True) if r.get(k) else "—" for k in ("delta_before", "delta_after"))
        out.append(f"| {_md(r['variant'])}{bound} ({r['rank_after']}) | {bits} | {acc} | {r['ece_before']:.4f} "
                   f"({r['rank_before']}) | {r['ece_after']:.4f} | {fmt_interval(r['recovered'])} | {deltas} "
                   f"| {r['temperature']:.3f} |")
    return out


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def latex(results: dict[str, Any]) -> str:
    metrics = results["settings"]["metrics"]
    out = ["% quantcal tables (booktabs); differences in bold where the interval excludes 0"]
    for task, by_norm in results["tasks"].items():
        for norm, block in by_norm.items():
            out += [r"\begin{table}[t]\centering\small", f"\\caption{{{_tex(task)}, normalization {_tex(norm)}}}",
                    r"\begin{tabular}{l r " + "l " * len(metrics) + "}", r"\toprule",
                    "variant & n & " + " & ".join(_tex(m) for m in metrics) + r" \\", r"\midrule"]
            out += [" & ".join(_tex(c) for c in r) + r" \\" for r in metric_rows(block, metrics)]
            if block["paired"]:
                out.append(r"\midrule")
                out += [" & ".join(f"\\textbf{{{_tex(t)}}}" if bold else _tex(t) for t, bold in r) + r" \\"
                        for r in diff_rows(block, metrics)]
            out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)
