"""The report's derived views cannot mislead: ties are grouped, not ranked; a temperature at its bound is flagged;
coinciding quantile bins are merged; the findings block says what changed, in which direction, and its caveats."""

from __future__ import annotations

import numpy as np

from quantcal.analysis import recalibrated_difference, recalibration_report, stratify
from quantcal.metrics import paired_bootstrap
from quantcal.analysis.predictions import softmax_rows
from quantcal.report.collect import deployment_view, recalibrated_ranking
from quantcal.report.findings import block_findings, caveats, phrase


def _iv(estimate: float, low: float, high: float) -> dict[str, float]:
    return {"estimate": estimate, "low": low, "high": high, "level": 0.95, "n_resamples": 100}


def _block() -> dict:
    variants = {name: {"metrics": {"acc": _iv(a, a - .01, a + .01), "ece": _iv(e, e - .01, e + .01)}}
                for name, a, e in (("reference", .65, .10), ("w8", .65, .10), ("w4", .651, .12), ("w2", .40, .30),
                                   ("lucky", .70, .05))}
    paired = {"w8": {"difference": {"acc": _iv(0.0, -.01, .01), "ece": _iv(0.0, -.01, .01)}},
              "w4": {"difference": {"acc": _iv(.001, -.02, .03), "ece": _iv(.02, .005, .04)}},
              "w2": {"difference": {"acc": _iv(-.25, -.3, -.2), "ece": _iv(.2, .15, .25)}},
              "lucky": {"difference": {"acc": _iv(.05, .01, .09), "ece": _iv(-.05, -.08, -.02)}}}
    return {"variants": variants, "paired": paired}


def test_deployment_view_groups_variants_within_noise() -> None:
    b = _block()
    view = deployment_view(b["variants"], b["paired"], "reference")
    acc = {g["verdict"]: g["variants"] for g in view["accuracy_groups"]}
    cal = {g["verdict"]: g["variants"] for g in view["calibration_groups"]}
    assert acc == {"better": ["lucky"], "same": ["w4", "reference", "w8"], "worse": ["w2"]}  # ties share a group
    assert cal == {"better": ["lucky"], "same": ["reference", "w8"], "worse": ["w4", "w2"]}  # lower ECE is better
    assert "rank_by_accuracy" not in view


def test_findings_name_direction_size_and_the_indistinguishable() -> None:
    lines = block_findings(_block())
    assert "w2: accuracy -25.0 points [-30.0, -20.0] (worse); ece +0.200 [+0.150, +0.250] (worse)" in lines
    assert "lucky: accuracy +5.0 points [+1.0, +9.0] (better); ece -0.050 [-0.080, -0.020] (better)" in lines
    assert lines[-1].endswith(": w8") and "w4: ece +0.020" in " ".join(lines)
    assert phrase("brier", _iv(-.01, -.02, -.005)) == "brier -0.010 [-0.020, -0.0050] (better)"  # small: 2 digits


def test_caveats_for_a_quantized_reference_the_demo_task_saturation_and_bounds() -> None:
    results = {"reference": "reference",
               "runs": [{"variant": "reference", "config": {"model": {"kind": "bundled", "spec": "smollm2-135m-instruct"}}}],
               "tasks": {"arithmetic": {"none": {"variants": {"reference": {"saturated_share": 0.6},
                                                              "w2": {"recalibration": {"at_bound": True}}}}}}}
    text = " ".join(caveats(results))
    assert "smollm2-135m-instruct) is itself a quantized GGUF file" in text
    assert "generated offline demo task" in text and "60% of the reference's answers" in text
    assert "temperature scaling hit its bound for w2" in text


def test_temperature_at_its_bound_is_flagged() -> None:
    rng = np.random.default_rng(0)
    n = 400
    scores = np.zeros((n, 2))
    scores[np.arange(n), rng.integers(0, 2, n)] = 30.0  # confident, and right only by chance: no usable signal
    report = recalibration_report(scores, rng.integers(0, 2, n))
    assert report["at_bound"] and report["temperature"] > 99
    informative = rng.normal(0, 2, (n, 2))
    p1 = 1 / (1 + np.exp(informative[:, 0] - informative[:, 1]))
    labels = (rng.random(n) < p1).astype(int)  # drawn from the scores' own softmax: calibrated at T = 1
    fitted = recalibration_report(informative, labels)
    assert not fitted["at_bound"] and 0.5 < fitted["temperature"] < 2


def test_a_pure_temperature_change_is_all_recoverable_damage() -> None:
    """A variant whose scores are the reference's times 3 makes the same predictions, overconfident: its ECE damage
    before is real and after both are recalibrated it is gone (each fold's temperature scales by exactly 3)."""
    rng = np.random.default_rng(2)
    n = 600
    ref = rng.normal(0, 1.5, (n, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax_rows(ref)])  # calibrated at T = 1
    hot = 3.0 * ref
    before = paired_bootstrap("ece", softmax_rows(ref), softmax_rows(hot), labels, 200, 0)
    after = recalibrated_difference(ref, hot, labels, ("ece", "nll"), n_resamples=200)
    assert before.low > 0.05
    assert abs(after["ece"]["estimate"]) < 1e-4 and abs(after["nll"]["estimate"]) < 1e-5
    noisy = ref + rng.normal(0, 1.0, (n, 3))  # real damage: predictions change
    diff = recalibrated_difference(ref, noisy, labels, n_resamples=200)["ece"]["estimate"]
    own = [recalibration_report(s, labels, n_resamples=20)["after"]["ece"] for s in (ref, noisy)]
    assert diff == own[1] - own[0]  # the same folds as each variant's own recalibrated ECE in the table


def test_recalibrated_ranking_carries_the_damage_before_and_after() -> None:
    rec = {"before": {"ece": .1}, "after": {"ece": .05}, "recovered": {"ece": _iv(.05, .04, .06)},
           "temperature": 1.5, "at_bound": False}
    variants = {v: {"metrics": {"acc": _iv(.6, .5, .7)}, "recalibration": rec} for v in ("reference", "w4")}
    paired = {"w4": {"difference": {"ece": _iv(.02, .01, .03)}, "difference_recalibrated": {"ece": _iv(.0, -.01, .01)}}}
    rows = {r["variant"]: r for r in recalibrated_ranking(variants, {}, paired)}
    assert rows["w4"]["delta_before"]["estimate"] == .02 and rows["w4"]["delta_after"]["estimate"] == 0.0
    assert rows["reference"]["delta_before"] is None and rows["reference"]["delta_after"] is None


def test_coinciding_quantile_bins_are_merged_not_repeated() -> None:
    rng = np.random.default_rng(1)
    n = 500
    ref = np.tile([[0.0, 1.0]], (n, 1))  # most items at confidence 1.0
    ref[:100] = rng.dirichlet([2, 2], 100)
    var = np.clip(ref + rng.normal(0, .01, ref.shape), 0, None)
    var /= var.sum(1, keepdims=True)
    s = stratify(ref, var, rng.integers(0, 2, n), n_bins=5)
    ranges = [(b["ref_confidence_low"], b["ref_confidence_high"]) for b in s["bins"]]
    assert len(set(ranges)) == len(ranges) and s["merged_bins"] == 5 - len(ranges) > 0
    assert sum(b["n"] for b in s["bins"]) == n


def test_a_merged_sensitivity_run_shows_what_a_mixed_recipe_protects_first() -> None:
    """The report's "where it breaks" summary of a run over several tasks (the committed PIQA + hellaswag merge)
    names the units a mixed recipe ranked on it protects first, in the recipe's own order; one task shows none."""
    from pathlib import Path

    from quantcal.analysis.sensitivity import ranking_from_json, read_sensitivity
    from quantcal.report.collect import sensitivity_summary
    from quantcal.report.tables import sensitivity_markdown

    examples = Path(__file__).resolve().parent.parent / "examples" / "sensitivity"
    merged = sensitivity_summary(str(examples / "rtn3-linear-piqa800-hellaswag1000"))
    expected = ranking_from_json(read_sensitivity(examples / "rtn3-linear-piqa800-hellaswag1000" / "sensitivity.json"))
    assert [(c["unit"], c["share"]) for c in merged["combined"]] == expected[:5]
    assert merged["combined"][0]["unit"] == "L29.mlp"
    assert sensitivity_summary(str(examples / "rtn3-linear-piqa800"))["combined"] is None
    text = "\n".join(sensitivity_markdown(merged))
    assert "Over the 2 tasks" in text and "L29.mlp (13.0%), L0.mlp (9.2%)" in text
