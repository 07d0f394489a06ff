"""One self-contained HTML page (figures embedded as data URIs, no network), rendered with Jinja2 autoescaping
so that dataset text shows as text, never as markup."""

from __future__ import annotations

import base64
from typing import Any

from jinja2 import Environment

from quantcal.metrics import METRICS, get_metric
from quantcal.report.collect import verdict
from quantcal.report.explorer import SCRIPT as EXPLORER_SCRIPT, embed
from quantcal.report.figures import Figure
from quantcal.report.tables import diff_rows, fmt_interval, metric_rows

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>quantcal · {{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1180px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin-top: 2.4rem; } h3 { margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .85rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; vertical-align: top; }
th:first-child, td:first-child, td.text { text-align: left; }
th { background: #f4f4f4; }
td.better, span.better { font-weight: bold; background: #dff3df; }
td.worse, span.worse { font-weight: bold; background: #fbdcdc; }
td { white-space: nowrap; }
td.text { white-space: normal; }
.scroll { overflow-x: auto; max-width: 100%; }
.explorer-box { max-height: 32rem; overflow-y: auto; }
th.sortable { cursor: pointer; } th.sortable:hover { background: #e8e8e8; }
dl.glossary dt { font-weight: bold; } dl.glossary dd { margin: 0 0 .4rem 1rem; }
.flag { background: #ffe3e3; border-left: 4px solid #d33; padding: .5rem .8rem; margin: .5rem 0; }
.note { background: #fff6dc; border-left: 4px solid #b80; padding: .5rem .8rem; margin: .5rem 0; }
.ok { background: #e8f6e8; border-left: 4px solid #393; padding: .5rem .8rem; margin: .5rem 0; }
.muted { color: #666; font-size: .85rem; }
.findings { background: #f7f9fc; border: 1px solid #dde3ee; padding: .2rem 1rem .6rem; }
.findings h2 { margin-top: .6rem; }
img { max-width: 100%; }
.figs { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
code { background: #f4f4f4; padding: 0 .2rem; }
</style></head>
<body>
<h1>{{ title }}</h1>
<nav id="toc" class="muted">Contents: <a href="#findings">Findings</a>{% if overview %} · <a href="#overview">Overview</a>{% endif %} · <a href="#summary">Study</a>{% for task in tasks %} · <a href="#task-{{ loop.index }}">{{ task.name }}</a>{% endfor %}{% if results.sensitivity %} · <a href="#where-it-breaks">Where it breaks</a>{% endif %} · <a href="#glossary">Glossary</a>{% for label, href in links %} · <a href="{{ href }}">{{ label }}</a>{% endfor %}</nav>
<section id="findings" class="findings"><h2>Findings</h2>
{% if overview %}<h3 id="overview">Overview: each variant against the reference, per task ({{ level }}% intervals)</h3>
<div class="scroll"><table class="grid"><tr><th>variant</th>{% for t in overview.tasks %}<th>{{ t }}</th>{% endfor %}</tr>
{% for row in overview.rows %}<tr><td>{{ row.variant }}</td>{% for cell in row.cells %}<td>{% for part in cell %}<span{% if part.verdict %} class="{{ part.verdict }}"{% endif %} title="{{ part.title }}">{{ part.text }}</span>{% if not loop.last %}<br>{% endif %}{% endfor %}</td>{% endfor %}</tr>{% endfor %}
</table></div>
<p class="muted">Each cell: Δaccuracy in points and ΔECE, variant − reference on the same items (the task's first
normalization). <span class="better">green</span> better, <span class="worse">red</span> worse: the interval excludes
0; uncoloured: no evidence of a difference; † the change does not survive the Benjamini-Hochberg adjustment over all
the report's comparisons. Hover a number for its interval.</p>{% endif %}
{% for b in results.findings.blocks %}<p><strong>{{ b.task }}</strong> <span class="muted">(normalization {{ b.normalization }}; variant − reference, 95% interval)</span></p>
<ul>{% for line in b.lines %}<li>{{ line }}</li>{% endfor %}</ul>{% endfor %}
{% if not results.findings.blocks %}<p>No variant to compare with the reference.</p>{% endif %}
<p class="muted" id="definitions">{% for d in results.findings.definitions %}{{ d }}{% if not loop.last %} · {% endif %}{% endfor %}.</p>
{% if results.findings.multiple_comparisons %}<p class="muted">{{ results.findings.multiple_comparisons }}</p>{% endif %}
{% for c in results.scope %}<div class="note"><strong>Items:</strong> {{ c }}</div>{% endfor %}
{% if results.findings.caveats %}<div class="flag" id="caveats"><strong>{{ results.findings.caveats|length }} caveat(s)</strong>
<ul>{% for c in results.findings.caveats %}<li>{{ c }}</li>{% endfor %}</ul></div>{% endif %}
</section>
<p>Reference <code>{{ results.reference }}</code>; {{ n_variants }} variant(s) on {{ results.tasks|length }} task(s).
Estimates carry {{ level }}% bootstrap intervals ({{ settings.resamples }} resamples, seed {{ settings.seed }}; percentile,
and for ECE, ACE and SCE the basic interval, which corrects their upward bias under resampling);
differences are <em>variant − reference</em> on the same items (matched by id and content hash), resampled jointly;
coloured cells are differences whose interval excludes 0 (green better, red worse, by the metric's direction).</p>

<h2 id="summary">Study</h2>
<div class="scroll"><table>
<tr><th>variant</th><th>task</th><th>status</th><th>items</th><th>recipe / model</th></tr>
{% for r in results.runs %}<tr><td>{{ r.variant }}</td><td>{{ r.task }}</td><td>{{ r.status }}</td><td>{{ r.n }}</td><td class="text">{{ r.what }}</td></tr>
{% endfor %}</table></div>
{% for note in results.notes %}<div class="flag"><strong>Confound:</strong> {{ note }}</div>{% endfor %}
{% if failures %}<div class="flag"><strong>{{ failures|length }} job(s) failed:</strong><ul>
{% for f in failures %}<li>{{ f.variant }} · {{ f.task }}: {{ f.error }}</li>{% endfor %}</ul></div>{% endif %}
<p class="muted">Environment: {% for k, v in environment.items() %}{{ k }} {{ v }}{% if not loop.last %}, {% endif %}{% endfor %}. Written {{ written }}.</p>

{% for task in tasks %}
<h2 id="task-{{ loop.index }}">{{ task.name }}</h2>
{% for nb in task.blocks %}
<h3>Metrics (length normalization: {{ nb.norm }})</h3>
<div class="scroll"><table><tr><th>variant</th><th>n</th>{% for m in metrics %}<th title="{{ glossary[m] }}">{{ m }} {{ arrows[m] }}</th>{% endfor %}</tr>
{% for row in nb.metric_rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}
</table></div>
{% if nb.diff_rows %}
<div class="scroll"><table><tr><th>variant − reference</th><th>n</th>{% for m in metrics %}<th>Δ {{ m }} {{ arrows[m] }}</th>{% endfor %}</tr>
{% for row in nb.diff_rows %}<tr>{% for c, verdict in row %}<td{% if verdict %} class="{{ verdict }}"{% endif %}>{{ c }}</td>{% endfor %}</tr>{% endfor %}
</table></div>
<p class="muted"><span class="better">green</span>: better than the reference, <span class="worse">red</span>: worse
(the 95% interval of the difference excludes 0); uncoloured: no evidence of a difference. ↑ higher is better, ↓ lower is better.</p>{% endif %}
{% endfor %}

{% for g, m in task.method_effects.items() %}
<h3>{{ g }}: the method over {{ m.builds|length }} builds (calibration seeds)</h3>
<p class="muted">Each build's paired difference to the reference on the {{ m.n }} items all of them scored; the mean
and its between-build spread; the interval accounts for both the builds drawn and the items (two-level bootstrap,
t-scaled: see quantcal.metrics.two_level).</p>
<div class="scroll"><table><tr><th>metric</th>{% for b in m.builds %}<th>Δ {{ b }}</th>{% endfor %}<th>mean</th><th>sd</th><th>interval</th><th>same sign</th></tr>
{% for metric, e in m.effects.items() %}<tr><td>{{ metric }} {{ arrows.get(metric, "") }}</td>{% for d in e.per_build %}<td>{{ "%+.4f"|format(d) }}</td>{% endfor %}<td>{{ "%+.4f"|format(e.mean) }}</td><td>{{ "%.4f"|format(e.sd) }}</td><td>[{{ "%+.4f"|format(e.interval.low) }}, {{ "%+.4f"|format(e.interval.high) }}]</td><td>{{ "yes" if e.sign_consistent else "no" }}</td></tr>{% endfor %}
</table></div>
{% endfor %}

<h3>Deployment view</h3>
<p class="muted">Variants grouped by their paired difference to the reference (its 95% interval): better, no evidence
of a difference, worse. Within a group the order follows the estimate and is not a ranking.</p>
<div class="scroll"><table><tr><th>against the reference</th><th>accuracy</th><th>calibration ({{ task.deployment.calibration_metric or "—" }})</th></tr>
{% for label, a, c in task.groups %}<tr><td>{{ label }}</td><td class="text">{{ a }}</td><td class="text">{{ c }}</td></tr>{% endfor %}</table></div>
{% for f in task.deployment.flags %}<div class="flag">{{ f.message }}: Δacc {{ "%+.4f"|format(f.delta_acc.estimate) }}, ΔECE {{ "%+.4f"|format(f.delta_ece.estimate) }}.</div>{% endfor %}
{% if not task.deployment.flags and task.has_paired %}<div class="ok">No variant gains accuracy while losing calibration on this task.</div>{% endif %}
{% if task.deployment.recalibrated %}
<h4>After temperature scaling: how much calibration damage one temperature buys back</h4>
<p class="muted">Each variant's ECE as is and after its own temperature ({{ settings.folds }}-fold cross-fitted: each
item recalibrated by a temperature fitted on the other folds), ranked by ECE after. A temperature changes no
prediction, so accuracy stays. Recovered = ECE before − ECE after, with its paired {{ level }}% interval. ΔECE vs
reference: the variant's calibration damage, paired on the same items, before and after both models are recalibrated
(each with its own temperature, the same folds): the damage a temperature cannot remove is the one after. T is fitted
on all items (what <code>quantcal export-checkpoint</code> writes with the model).</p>
<div class="scroll"><table><tr><th>rank after</th><th>variant</th><th>bits/weight</th><th>acc</th><th>ECE before (rank)</th><th>ECE after</th><th>recovered</th><th>ΔECE vs reference before</th><th>ΔECE vs reference after</th><th>T</th></tr>
{% for r in task.deployment.recalibrated %}<tr><td>{{ r.rank_after }}</td><td>{{ r.variant }}{% if r.at_bound %} <strong>(T at its bound)</strong>{% endif %}</td><td>{{ "%.2f"|format(r.bits_per_weight) if r.bits_per_weight is not none else "—" }}</td><td>{{ "%.4f"|format(r.acc) if r.acc is not none else "—" }}</td><td>{{ "%.4f"|format(r.ece_before) }} ({{ r.rank_before }})</td><td>{{ "%.4f"|format(r.ece_after) }}</td><td>{{ fmt_interval(r.recovered) }}</td><td>{{ fmt_interval(r.delta_before, True) if r.delta_before else "—" }}</td><td>{{ fmt_interval(r.delta_after, True) if r.delta_after else "—" }}</td><td>{{ "%.3f"|format(r.temperature) }}</td></tr>{% endfor %}
</table></div>{% endif %}

<div class="figs">{% for fig in task.figures %}<figure><img alt="{{ fig.title }}" src="data:image/png;base64,{{ fig.data }}"><figcaption class="muted">{{ fig.title }}</figcaption></figure>{% endfor %}</div>

{% for v in task.analysis %}
<h3>{{ v.name }} vs reference: what moved</h3>
<p>n = {{ v.a.n }}; mean Δp(gold) {{ "%+.4f"|format(v.a.mean_delta_p_gold) }}, mean |Δp(gold)| {{ "%.4f"|format(v.a.mean_abs_delta_p_gold) }},
mean Jensen-Shannon distance {{ "%.4f"|format(v.a.mean_js_distance) }}, predictions changed {{ "%.1f"|format(100 * v.a.flip_rate) }}%.
Flips: {{ v.a.flips.correct_to_wrong.count|int }} correct→wrong, {{ v.a.flips.wrong_to_correct.count|int }} wrong→correct.</p>
<div class="scroll"><table><tr><th>test</th><th>n</th><th>mean before</th><th>mean after</th><th>t-test p</th><th>Wilcoxon p</th></tr>
{% for label, key in [("p(gold), all items", "p_gold_all"), ("p(gold), reference-correct items", "p_gold_ref_correct"), ("confidence, reference-correct items", "confidence_ref_correct")] %}
{% set t = v.a.tests[key] %}<tr><td>{{ label }}</td><td>{{ t.n|int }}</td><td>{{ "%.4f"|format(t.mean_before) }}</td><td>{{ "%.4f"|format(t.mean_after) }}</td><td>{{ "%.3g"|format(t.t_pvalue) }}</td><td>{{ "%.3g"|format(t.wilcoxon_pvalue) }}</td></tr>{% endfor %}
<tr><td>McNemar (correctness)</td><td colspan="3">{{ v.a.tests.mcnemar.correct_to_wrong|int }} → wrong, {{ v.a.tests.mcnemar.wrong_to_correct|int }} → right</td><td colspan="2">p = {{ "%.3g"|format(v.a.tests.mcnemar.pvalue) }}</td></tr>
</table></div>
<div class="scroll"><table><tr><th>reference-confidence bin</th><th>n</th><th>confidence range</th><th>mean |Δp(gold)|</th><th>mean Δp(gold)</th><th>mean JS</th><th>flip rate</th></tr>
{% for b in v.a.stratified.bins %}<tr><td>{{ b.bin }}</td><td>{{ b.n }}</td><td>{{ "%.3f"|format(b.ref_confidence_low) }}–{{ "%.3f"|format(b.ref_confidence_high) }}</td><td>{{ "%.4f"|format(b.mean_abs_delta_p_gold) }}</td><td>{{ "%+.4f"|format(b.mean_delta_p_gold) }}</td><td>{{ "%.4f"|format(b.mean_js_distance) }}</td><td>{{ "%.1f"|format(100 * b.flip_rate) }}%</td></tr>{% endfor %}
</table></div>
{% if v.a.stratified.merged_bins %}<p class="muted">{{ v.a.stratified.merged_bins }} of {{ v.a.stratified.requested_bins }} quantile bins merged: their edges coincide (many items share a confidence).</p>{% endif %}
<p class="muted">Spearman(reference confidence, |Δp(gold)|) = {{ "%.3f"|format(v.a.stratified.spearman_ref_confidence_vs_abs_delta_p_gold.rho) }}
(p = {{ "%.3g"|format(v.a.stratified.spearman_ref_confidence_vs_abs_delta_p_gold.pvalue) }}); negative means the items the reference was unsure of moved most.</p>
<div class="scroll"><table><tr><th>item</th><th>context (end)</th><th>gold answer</th><th>p(gold) ref</th><th>p(gold) variant</th></tr>
{% for it in v.largest %}<tr><td class="text">{{ it.item_id }}</td><td class="text">{{ it.context }}</td><td class="text">{{ it.gold_choice }}</td><td>{{ "%.3f"|format(it.p_gold_ref) }}</td><td>{{ "%.3f"|format(it.p_gold_var) }}</td></tr>{% endfor %}
</table></div>
{% endfor %}

<h3>Items (normalization {{ task.primary }})</h3>
<p class="muted">Every item with each variant's p(gold) and its change from the reference; click a column to sort,
filter by text or by rows whose prediction changed. Dataset text is shown as text.</p>
<div id="explorer-{{ loop.index }}" class="scroll explorer-box"></div>

{% if task.recalibration %}
<h3>Recalibration (temperature scaling, {{ settings.folds }}-fold cross-fitted; normalization {{ task.primary }})</h3>
<div class="scroll"><table><tr><th>variant</th><th>T</th><th>ECE before</th><th>ECE after</th><th>NLL before</th><th>NLL after</th><th>Brier before</th><th>Brier after</th><th>acc (unchanged)</th></tr>
{% for name, r in task.recalibration %}<tr><td>{{ name }}{% if r.at_bound %} <strong>(T at its bound: the fit flattens the model to near-uniform probabilities; not a usable recalibration)</strong>{% endif %}</td><td>{{ "%.3f"|format(r.temperature) }}</td><td>{{ "%.4f"|format(r.before.ece) }}</td><td>{{ "%.4f"|format(r.after.ece) }}</td><td>{{ "%.4f"|format(r.before.nll) }}</td><td>{{ "%.4f"|format(r.after.nll) }}</td><td>{{ "%.4f"|format(r.before.brier) }}</td><td>{{ "%.4f"|format(r.after.brier) }}</td><td>{{ "%.4f"|format(r.after.acc) }}</td></tr>{% endfor %}
</table></div>{% endif %}
{% endfor %}
{% for gname, g in results.groups.items() %}
<h2>{{ gname }}: lm-eval group of {{ g.tasks|length }} tasks</h2>
<p class="muted">Accuracy aggregated from its tasks {{ "weighted by their sizes" if g.weight_by_size else "as the plain mean of the tasks" }}, as the group declares (lm-eval's aggregation).</p>
<div class="scroll"><table><tr><th>variant</th><th>n</th><th>acc</th></tr>
{% for v, e in g.variants.items() %}<tr><td>{{ v }}</td><td>{{ e.n }}</td><td>{{ "%.4f"|format(e.acc) }}</td></tr>{% endfor %}
</table></div>{% endfor %}
{% if results.sensitivity %}
<h2 id="where-it-breaks">Where it breaks: calibration sensitivity by unit</h2>
<p class="muted">Each unit quantized alone with the recipe (everything else float) on a ranking split of the items;
paired change against the reference with {{ level }}% intervals. Units ranked by ΔNLL. A <code>mixed</code> recipe
protects the most harmful ones within a bits-per-weight budget; evaluate it on items apart from the ranking split.</p>
{% for run in results.sensitivity %}
<h3>{{ run.recipe }} on {{ run.model }}, one {{ run.unit }} at a time ({{ run.units }} units)</h3>
{% for tname, t in run.tasks.items() %}
<p>{{ tname }} ({{ t.n }} items): the full recipe ΔNLL {{ fmt_interval(t.full_recipe.nll, true) }}, ΔECE {{ fmt_interval(t.full_recipe.ece, true) }}{% if t.family_share_nll %}; share of the summed ΔNLL harm: {% for k, v in t.family_share_nll.items() %}{{ k }} {{ "%.0f"|format(100 * v) }}%{% if not loop.last %}, {% endif %}{% endfor %}{% endif %}.</p>
<div class="scroll"><table><tr><th>most harmful units</th><th>ΔNLL</th><th>ΔECE</th><th>Δacc</th><th>mean JS</th></tr>
{% for u in t.top %}<tr><td>{{ u.unit }}</td><td>{{ fmt_interval(u.nll, true) }}</td><td>{{ fmt_interval(u.ece, true) }}</td><td>{{ fmt_interval(u.acc, true) }}</td><td>{{ "%.4f"|format(u.mean_js) }}</td></tr>{% endfor %}
</table></div>{% endfor %}
{% if run.combined %}<p>Over the {{ run.tasks|length }} tasks (each unit's ΔNLL as a share of the full recipe's on that task, averaged: what a <code>mixed</code> recipe ranked on this run protects first): {% for c in run.combined %}{{ c.unit }} ({{ "%.1f"|format(100 * c.share) }}%){% if not loop.last %}, {% endif %}{% endfor %}</p>{% endif %}
{% for fig in sensitivity_figures[loop.index0] %}<figure><img alt="{{ fig.title }}" src="data:image/png;base64,{{ fig.data }}"><figcaption class="muted">{{ fig.title }}</figcaption></figure>{% endfor %}
{% endfor %}{% endif %}
<h2 id="glossary">Glossary</h2>
<dl class="glossary">{% for m in metrics %}<dt>{{ m }} {{ arrows[m] }}</dt><dd>{{ glossary[m] }}</dd>{% endfor %}</dl>
<p class="muted">Every number on this page is in results.json beside it; per-item records are in items.parquet.</p>
<script type="application/json" id="items-data">{{ items_json|safe }}</script>
<script id="explorer-script">{{ explorer_script|safe }}</script>
</body></html>
"""


def render(results: dict[str, Any], figures: dict[str, list[Figure]], meta: dict[str, Any]) -> str:
    settings = results["settings"]
    metrics = settings["metrics"]
    tasks = []
    for name, by_norm in results["tasks"].items():
        norms = list(by_norm)
        primary = by_norm[norms[0]]
        tasks.append({
            "name": name, "primary": norms[0], "deployment": primary["deployment"], "groups": _group_rows(primary["deployment"]),
            "has_paired": bool(primary["paired"]),
            "blocks": [{"norm": n, "metric_rows": metric_rows(b, metrics), "diff_rows": _diff_cells(b, metrics)}
                       for n, b in by_norm.items()],
            "figures": [{"title": f.title, "data": base64.b64encode(f.png.read_bytes()).decode()} for f in figures.get(name, [])],
            "analysis": [{"name": v, "a": p["analysis"], "largest": p.get("largest_changes", [])} for v, p in primary["paired"].items()],
            "recalibration": [(v, b["recalibration"]) for v, b in primary["variants"].items() if "recalibration" in b],
            "method_effects": primary.get("method_effects", {}),
        })
    items = meta.get("items", {})
    for slot, name in enumerate(results["tasks"], start=1):
        if name in items:
            items[name]["slot"] = slot
    runs = [{"variant": r["variant"], "task": r["task"], "status": r["status"], "n": r.get("n", ""),
             "what": _what(r["config"])} for r in results["runs"]]
    overview = overview_grid(results) if len(results["tasks"]) > 1 else None
    env = Environment(autoescape=True)
    env.globals["fmt_interval"] = fmt_interval
    env.globals["arrows"] = {m: "↑" if get_metric(m).higher_is_better else "↓" for m in metrics}
    env.globals["arrows"].update({m: "↑" if e.higher_is_better else "↓" for m, e in METRICS.items() if m not in metrics})
    env.globals["glossary"] = {m: get_metric(m).doc for m in metrics}
    return env.from_string(TEMPLATE).render(
        title=meta.get("title", "quantcal study"), results={**results, "runs": runs}, settings=settings, metrics=metrics,
        level=int(round(settings["level"] * 100)), n_variants=max(0, len({r["variant"] for r in runs}) - 1),
        tasks=tasks, overview=overview, failures=meta.get("failures", []), environment=meta.get("environment", {}), written=meta.get("written", ""),
        items_json=embed(items), explorer_script=EXPLORER_SCRIPT, links=meta.get("links", []),
        sensitivity_figures=[[{"title": f.title, "data": base64.b64encode(f.png.read_bytes()).decode()}]
                             for f in meta.get("sensitivity_figures", [])])


def overview_grid(results: dict[str, Any]) -> dict[str, Any]:
    """The multi-task headline: a row per variant, a column per task, in each cell Δacc (points) and ΔECE from the
    task's first normalization, each with its verdict (better / worse / none) and its interval as a tooltip."""
    tasks = list(results["tasks"])
    blocks = {t: next(iter(results["tasks"][t].values())) for t in tasks}
    variants = list(dict.fromkeys(v for b in blocks.values() for v in b["paired"]))

    def part(metric: str, label: str, interval: dict[str, Any] | None) -> dict[str, str]:
        if not interval or interval.get("estimate") is None:
            return {"text": f"{label} —", "verdict": "", "title": "not measured"}
        scale, digits = (100, 1) if metric == "acc" else (1, 3)
        v = verdict(interval, get_metric(metric).higher_is_better)
        dagger = "†" if v != "same" and interval.get("significant_adjusted") is False else ""
        title = (f"{label} {scale * interval['estimate']:+.{digits}f} [{scale * interval['low']:+.{digits}f}, "
                 f"{scale * interval['high']:+.{digits}f}]" + (f"; BH-adjusted p {interval['p_adjusted']:.3g}"
                                                                if interval.get("p_adjusted") is not None else ""))
        return {"text": f"{label} {scale * interval['estimate']:+.{digits}f}{dagger}",
                "verdict": "" if v == "same" else v, "title": title}
    rows = []
    for v in variants:
        cells = []
        for t in tasks:
            diff = blocks[t]["paired"].get(v, {}).get("difference", {})
            cells.append([part("acc", "Δacc", diff.get("acc")), part("ece", "ΔECE", diff.get("ece"))]
                         if diff else [{"text": "—", "verdict": "", "title": "not scored on this task"}])
        rows.append({"variant": v, "cells": cells})
    return {"tasks": tasks, "rows": rows}


def _diff_cells(block: dict[str, Any], metrics: list[str]) -> list[list[tuple[str, str]]]:
    """Difference rows as (text, "better" | "worse" | "") by the metric's direction and its interval."""
    rows = []
    for row, (name, paired) in zip(diff_rows(block, metrics), block["paired"].items()):
        cells = [(row[0][0], ""), (row[1][0], "")]
        for (text, _), m in zip(row[2:], metrics):
            v = verdict(paired["difference"][m], get_metric(m).higher_is_better)
            cells.append((text, "" if v == "same" else v))
        rows.append(cells)
    return rows


GROUP_LABELS = {"better": "better", "same": "no evidence of a difference", "worse": "worse"}


def _group_rows(deployment: dict[str, Any]) -> list[tuple[str, str, str]]:
    by = {key: {g["verdict"]: ", ".join(g["variants"]) for g in deployment.get(key, [])}
          for key in ("accuracy_groups", "calibration_groups")}
    return [(label, by["accuracy_groups"].get(v, "—"), by["calibration_groups"].get(v, "—"))
            for v, label in GROUP_LABELS.items()]


def _what(config: dict[str, Any]) -> str:
    """A run's model in words: base, adapter form, recipe and its execution mode."""
    parts = [(config.get("model") or {}).get("spec", "")]
    if config.get("adapter"):
        parts.append(f"+ adapter ({config.get('deploy')})")
    if config.get("recipe"):
        mode = "native" if "mode=native" in config["recipe"] else "simulated"  # the key omits the default mode
        parts.append(f"+ {config['recipe']} ({mode})")
    return " ".join(p for p in parts if p)
