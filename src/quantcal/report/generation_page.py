"""The report's "Generated answers" page: a study's free-text tasks (:mod:`quantcal.study.generation_study`).

Per task: each model's exact-match accuracy and, per confidence measure, its calibration and ranking (ECE, ACE,
Brier, AUROC, AURC, accuracy of the 80% most confident, overconfidence) with bootstrap intervals; each variant against the reference on the same items (paired
differences with intervals, changed answers, right -> wrong and wrong -> right flips); which measure is best
calibrated for each model (:func:`best_measure`: among those that rank answers beyond chance) and which measures a variant damages (the interval of ΔECE above 0); and the answers that
changed; a reliability figure per confidence measure (a panel per model) and an explorer of every answer (question,
each model's filtered answer, correctness and confidences; the first 300 items). Written as ``generation.html``,
``figures/generation_*.svg|png``, ``generation.json`` (every number) and ``answers.parquet`` (every scored answer:
question, generation, filtered answer, correctness, ``conf_*``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from jinja2 import Environment

from quantcal.faults import write_text_atomic
from quantcal.report.write import _finite

#: The columns of a confidence measure's row, in order: (metric, label, scale, digits).
COLUMNS = (("ece", "ECE", 1, 3), ("ace", "ACE", 1, 3), ("brier", "Brier", 1, 3), ("auroc", "AUROC", 1, 3),
           ("aurc", "AURC", 1, 3), ("selective_acc", "acc. of top 80%", 100, 1),
           ("overconfidence_rate", "overconf.", 100, 1), ("mean_confidence", "mean conf.", 1, 3))
#: The paired table's columns (each a difference variant - reference): the first seven of :data:`COLUMNS`.
PAIRED = COLUMNS[:7]
MEASURES = {"conf_seq_prob": "sequence probability", "conf_mean_prob": "mean token probability",
            "conf_answer_prob": "answer-span probability", "conf_p_true": "P(True)",
            "conf_consistency": "sample consistency"}

TEMPLATE = """<!doctype html><html><head><meta charset="utf-8"><title>{{ heading }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 1rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .2rem .5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.worse { color: #a33; font-weight: 600; } .better { color: #1a5fb4; font-weight: 600; }
.muted { color: #666; font-size: .9rem; } .scroll { overflow-x: auto; }
td.text { text-align: left; max-width: 28rem; white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: .8rem; }
</style></head><body>
<h1>{{ heading }}</h1>
<p class="muted">Greedy answers to free-text tasks, scored as lm-eval scores them (its filters and exact match).
Confidence measures: {% for k, v in measures.items() %}<code>{{ k }}</code> ({{ v }}){% if not loop.last %}, {% endif %}{% endfor %}.
Intervals: {{ level }}% bootstrap over items; a paired difference is variant − reference on the same items,
<span class="worse">worse</span> or <span class="better">better</span> when its interval excludes 0.
ECE here is binary: the confidence that the answer is right against whether it is (15 equal-width bins).</p>
{% for t in tasks %}
<h2 id="task-{{ loop.index }}">{{ t.label }} <span class="muted">(filter {{ t.filter }}, {{ t.n }} items)</span></h2>
<ul>{% for line in t.findings %}<li>{{ line }}</li>{% endfor %}</ul>
<div class="scroll"><table><tr><th>model</th><th>measure</th><th>accuracy</th>{% for c in columns %}<th>{{ c[1] }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr><td>{{ row.model }}</td><td>{{ row.measure }}</td><td>{{ row.acc }}</td>{% for cell in row.cells %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}
</table></div>
{% if t.figures %}<h3>Reliability per measure</h3>
<p class="muted">Per model: the answers binned by confidence (15 equal-width bins; a bar from each bin's mean confidence to its accuracy), relplot's smoothed curve with its bootstrap band, the reference's curve in grey, and how many answers fall at each confidence.</p>
{% for f in t.figures %}<figure><img src="{{ f.src }}" alt="{{ f.title }}" style="max-width: 100%"><figcaption class="muted">{{ f.title }}</figcaption></figure>{% endfor %}{% endif %}
{% if t.paired %}<h3>Each variant against the reference</h3>
<div class="scroll"><table><tr><th>variant</th><th>measure</th><th>Δaccuracy (pts)</th>{% for c in paired_columns %}<th>Δ{{ c[1] }}</th>{% endfor %}<th>changed answers</th><th>right→wrong</th><th>wrong→right</th></tr>
{% for row in t.paired %}<tr><td>{{ row.variant }}</td><td>{{ row.measure }}</td>{% for cell in row.cells %}<td{% if cell[1] %} class="{{ cell[1] }}"{% endif %}>{{ cell[0] }}</td>{% endfor %}<td>{{ row.changed }}</td><td>{{ row.r2w }}</td><td>{{ row.w2r }}</td></tr>{% endfor %}
</table></div>{% endif %}
{% if t.changes %}<h3>Answers that changed (first {{ t.changes|length }})</h3>
<div class="scroll"><table><tr><th>item</th><th>variant</th><th>reference answer</th><th>variant answer</th><th>reference generation</th><th>variant generation</th></tr>
{% for c in t.changes %}<tr><td>{{ c.item }}</td><td>{{ c.variant }}</td><td>{{ c.ref }} {{ "✓" if c.ref_ok else "✗" }}</td><td>{{ c.var }} {{ "✓" if c.var_ok else "✗" }}</td><td class="text">{{ c.ref_text }}</td><td class="text">{{ c.var_text }}</td></tr>{% endfor %}
</table></div>{% endif %}
{% if t.explorer %}<details><summary><h3 style="display: inline">Every answer ({{ t.explorer|length }} items{% if t.explorer_cut %}, the first {{ t.explorer|length }} of {{ t.n }}{% endif %})</h3></summary>
<div class="scroll"><table><tr><th>item</th><th>question</th>{% for m in t.models %}<th>{{ m }}</th>{% endfor %}</tr>
{% for e in t.explorer %}<tr><td>{{ e.item }}</td><td class="text">{{ e.question }}</td>{% for a in e.answers %}<td class="text" title="{{ a.generation }}">{% if a %}{{ a.filtered }} {{ "✓" if a.correct else "✗" }}<br><span class="muted">{{ a.confidences }}</span>{% else %}—{% endif %}</td>{% endfor %}</tr>{% endfor %}
</table></div><p class="muted">Each cell: the filtered answer, right (✓) or wrong (✗), and its confidences ({{ t.measure_names }}); hover for the whole generation.</p></details>{% endif %}
{% endfor %}
<p class="muted">Every number: generation.json; every answer: answers.parquet.</p>
</body></html>"""


def _interval(i: dict[str, Any] | None, scale: float, digits: int, signed: bool = False) -> str:
    if not i or i.get("estimate") is None or not math.isfinite(i["estimate"]):
        return "—"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(scale * i['estimate'])} [{f.format(scale * i['low'])}, {f.format(scale * i['high'])}]"


def _verdict(i: dict[str, Any], higher_is_better: bool) -> str:
    if not i or i.get("low") is None or (i["low"] <= 0 <= i["high"]):
        return ""
    up = i["low"] > 0
    return "better" if up == higher_is_better else "worse"


HIGHER_IS_BETTER = {"acc": True, "ece": False, "ace": False, "brier": False, "auroc": True, "aurc": False,
                    "selective_acc": True, "overconfidence_rate": False}


#: Items shown in a task's explorer (every answer is in answers.parquet).
EXPLORER_ITEMS = 300


def page_data(results: dict[str, Any], rows: Sequence[dict[str, Any]], changes: int = 20,
              figures: dict[str, list[dict[str, str]]] | None = None,
              explorer_items: int = EXPLORER_ITEMS) -> list[dict[str, Any]]:
    """What the page shows per task (module doc), from :func:`quantcal.study.generation_study.generation_results`."""
    reference = results["reference"]
    out = []
    for label, block in results["tasks"].items():
        table, findings = [], []
        for model, v in block["variants"].items():
            findings.append(f"{model}: accuracy {100 * v['acc']:.1f}%; {best_measure(v['metrics'])}")
            for conf, metrics in v["metrics"].items():
                table.append({"model": model, "measure": conf, "acc": _interval(metrics["acc"], 100, 1),
                              "cells": [_interval(metrics.get(m), s, d) for m, _, s, d in COLUMNS]})
        paired = []
        for variant, found in block["paired"].items():
            damaged = [c for c, d in found["differences"].items() if _verdict(d["ece"], False) == "worse"]
            improved = [c for c, d in found["differences"].items() if _verdict(d["ece"], False) == "better"]
            moved = ([f"ECE worse beyond noise for {', '.join(damaged)}"] if damaged else []) + \
                ([f"ECE better beyond noise for {', '.join(improved)}"] if improved else [])
            findings.append(f"{variant} vs {reference}: {found['changed_answers']} of {found['n']} answers changed "
                            f"({found['right_to_wrong']} right → wrong, {found['wrong_to_right']} wrong → right); "
                            + ("; ".join(moved) or "no confidence measure's ECE changed beyond noise"))
            for conf, diff in found["differences"].items():
                cells = [(_interval(diff["acc"], 100, 1, True), _verdict(diff["acc"], True))]
                cells += [(_interval(diff.get(m), s, d, True), _verdict(diff.get(m), HIGHER_IS_BETTER[m]))
                          for m, _, s, d in PAIRED]
                paired.append({"variant": variant, "measure": conf, "cells": cells, "changed": found["changed_answers"],
                               "r2w": found["right_to_wrong"], "w2r": found["wrong_to_right"]})
        by_item = {(r["variant"], r["item_id"]): r for r in rows if r["task"] == label}
        changed = []
        for (model, item), r in by_item.items():
            ref = by_item.get((reference, item))
            if model != reference and ref is not None and r["filtered"] != ref["filtered"] and len(changed) < changes:
                changed.append({"item": item, "variant": model, "ref": ref["filtered"], "ref_ok": ref["correct"],
                                "var": r["filtered"], "var_ok": r["correct"], "ref_text": ref["generation"][:400],
                                "var_text": r["generation"][:400]})
        n = next(iter(block["variants"].values()))["n"] if block["variants"] else 0
        models = list(block["variants"])
        measures = list(next(iter(block["variants"].values()))["metrics"]) if models else []
        items = list(dict.fromkeys(item for (_, item) in by_item))
        explorer = []
        for item in items[:explorer_items]:
            first = next(by_item[(m, item)] for m in models if (m, item) in by_item)
            cells = []
            for m in models:
                r = by_item.get((m, item))
                cells.append(None if r is None else {
                    "filtered": r["filtered"], "correct": r["correct"], "generation": r["generation"][:600],
                    "confidences": " / ".join(_number(r.get(c)) for c in measures)})
            explorer.append({"item": item, "question": str(first.get("question", ""))[:400], "answers": cells})
        out.append({"label": label, "filter": block.get("filter", ""), "n": n, "rows": table, "paired": paired,
                    "findings": findings, "changes": changed, "models": models, "explorer": explorer,
                    "explorer_cut": len(items) > explorer_items,
                    "measure_names": " / ".join(c.removeprefix("conf_") for c in measures),
                    "figures": (figures or {}).get(label, [])})
    return out


def best_measure(metrics: dict[str, dict[str, Any]]) -> str:
    """Which confidence measure to trust, in words: the lowest ECE among the measures that rank right answers above
    wrong ones beyond chance (AUROC's interval above 0.5). ECE alone would crown a measure that says the same for
    every answer (a constant at the accuracy has ECE 0 and AUROC 0.5) or ranks them backwards."""
    def ece(c: str) -> float:
        return float(metrics[c]["ece"]["estimate"])

    def auroc(c: str) -> str:
        return _interval(metrics[c].get("auroc"), 1, 2)

    ranking = [c for c in metrics if (metrics[c].get("auroc") or {}).get("low") is not None
               and math.isfinite(metrics[c]["auroc"]["low"]) and metrics[c]["auroc"]["low"] > 0.5]
    if ranking:
        best = min(ranking, key=ece)
        return (f"best calibrated measure {best} (ECE {ece(best):.3f}; AUROC {auroc(best)}), the lowest ECE among "
                f"the measures that rank right answers above wrong ones beyond chance ({', '.join(ranking)})")
    lowest = min(metrics, key=ece)
    estimates = [(metrics[c].get("auroc") or {}).get("estimate") for c in metrics]
    if all(e is None or not math.isfinite(e) for e in estimates):  # one outcome only: AUROC is undefined
        return (f"its answers are all right or all wrong, so no measure can rank them; lowest ECE: {lowest} "
                f"({ece(lowest):.3f})")
    return (f"no confidence measure ranks right answers above wrong ones beyond chance (every AUROC interval reaches "
            f"0.5), so none tells right answers from wrong ones here; lowest ECE: {lowest} ({ece(lowest):.3f}; AUROC "
            f"{auroc(lowest)})")


def _number(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{float(x):.2f}"


def reliability_figures(results: dict[str, Any], rows: Sequence[dict[str, Any]], folder: Path) -> dict[str, list[dict[str, str]]]:
    """Per task, one figure per confidence measure with a reliability panel per model
    (:func:`quantcal.report.figures.reliability`), drawn from the scored answers; ``src`` relative to the page."""
    import numpy as np

    from quantcal.metrics.answer_confidence import reliability
    from quantcal.report.collect import HIST_EDGES, smooth_reliability
    from quantcal.report.figures import reliability as draw

    out: dict[str, list[dict[str, str]]] = {}
    for t, (label, block) in enumerate(results["tasks"].items(), start=1):
        figures = []
        for measure in next(iter(block["variants"].values()))["metrics"] if block["variants"] else []:
            panels: dict[str, Any] = {}
            for model, v in block["variants"].items():
                answered = [r for r in rows if r["task"] == label and r["variant"] == model
                            and r.get(measure) is not None and math.isfinite(float(r[measure]))]
                if not answered:
                    continue
                c = np.array([float(r[measure]) for r in answered])
                y = np.array([bool(r["correct"]) for r in answered])
                try:  # relplot needs both outcomes and some spread; without them the binned points stand alone
                    smooth = smooth_reliability(c, y) if 0 < y.sum() < y.size else None
                except Exception:  # noqa: BLE001 - a figure's smoothing is optional
                    smooth = None
                panels[model] = {"reliability": {**reliability(c, y), "binning": "width"}, "smooth_reliability": smooth,
                                 "confidence_histogram": {"edges": HIST_EDGES.tolist(),
                                                          "correct": np.histogram(c[y], HIST_EDGES)[0].tolist(),
                                                          "wrong": np.histogram(c[~y], HIST_EDGES)[0].tolist()},
                                 "metrics": {"ece": v["metrics"][measure]["ece"]}}
            if not panels:
                continue
            name = MEASURES.get(measure, measure)
            fig = draw({"variants": panels}, results["reference"], f"{label} · {name}", folder,
                       f"generation_{t}_{measure}")
            figures.append({"src": f"{folder.name}/{fig.svg.name}", "title": f"{label}: {name} ({measure})"})
        out[label] = figures
    return out


def write_generation_page(out_dir: Path, results: dict[str, Any], rows: Sequence[dict[str, Any]],
                          title: str, name: str = "generation.html") -> list[Path]:
    """Write the page, its JSON and the answers' table into ``out_dir``; returns the files."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = reliability_figures(results, rows, out_dir / "figures")
    html = Environment(autoescape=True).from_string(TEMPLATE).render(
        heading=title if "generated answers" in title.lower() else f"{title}: generated answers",
        tasks=page_data(results, rows, figures=figures), columns=COLUMNS, paired_columns=PAIRED, measures=MEASURES,
        level=int(round(results["level"] * 100)))
    page, data, table = out_dir / name, out_dir / "generation.json", out_dir / "answers.parquet"
    write_text_atomic(page, html)
    write_text_atomic(data, json.dumps(_finite(results), indent=2))
    frame = pd.DataFrame(list(rows))
    scratch = table.with_suffix(".parquet.tmp")
    frame.to_parquet(scratch, index=False)
    scratch.replace(table)
    return [page, data, table]
