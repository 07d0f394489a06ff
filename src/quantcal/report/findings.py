"""What a study found, in sentences written from its numbers: the headline of the report, tables.md and the terminal.

Per task and length normalization, each variant whose paired difference to the reference has an interval that
excludes 0, with direction (better / worse, from the metric's registry entry) and size; the variants that differ
on no metric are named as indistinguishable. Then the caveats that apply to the whole study: a reference that is
itself a quantized file, the offline demo task, saturated confidences, temperatures fitted at their bound.
"""

from __future__ import annotations

import math
from typing import Any

from quantcal.metrics import get_metric

#: A confidence above this is "saturated" (the softmax over whole-answer log-likelihoods is nearly one-hot).
SATURATED = 0.999
#: Share of the reference's answers above SATURATED at which the caveat is stated.
SATURATED_SHARE = 0.25


def phrase(metric: str, interval: dict[str, float]) -> str:
    """``accuracy −20.5 points [−28.0, −13.0] (worse)`` or ``ece +0.172 [+0.094, +0.236] (worse)``."""
    higher = get_metric(metric).higher_is_better
    better = (interval["estimate"] > 0) == higher
    if metric == "acc":
        text = (f"accuracy {100 * interval['estimate']:+.1f} points "
                f"[{100 * interval['low']:+.1f}, {100 * interval['high']:+.1f}]")
    else:
        text = f"{metric} {_num(interval['estimate'])} [{_num(interval['low'])}, {_num(interval['high'])}]"
    return f"{text} ({'better' if better else 'worse'})"


def _num(x: float) -> str:
    """Three decimals, or two significant digits for a small non-zero value (so it never reads as +0.000)."""
    if x == 0 or abs(x) >= 0.01:
        return f"{x:+.3f}"
    return f"{x:+.{1 - math.floor(math.log10(abs(x)))}f}"


def _excludes_zero(interval: dict[str, Any] | None) -> bool:
    return bool(interval and interval.get("low") is not None and (interval["low"] > 0 or interval["high"] < 0))


def _adjusted_note(interval: dict[str, Any]) -> str:
    """`` (not after BH)`` for a change whose interval excludes 0 but that the multiple-comparison adjustment does
    not keep; nothing when it is kept or was not in the adjusted family."""
    return " (not after BH)" if interval.get("significant_adjusted") is False else ""


def block_findings(block: dict[str, Any]) -> list[str]:
    """The sentences for one task and normalization."""
    lines, same = [], []
    for variant, paired in block["paired"].items():
        changes = [phrase(m, iv) + _adjusted_note(iv) for m, iv in paired["difference"].items() if _excludes_zero(iv)]
        if changes:
            lines.append(f"{variant}: " + "; ".join(changes))
        else:
            same.append(variant)
    if same:
        lines.append(f"indistinguishable from the reference on every metric (all intervals include 0): {', '.join(same)}")
    for group, m in block.get("method_effects", {}).items():
        parts = []
        for metric in ("acc", "ece", "ace"):
            e = m["effects"].get(metric)
            if e is None:
                continue
            scale, unit = (100, " points") if metric == "acc" else (1, "")
            iv = e["interval"]
            parts.append(f"{'accuracy' if metric == 'acc' else metric} {scale * e['mean']:+.3g}{unit} "
                         f"(sd {scale * e['sd']:.2g} between builds; interval [{scale * iv['low']:+.3g}, "
                         f"{scale * iv['high']:+.3g}]; sign {'the same' if e['sign_consistent'] else 'differs'} across builds)")
        lines.append(f"{group}, the method over {len(m['builds'])} builds: " + "; ".join(parts))
    return lines


def saturated(variants: dict[str, Any], reference: str) -> bool:
    """Whether the reference's confidences under normalization none are saturated enough for the caveat."""
    share = variants.get(reference, {}).get("saturated_share")
    return share is not None and share >= SATURATED_SHARE


def caveats(results: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the headline, from the runs and the numbers."""
    out = []
    reference = results["reference"]
    ref_models = {(r["config"].get("model") or {}).get("kind"): (r["config"].get("model") or {}).get("spec")
                  for r in results["runs"] if r["variant"] == reference}
    for kind in ("bundled", "gguf"):
        if kind in ref_models:
            out.append(f"The reference ({ref_models[kind]}) is itself a quantized GGUF file, dequantized to float: "
                       "differences are to that model, not to the original float weights.")
    if "arithmetic" in results["tasks"]:
        out.append("arithmetic is quantcal's generated offline demo task (two-digit sums, products and differences; "
                   "questions can repeat), not a benchmark.")
    for task, by_norm in results["tasks"].items():
        block = by_norm.get("none")
        if block and saturated(block["variants"], reference):
            share = block["variants"][reference]["saturated_share"]
            shown = [n for n in by_norm if n != "none"]
            out.append(f"{task}: {100 * share:.0f}% of the reference's answers have confidence above {SATURATED} "
                       "under normalization none (whole-answer log-likelihoods make the softmax nearly one-hot); "
                       "calibration numbers are dominated by them: "
                       + (f"compare with normalization {' and '.join(shown)}, shown beside it." if shown else
                          "compare with normalization tokens or chars."))
        for norm, b in by_norm.items():
            bound = [v for v, vb in b["variants"].items() if vb.get("recalibration", {}).get("at_bound")]
            if bound:
                out.append(f"{task} ({norm}): temperature scaling hit its bound for {', '.join(bound)}: the fit "
                           "flattens those models to near-uniform probabilities, so their 'after' numbers are not a "
                           "recovery of calibration.")
    return out


def definitions(metrics: list[str], level: float = 0.95) -> list[str]:
    """The settings behind the headline numbers, one line each, from the metric registry's defaults: the binning and
    bin count of ECE / ACE / SCE, tau of the overconfidence rate, and what the bootstrap intervals are (the basic
    interval where it applies, which is why such an interval can sit off-centre around its estimate)."""
    lines = []
    for name in metrics:
        d = get_metric(name).defaults
        if name == "ece":
            lines.append(f"ECE: top-label confidence in {d['n_bins']} {'equal-width' if d['binning'] == 'width' else 'equal-mass'} bins")
        elif name == "ace":
            lines.append(f"ACE: every class's probability in {d['n_ranges']} equal-mass ranges")
        elif name == "sce":
            lines.append(f"SCE: every class's probability in {d['n_bins']} equal-width bins")
        elif name == "overconfidence_rate":
            lines.append(f"overconfidence rate: share of items answered wrongly with confidence at least tau = {d['tau']}")
    basic = [m for m in metrics if get_metric(m).interval == "basic"]
    lines.append(f"intervals: {100 * level:g}% bootstrap over items (percentile)"
                 + (f"; for {', '.join(basic)} the basic interval (2 x estimate minus the resampled quantiles), which "
                    "corrects their upward bias under resampling, so it can sit off-centre around its estimate" if basic else ""))
    return lines


def findings(results: dict[str, Any]) -> dict[str, Any]:
    """``{"blocks": [{task, normalization, lines}], "caveats": [...], "definitions": [...]}`` for a study's results."""
    blocks = [{"task": task, "normalization": norm, "lines": block_findings(block)}
              for task, by_norm in results["tasks"].items() for norm, block in by_norm.items() if block["paired"]]
    settings = results.get("settings") or {}
    out = {"blocks": blocks, "caveats": caveats(results),
           "definitions": definitions(list(settings.get("metrics", [])), settings.get("level", 0.95))}
    mc = results.get("multiple_comparisons") or {}
    if mc.get("family"):
        out["multiple_comparisons"] = (
            f"{mc['family']} paired differences are tested in this report: {mc['significant_unadjusted']} intervals "
            f"exclude 0 unadjusted, {mc['significant_adjusted']} remain after the Benjamini-Hochberg adjustment "
            f"(false discovery rate {mc['false_discovery_rate']:.0%}); a change marked \"not after BH\" may be one "
            "of the chance findings so many intervals produce.")
    return out
