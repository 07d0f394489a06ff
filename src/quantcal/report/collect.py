"""Every number of a study report, from its store: the single source for the HTML page, the tables and results.json.

Per task and length normalization: each variant's metrics with bootstrap intervals, reliability bins and
confidence histograms, recalibration before/after; per variant the paired difference to the reference (items
matched by id and content hash) with its interval, and the reference-vs-variant analysis; then a deployment
view ranking variants by accuracy and by calibration.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantcal.analysis import recalibrated_difference, recalibration_report
from quantcal.errors import QuantcalError
from quantcal.metrics import DEFAULT_METRICS, as_inputs, get_metric, reliability_bins
from quantcal.metrics.two_level import method_effect
from quantcal.analysis.predictions import choice_scores
from quantcal.report.findings import SATURATED, findings, saturated
from quantcal.store.database import Store
from quantcal.analysis.summary import align, comparison_report, run_metrics, run_predictions

HIST_EDGES = np.linspace(0, 1, 21)


@dataclass
class ReportSettings:
    reference: str
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    normalizations: list[str] = field(default_factory=lambda: ["none"])
    resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    recalibration: bool = True
    folds: int = 5
    confidence_bins: int = 5
    reliability_binning: str = "mass"  # reliability diagram bins: equal-mass ("mass") or equal-width ("width")
    reliability_n_bins: int = 10
    groups: dict[str, list[str]] = field(default_factory=dict)  # variants built several times: name -> builds
    sensitivity: list[str] = field(default_factory=list)  # sensitivity runs shown in "where it breaks"
    task_groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # lm-eval groups: name -> tasks, weighting
    #: the items a study's plan covers, per task (its `limit`/`skip`); a task not here: every item the store holds
    items: dict[str, list[str]] = field(default_factory=dict)


def _variant_block(store: Store, variant: str, task: str, norm: str, s: ReportSettings) -> dict[str, Any]:
    preds, scored = run_predictions(store, variant, task, norm, s.items.get(task))
    d = as_inputs(preds.probs, preds.labels)
    bins = reliability_bins(d, n_bins=s.reliability_n_bins, binning=s.reliability_binning)
    right = d.correct.astype(bool)
    block: dict[str, Any] = {
        "n": int(d.n),
        "saturated_share": float((d.confidence > SATURATED).mean()),
        "metrics": {k: v.to_json() for k, v in run_metrics(preds, s.metrics, s.resamples, s.seed, s.level).items()},
        "reliability": {"counts": bins.counts.astype(int).tolist(), "confidence": bins.confidence.tolist(),
                        "accuracy": bins.accuracy.tolist(), "binning": s.reliability_binning},
        "smooth_reliability": smooth_reliability(d.confidence, d.correct, s.seed),
        "confidence_histogram": {"edges": HIST_EDGES.tolist(),
                                 "correct": np.histogram(d.confidence[right], HIST_EDGES)[0].tolist(),
                                 "wrong": np.histogram(d.confidence[~right], HIST_EDGES)[0].tolist()},
    }
    if s.recalibration and d.n >= 2 * s.folds:
        block["recalibration"] = recalibration_report(choice_scores(scored, norm), preds.labels, k=s.folds, seed=s.seed,
                                                      n_resamples=s.resamples, level=s.level)
    return block


def smooth_reliability(confidence: np.ndarray, correct: np.ndarray, seed: int = 0, points: int = 50) -> dict[str, Any]:
    """relplot's kernel-smoothed reliability curve (Błasiok & Nakkiran 2023) with its bootstrap band, on ``points``
    of its mesh. relplot draws from numpy's global generator: it is seeded here and restored after."""
    import relplot

    state = np.random.get_state()
    try:
        np.random.seed(seed)
        with warnings.catch_warnings():  # relplot 1.0's own pandas deprecation warnings, once per bootstrap draw
            warnings.simplefilter("ignore")
            diagram = relplot.prepare_rel_diagram(confidence, correct.astype(int), num_bootstrap=50)
    finally:
        np.random.set_state(state)
    take = np.linspace(0, len(diagram["mesh"]) - 1, points).round().astype(int)
    out = {key: np.asarray(diagram[key])[take].tolist() for key in ("mesh", "mu", "lower", "upper")}
    out["range"] = [float(np.min(confidence)), float(np.max(confidence))]  # where there are items to smooth
    return out


def _paired(store: Store, variant: str, task: str, norm: str, s: ReportSettings) -> dict[str, Any]:
    a = align(store, s.reference, variant, task, norm, s.items.get(task))
    report = comparison_report(a, s.metrics, s.resamples, s.seed, s.confidence_bins, s.level)
    out = {"n": report["n"], "difference": report["paired_difference"], "analysis": report["analysis"],
           "largest_changes": largest_changes(store, a, s.reference, task)}
    if s.recalibration and "ece" in s.metrics and report["n"] >= 2 * s.folds:
        out["difference_recalibrated"] = recalibrated_difference(a.ref.scores, a.var.scores, a.ref.labels, ("ece",),
                                                                 s.folds, s.seed, s.resamples, s.level)
    return out


def largest_changes(store: Store, a: Any, reference: str, task: str, top: int = 5) -> list[dict[str, Any]]:
    """The items whose p(gold) moved most, with their text (for the reader to see what moved)."""
    ref, var = as_inputs(a.ref.probs, a.ref.labels), as_inputs(a.var.probs, a.var.labels)
    delta = var.p_gold - ref.p_gold
    order = np.argsort(-np.abs(delta), kind="stable")[:top]
    hashes = {it.item_id: it.item_hash for it in run_predictions(store, reference, task)[1]}
    texts = store.item_texts([hashes[a.ref.item_ids[i]] for i in order])
    rows = []
    for i in order:
        context, choices = texts.get(hashes[a.ref.item_ids[i]], ("", []))
        gold = int(a.ref.labels[i])
        rows.append({"item_id": a.ref.item_ids[i], "context": context[-400:], "gold_choice": choices[gold] if gold < len(choices) else "",
                     "p_gold_ref": float(ref.p_gold[i]), "p_gold_var": float(var.p_gold[i]), "delta": float(delta[i])})
    return rows


def verdict(interval: dict[str, Any] | None, higher_is_better: bool) -> str:
    """``better``, ``worse`` or ``same`` (no evidence of a difference: the interval includes 0) for a paired Δ."""
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return "same"
    if interval["low"] > 0 or interval["high"] < 0:
        return "better" if (interval["estimate"] > 0) == higher_is_better else "worse"
    return "same"


def _groups(variants: dict[str, Any], paired: dict[str, Any], reference: str, metric: str) -> list[dict[str, Any]]:
    """Variants grouped by their paired difference to the reference on ``metric``: better, indistinguishable (the
    reference among them), worse; within a group in order of the estimate, which is not a ranking (their
    differences to each other are not tested)."""
    higher = get_metric(metric).higher_is_better
    groups: dict[str, list[str]] = {"better": [], "same": [reference] if reference in variants else [], "worse": []}
    for name, p in paired.items():
        groups[verdict(p["difference"].get(metric), higher)].append(name)

    def est(v: str) -> float:
        value = variants[v]["metrics"].get(metric, {}).get("estimate")
        return float("nan") if value is None else float(value)
    return [{"verdict": k, "variants": sorted(vs, key=lambda v: -est(v) if higher else est(v))}
            for k, vs in groups.items() if vs]


def method_effects(store: Store, builds: list[str], task: str, norm: str, s: ReportSettings) -> dict[str, Any]:
    """A method built several times (calibration seeds): per-build paired differences to the reference on the items
    every build and the reference scored, their mean and spread, and the two-level interval
    (:mod:`quantcal.metrics.two_level`) for every metric that has a resampled form."""
    aligned = [align(store, s.reference, b, task, norm, s.items.get(task)) for b in builds]
    common = set.intersection(*(set(a.ref.item_ids) for a in aligned))
    if not common:
        raise QuantcalError(f"{task}: the builds {', '.join(builds)} share no items with the reference")

    def rows(p: Any) -> np.ndarray:
        keep = [i for i, item in enumerate(p.item_ids) if item in common]
        order = sorted(keep, key=lambda i: p.item_ids[i])
        return p.probs[order], p.labels[order]
    ref_probs, labels = rows(aligned[0].ref)
    build_probs = [rows(a.var)[0] for a in aligned]
    effects = {m: method_effect(m, ref_probs, build_probs, labels, s.resamples, s.seed, s.level).to_json()
               for m in s.metrics if get_metric(m).resampled is not None}
    return {"builds": builds, "n": len(common), "effects": effects}


def recalibrated_ranking(variants: dict[str, Any], bits: dict[str, float | None],
                         paired: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every variant with ECE before and after its own cross-fitted temperature (no prediction changes), the
    recovered part with its interval, its rank by ECE before and after, and its paired ΔECE to the reference before
    and after both are recalibrated (None for the reference): how much of each variant's calibration damage a single
    temperature buys back."""
    paired = paired or {}
    rows = [{"variant": v, "bits_per_weight": bits.get(v), "acc": b["metrics"].get("acc", {}).get("estimate"),
             "ece_before": b["recalibration"]["before"]["ece"], "ece_after": b["recalibration"]["after"]["ece"],
             "recovered": b["recalibration"]["recovered"]["ece"], "temperature": b["recalibration"]["temperature"],
             "at_bound": b["recalibration"]["at_bound"],
             "delta_before": paired.get(v, {}).get("difference", {}).get("ece"),
             "delta_after": paired.get(v, {}).get("difference_recalibrated", {}).get("ece")}
            for v, b in variants.items() if "ece" in b.get("recalibration", {}).get("before", {})]
    for key in ("ece_before", "ece_after"):
        for rank, row in enumerate(sorted(rows, key=lambda r: r[key]), start=1):
            row[f"rank_{key.split('_')[1]}"] = rank
    return sorted(rows, key=lambda r: r["rank_after"])


def deployment_view(variants: dict[str, Any], paired: dict[str, Any], reference: str,
                    bits: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Variants grouped by accuracy and by calibration against the reference (within-noise differences are not
    ranked); flag those that gain accuracy but lose calibration; rank them by ECE before and after temperature
    scaling."""
    cal = "ece" if all("ece" in variants[v]["metrics"] for v in variants) else None
    flags = []
    for v, p in paired.items():
        d_acc, d_ece = p["difference"].get("acc"), p["difference"].get("ece")
        if d_acc is None or d_ece is None:
            continue
        if d_acc["estimate"] > 0 and d_ece["estimate"] > 0:
            sure = d_acc["low"] > 0 and d_ece["low"] > 0
            flags.append({"variant": v, "delta_acc": d_acc, "delta_ece": d_ece, "both_intervals_exclude_zero": sure,
                          "message": f"{v} is more accurate than {reference} but worse calibrated"
                                     + (" (both changes outside their 95% intervals)" if sure else " (not both significant)")})
    has_acc = all("acc" in variants[v]["metrics"] for v in variants)
    return {"accuracy_groups": _groups(variants, paired, reference, "acc") if has_acc else [],
            "calibration_groups": _groups(variants, paired, reference, cal) if cal else [],
            "calibration_metric": cal, "flags": flags, "recalibrated": recalibrated_ranking(variants, bits or {}, paired)}


def run_bits_per_weight(config: dict[str, Any]) -> float | None:
    """Bits per weight of a run's variant over the block linears: a model without a recipe as it is stored (a GGUF
    file's own blocks, Q4_1 5.0; a checkpoint's declared float width, 16 or 32: :mod:`quantcal.sources.weight_bits`),
    the built variant's own count for a recipe (read from the variant cache, else from a grouped recipe's
    parameters; unquantized weights count as 16-bit, as every recipe's packed size does), None when unknown (an
    adapter, a hub model not in the local cache, a variant no longer in the cache whose recipe needs the model)."""
    from quantcal.recipes.build import cached_variant_meta, nominal_bits_per_weight
    from quantcal.sources.weight_bits import source_bits_per_weight

    if config.get("adapter"):
        return None
    recipe = config.get("recipe")
    if recipe and recipe.startswith("kv:"):  # a KV-cache format alone: the weights are the model's own
        recipe = None
    if not recipe:
        return source_bits_per_weight(config.get("model") or {})
    meta = cached_variant_meta(config.get("model") or {}, recipe.split("+kv:")[0])
    return float(meta["bits_per_weight"]) if meta else nominal_bits_per_weight(recipe.split("+kv:")[0])


def run_time_formats(config: dict[str, Any]) -> str | None:
    """What a variant quantizes at run time besides its weights, in a few characters: its activations (``A FP8``,
    ``A INT8``, ``A NVFP4``, ``A MXFP4``) and its KV cache (``KV FP8``); None when only weights are (the bits per
    weight say all). A size axis of weight bits alone would show an FP8-KV variant as the 16-bit model."""
    from quantcal.errors import QuantcalError
    from quantcal.recipes import parse_recipe

    recipe = config.get("recipe")
    if not recipe:
        return None
    try:
        spec = parse_recipe(recipe)
    except QuantcalError:
        return None
    parts = []
    acts = spec.params.get("acts")
    if spec.family in ("fp8", "w8a8", "nvfp4", "mxfp4") and acts not in (None, "none"):
        parts.append("A " + {"fp8": "FP8", "w8a8": "INT8"}.get(spec.family, spec.family.upper()))
    kv = spec if spec.family == "kv" else spec.kv
    if kv is not None:
        toward_zero = " toward zero" if kv.params.get("rounding", "nearest") != "nearest" else ""
        parts.append(f"KV {str(kv.params['type']).upper()}{toward_zero}")
    return " · ".join(parts) or None


def adapter_notes(runs: list[dict[str, Any]], reference: str) -> list[str]:
    """Study A's confound, stated wherever it applies: an adapter tuned on a small budget is compared with a
    reference that its publisher instruction-tuned at a much larger scale, so the difference is not quantization's
    alone."""
    ref_model = next(((r["config"].get("model") or {}).get("spec") for r in runs if r["variant"] == reference), None)
    notes, seen = [], set()
    for r in runs:
        info = r["config"].get("adapter_training")
        if r["variant"] in seen or r["variant"] == reference or not info:
            continue
        seen.add(r["variant"])
        budget = (f"{info['steps']} steps x {info['examples_per_step']} examples "
                  f"({info['n_train']} training examples from {info['data']})")
        notes.append(
            f"{r['variant']} is a {info['method']} adapter on {info['base']} trained for {budget}, served as "
            f"{r['config'].get('deploy')}. The reference ({ref_model or reference}) was instruction-tuned by its publisher, "
            "almost certainly on far more data: differences mix the effect of the 4-bit base with that of a different "
            "instruction-tuning scale (Study A's confound). A LoRA control on the float base with the same data and "
            "steps separates the two.")
    return notes


def collect(store: Store, settings: ReportSettings, say: Any = None) -> dict[str, Any]:
    runs = [r for r in store.current_runs() if store.done_item_ids(r.run_id)]
    if not runs:
        raise QuantcalError(f"{store.path}: no scored items to report on")
    tasks = list(dict.fromkeys(r.task for r in runs))
    def n_reported(r: Any) -> int:
        wanted = settings.items.get(r.task)
        return r.n_items if wanted is None else len(store.done_item_ids(r.run_id) & set(wanted))
    out: dict[str, Any] = {"reference": settings.reference, "tasks": {},
                           "settings": {k: v for k, v in settings.__dict__.items() if k != "items"},  # ids: planned_items.json
                           "runs": [{"variant": r.variant, "task": r.task, "status": r.status, "n": n_reported(r),
                                     "n_errors": r.n_errors, "seconds": r.seconds, "config": r.config} for r in runs]}
    out["notes"] = adapter_notes(out["runs"], settings.reference)
    out["scope"] = scope_notes(store, runs, settings.items)
    first_runs = {r["variant"]: r for r in reversed(out["runs"])}  # one count per variant (a GGUF file is read)
    bits = {v: run_bits_per_weight(r["config"]) for v, r in first_runs.items()}
    out["bits_per_weight"] = bits
    out["run_time_formats"] = {v: f for v, r in first_runs.items() if (f := run_time_formats(r["config"]))}
    for task in tasks:
        names = list(dict.fromkeys(r.variant for r in runs if r.task == task))
        if settings.reference in names:  # reference first
            names = [settings.reference] + [n for n in names if n != settings.reference]
        out["tasks"][task] = {}
        norms = list(settings.normalizations)
        for norm in norms:
            if say:
                say(f"metrics · {task} · normalization {norm}")
            variants = {v: _variant_block(store, v, task, norm, settings) for v in names}
            paired = {v: _paired(store, v, task, norm, settings) for v in names[1:]} if settings.reference in names else {}
            out["tasks"][task][norm] = {"variants": variants, "paired": paired,
                                        "deployment": deployment_view(variants, paired, settings.reference,
                                                                      {v: bits.get(v) for v in names})}
            groups = {g: [b for b in builds if b in variants] for g, builds in settings.groups.items()}
            out["tasks"][task][norm]["method_effects"] = {
                g: method_effects(store, builds, task, norm, settings)
                for g, builds in groups.items() if len(builds) > 1 and settings.reference in variants}
            if norm == "none" and "tokens" not in norms and saturated(variants, settings.reference):
                norms.append("tokens")  # the saturation caveat fires: its remedy beside it, from the stored scores
    out["groups"] = {name: group_lines(out["tasks"], g["tasks"], g["weight_by_size"])
                     for name, g in settings.task_groups.items()}
    out["sensitivity"] = [sensitivity_summary(path) for path in settings.sensitivity]
    out["multiple_comparisons"] = adjust_for_multiple_comparisons(out["tasks"], settings.level)
    out["findings"] = findings(out)
    return out


def adjust_for_multiple_comparisons(tasks: dict[str, Any], level: float = 0.95) -> dict[str, Any]:
    """Benjamini-Hochberg over every paired difference the report tests (each task's first normalization, every
    variant, every metric with a p-value): each difference gets ``p_adjusted`` and ``significant_adjusted``
    (in place), and the summary counts them. The false discovery rate is controlled at 1 - ``level``
    (scipy.stats.false_discovery_control; Benjamini & Hochberg 1995)."""
    from scipy.stats import false_discovery_control

    tested = [iv for by_norm in tasks.values() for p in next(iter(by_norm.values()))["paired"].values()
              for iv in p["difference"].values() if iv.get("p_value") is not None and np.isfinite(iv["p_value"])]
    alpha = 1 - level
    if tested:
        adjusted = false_discovery_control([iv["p_value"] for iv in tested], method="bh")
        for iv, q in zip(tested, adjusted):
            iv["p_adjusted"], iv["significant_adjusted"] = float(q), bool(q < alpha)
    unadjusted = sum(1 for iv in tested if iv["low"] > 0 or iv["high"] < 0)
    return {"family": len(tested), "method": "Benjamini-Hochberg", "false_discovery_rate": alpha,
            "significant_unadjusted": unadjusted, "significant_adjusted": sum(iv["significant_adjusted"] for iv in tested)}


def scope_notes(store: Store, runs: list[Any], items: dict[str, list[str]]) -> list[str]:
    """One line per task whose store holds more scored items than the study's plan covers (an earlier run with a
    larger ``limit``): the report covers the plan's items only, and says so."""
    notes = []
    for task, wanted in items.items():
        stored = set().union(*(store.done_item_ids(r.run_id) for r in runs if r.task == task))
        extra = len(stored - set(wanted))
        if extra:
            notes.append(f"{task}: this report covers the {len(wanted)} items of this run's plan (its `limit`/`skip`); "
                         f"the store also holds {extra} other scored items from earlier runs, left out "
                         f"(`quantcal report STORE --all-items` reports every stored item)")
    return notes


def group_lines(tasks: dict[str, Any], members: list[str], weight_by_size: bool) -> dict[str, Any]:
    """An lm-eval group's accuracy per variant (first normalization), aggregated from its tasks as the group declares
    (by size, or the plain mean), over the variants that scored every task."""
    from quantcal.tasks.lm_eval_tasks import GroupSpec, group_score

    blocks = [next(iter(tasks[m].values()))["variants"] for m in members if m in tasks]
    if len(blocks) != len(members):
        return {"tasks": members, "variants": {}}
    variants = [v for v in blocks[0] if all(v in b and "acc" in b[v]["metrics"] for b in blocks)]
    spec = GroupSpec("group", members, weight_by_size)
    lines = {v: {"acc": group_score(spec, {m: (b[v]["metrics"]["acc"]["estimate"], b[v]["n"]) for m, b in zip(members, blocks)}),
                 "n": sum(b[v]["n"] for b in blocks)} for v in variants}
    return {"tasks": members, "weight_by_size": weight_by_size, "variants": lines}


def sensitivity_summary(path: str, top: int = 5) -> dict[str, Any]:
    """A sensitivity run as the report shows it: per task the most harmful units (by ΔNLL, with ΔECE beside),
    the full recipe's change, and which family dominates (linear units); the run's whole JSON for the figure."""
    from quantcal.analysis.sensitivity import (rank_units, ranking_from_json, read_sensitivity, rows_from_json,
                                              sensitivity_file)

    data = read_sensitivity(path)
    tasks = {}
    for name, block in data["tasks"].items():
        ranked = rank_units([rows_from_json(block)], "nll")[:top]
        tasks[name] = {"n": block["n"], "full_recipe": block["full_recipe"],
                       "top": [{"unit": u, "nll": block["units"][u]["nll"], "ece": block["units"][u]["ece"],
                                "acc": block["units"][u]["acc"], "mean_js": block["units"][u]["mean_js"]}
                               for u, _ in ranked],
                       "family_share_nll": block.get("family_share_nll")}
    combined = None
    if len(tasks) > 1:  # what a mixed recipe ranked on this file protects first (its default combine=share)
        try:
            combined = [{"unit": u, "share": h} for u, h in ranking_from_json(data, "nll", "share")[:top]]
        except QuantcalError:  # the recipe did not raise some task's NLL: no share to rank by
            pass
    return {"path": str(sensitivity_file(path)), "recipe": data["recipe"], "unit": data["unit"],
            "model": data["model"].get("spec"), "units": len(data["units"]), "tasks": tasks, "combined": combined,
            "data": data}
