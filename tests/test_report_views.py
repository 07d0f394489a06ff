"""The report's derived views cannot mislead: ties are grouped, not ranked; a temperature at its bound is flagged;
coinciding quantile bins are merged; the findings block says what changed, in which direction, and its caveats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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


def test_a_saturated_reference_gets_normalization_tokens_beside_none(tmp_path) -> None:
    """Issue 34 item 8: when the saturation caveat fires under `none`, the report adds `tokens` (from the stored
    scores, nothing rescored), the caveat points at it, and each findings block names its normalization."""
    import numpy as np

    from quantcal.report.collect import ReportSettings, collect
    from quantcal.store.database import open_store
    from quantcal.tasks.items import Item

    rng = np.random.default_rng(0)
    items = [Item(f"q{i}", "q", ("x", "y"), i % 2) for i in range(40)]

    def rows(shift: float) -> list:
        out = []
        for i, it in enumerate(items):
            gap = rng.normal(30.0 if i % 5 else -30.0, 5.0) + shift  # 20-token answers, about 1.5 nats per token apart
            gold, other = -40.0, -40.0 - gap
            logliks = [gold, other] if it.gold == 0 else [other, gold]
            out.append((i, it, logliks, [20, 20], [False, False]))
        return out
    with open_store(tmp_path / "s.sqlite") as db:
        db.write_scores(db.get_or_create_run("reference", "t", "h0", {}, {}), rows(0.0))
        db.write_scores(db.get_or_create_run("v", "t", "h1", {"recipe": "rtn:bits=4"}, {}), rows(-20.0))
        report = collect(db, ReportSettings("reference", resamples=50, recalibration=False))
        plain = ReportSettings("reference", resamples=50, recalibration=False, normalizations=["none", "chars"])
        asked = collect(db, plain)
    assert list(report["tasks"]["t"]) == ["none", "tokens"]
    assert report["tasks"]["t"]["none"]["variants"]["reference"]["saturated_share"] > 0.25
    assert report["tasks"]["t"]["tokens"]["variants"]["reference"]["saturated_share"] < 0.25
    caveat = next(c for c in report["findings"]["caveats"] if "above 0.999" in c)
    assert "compare with normalization tokens, shown beside it" in caveat
    assert [b["normalization"] for b in report["findings"]["blocks"]] == ["none", "tokens"]
    assert list(asked["tasks"]["t"]) == ["none", "chars", "tokens"]  # the user's choice kept, tokens added


def test_the_findings_legend_pins_down_binning_tau_and_the_basic_bootstrap() -> None:
    """Issue 34 item 7: the settings behind the headline numbers, read from the metric registry (a changed default
    changes the legend)."""
    from quantcal.metrics import get_metric
    from quantcal.report.findings import definitions

    lines = definitions(["acc", "ece", "ace", "brier", "overconfidence_rate"], 0.9)
    text = " | ".join(lines)
    n_bins = get_metric("ece").defaults["n_bins"]
    assert f"ECE: top-label confidence in {n_bins} equal-width bins" in text
    assert f"{get_metric('ace').defaults['n_ranges']} equal-mass ranges" in text
    assert f"tau = {get_metric('overconfidence_rate').defaults['tau']}" in text
    assert lines[-1].startswith("intervals: 90% bootstrap") and "for ece, ace the basic interval" in lines[-1]
    assert definitions(["acc", "brier"])[-1] == "intervals: 95% bootstrap over items (percentile)"


def test_the_size_axis_counts_the_reference_as_stored(tiny_llama) -> None:
    """Issue 34 item 5: a GGUF reference at its blocks' own bits (SmolLM2's Q4_1: 4-bit codes plus a float16 scale
    and minimum per 32 weights), a float checkpoint at its declared width; never the 16 of the float copy."""
    import gguf

    from quantcal.sources.models import bundled_gguf_path
    from quantcal.sources.weight_bits import source_bits_per_weight

    path = bundled_gguf_path("smollm2-135m-instruct")
    kinds = {t.tensor_type for t in gguf.GGUFReader(path).tensors if t.name.startswith("blk.") and len(t.shape) >= 2}
    assert kinds == {gguf.GGMLQuantizationType.Q4_1}
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_1]
    assert source_bits_per_weight({"kind": "bundled", "spec": "smollm2-135m-instruct"}) == 8 * type_size / block == 5.0
    assert source_bits_per_weight({"kind": "local", "spec": str(tiny_llama)}) == 32.0  # saved in float32
    assert source_bits_per_weight({"kind": "gguf", "spec": "/no/such.gguf"}) is None


def test_variant_colours_never_reuse_better_and_worse_and_curves_stay_over_their_items() -> None:
    import matplotlib.colors as mcolors
    import numpy as np

    from quantcal.report.figures import colours, covered

    names = [f"v{i}" for i in range(12)]
    used = set(colours(names).values())
    for semantic in ("tab:green", "tab:red", "green", "red"):
        assert all(np.abs(np.subtract(mcolors.to_rgb(c), mcolors.to_rgb(semantic))).sum() > 0.3 for c in used)
    assert colours(names)["v0"] == "black"
    mesh = np.linspace(0, 1, 50)
    curve = {"mesh": mesh.tolist(), "mu": mesh.tolist(), "lower": mesh.tolist(), "upper": mesh.tolist(), "range": [0.45, 0.9]}
    kept = covered(curve)
    assert kept["mesh"].min() >= 0.45 and kept["mesh"].max() <= 0.9 and len(kept["mesh"]) > 10
    assert len(covered({**curve, "range": [0.7, 0.7]})["mesh"]) == 2  # one confidence: still a visible stub
    assert len(covered({k: v for k, v in curve.items() if k != "range"})["mesh"]) == 50  # older results: all


def test_paired_p_values_agree_with_their_intervals_and_bh_keeps_fewer() -> None:
    """Issue 34 item 6: a paired difference carries the bootstrap p-value that inverts its interval (p < 0.05 when
    the 95% interval excludes 0, up to the quantile's interpolation), and the report's Benjamini-Hochberg step over
    many comparisons keeps no more than the unadjusted intervals, in agreement with statsmodels-free scipy."""
    import numpy as np
    from scipy.stats import false_discovery_control

    from quantcal.metrics.bootstrap import paired_bootstrap
    from quantcal.report.collect import adjust_for_multiple_comparisons

    rng = np.random.default_rng(1)
    n = 200
    labels = rng.integers(0, 3, n)
    base = rng.dirichlet([1, 1, 1], n)
    tasks = {}
    for t in range(4):
        paired = {}
        for k, shift in enumerate((0.0, 0.02, 0.3)):
            other = np.clip(base + rng.normal(0, 0.05, base.shape) + shift * np.eye(3)[labels], 1e-4, None)
            other /= other.sum(1, keepdims=True)
            diffs = {m: paired_bootstrap(m, base, other, labels, 400, seed=t) for m in ("acc", "ece", "nll")}
            for iv in diffs.values():
                if iv.low > 0 or iv.high < 0:
                    assert iv.p_value < 0.06
                elif iv.low < 0 < iv.high:
                    assert iv.p_value > 0.04
            paired[f"v{k}"] = {"difference": {m: iv.to_json() for m, iv in diffs.items()}}
        tasks[f"t{t}"] = {"none": {"paired": paired}}
    summary = adjust_for_multiple_comparisons(tasks)
    assert summary["family"] == 4 * 3 * 3
    assert summary["significant_adjusted"] <= summary["significant_unadjusted"]
    flat = [iv for by in tasks.values() for p in by["none"]["paired"].values() for iv in p["difference"].values()]
    expected = false_discovery_control([iv["p_value"] for iv in flat], method="bh")
    assert [iv["p_adjusted"] for iv in flat] == pytest.approx(list(expected))
    assert all(iv["significant_adjusted"] == (iv["p_adjusted"] < 0.05) for iv in flat)
    assert summary["significant_adjusted"] >= 4  # the large shift is found on every task


def test_a_multi_task_report_leads_with_the_grid_a_table_of_contents_and_one_caveat_box() -> None:
    from quantcal.report.html import overview_grid

    def iv(e: float, lo: float, hi: float, adjusted: bool | None = None) -> dict:
        out = {"estimate": e, "low": lo, "high": hi}
        if adjusted is not None:
            out["significant_adjusted"], out["p_adjusted"] = adjusted, 0.01 if adjusted else 0.2
        return out
    results = {"tasks": {
        "piqa": {"none": {"paired": {"w4": {"difference": {"acc": iv(-0.05, -0.08, -0.02, True), "ece": iv(0.01, -0.01, 0.03)}}}}},
        "boolq": {"none": {"paired": {"w4": {"difference": {"acc": iv(0.01, -0.02, 0.04), "ece": iv(-0.02, -0.03, -0.01, False)}}}}},
    }}
    grid = overview_grid(results)
    assert grid["tasks"] == ["piqa", "boolq"] and [r["variant"] for r in grid["rows"]] == ["w4"]
    piqa, boolq = grid["rows"][0]["cells"]
    assert piqa[0] == {"text": "Δacc -5.0", "verdict": "worse", "title": "Δacc -5.0 [-8.0, -2.0]; BH-adjusted p 0.01"}
    assert piqa[1]["verdict"] == "" and boolq[1]["text"] == "ΔECE -0.020†" and boolq[1]["verdict"] == "better"


def test_the_size_axis_notes_run_time_formats_that_weight_bits_do_not_count(tmp_path: Path) -> None:
    """Issue 33: an FP8-KV variant is not "16 bits": the Pareto view labels each variant with what it quantizes at
    run time besides its weights (activations, KV cache); a kv: variant alone has the model's own weight bits."""
    from quantcal.report.collect import run_bits_per_weight, run_time_formats
    from quantcal.report.figures import pareto

    assert run_time_formats({"recipe": "fp8"}) == "A FP8"
    assert run_time_formats({"recipe": "w8a8:smoothquant=0.5"}) == "A INT8"
    assert run_time_formats({"recipe": "nvfp4:acts=none"}) is None and run_time_formats({"recipe": "mxfp4"}) == "A MXFP4"
    assert run_time_formats({"recipe": "kv:fp8"}) == "KV FP8"
    assert run_time_formats({"recipe": "awq:bits=4,group_size=64+kv:int8,scale=calibrated"}) == "KV INT8"
    assert run_time_formats({"recipe": "rtn:bits=4"}) is None and run_time_formats({}) is None
    model = {"spec": "x", "kind": "local", "location": str(tmp_path), "dtype": "float32"}
    (tmp_path / "config.json").write_text('{"torch_dtype": "float32"}')
    assert run_bits_per_weight({"model": model, "recipe": "kv:fp8"}) == run_bits_per_weight({"model": model})
    points = [{"name": "reference", "bits": 16, "ece": 0.1, "ece_after": 0.05, "acc": 0.6, "reference": True},
              {"name": "kv-fp8", "bits": 16, "ece": 0.12, "ece_after": None, "acc": 0.6, "reference": False,
               "formats": "KV FP8"}]
    figure = pareto(points, "piqa", tmp_path / "figs", "p")
    assert "KV FP8" in figure.svg.read_text()
