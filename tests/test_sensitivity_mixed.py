"""Issue 19: layer-wise calibration sensitivity, the mixed recipe, and a recalibrated deployment.

On a 2-block random Llama with SmolLM2's tokenizer and real PIQA rows: units swap in and out exactly, a sensitivity
run writes its ranking and resumes, the mixed recipe keeps its budget and composes its units from the two builds,
refuses its ranking items and bad specs, and a study's temperature round-trips through an exported checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from quantcal.cli import app
from quantcal.errors import QuantcalError
from tests.test_cli_bad_input import assert_user_error

BASE = "rtn:bits=2,group_size=16"
PROTECT = "rtn:bits=8,group_size=16"
N_RANK = 12


@pytest.fixture(scope="module")
def piqa(shared_data: Path) -> Path:
    return shared_data / "piqa" / "validation.jsonl"


@pytest.fixture(scope="module")
def ranking(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, piqa: Path, cache: Path) -> Path:
    """One sensitivity run (linear units) on the first N_RANK PIQA items, shared by the tests below."""
    import os

    from quantcal import api

    before = os.environ.get("QUANTCAL_CACHE")
    os.environ["QUANTCAL_CACHE"] = str(cache)
    try:
        out = tmp_path_factory.mktemp("sens")
        api.run_sensitivity(str(tiny_llama), BASE, f"piqa={piqa}", limit=N_RANK, unit="linear", out=out, resamples=50)
    finally:
        if before is None:
            os.environ.pop("QUANTCAL_CACHE")
        else:
            os.environ["QUANTCAL_CACHE"] = before
    return out / "sensitivity.json"


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.inference_mode():
        return model(ids).logits.clone()


def test_swapping_a_unit_in_and_out_restores_the_reference_exactly(tiny_llama: Path, env_cache: Path) -> None:
    from quantcal.sources.models import load_model, resolve_source
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.units import model_units, swapped
    from quantcal.recipes.build import build_variant, checkpoint_tensors

    source = resolve_source(str(tiny_llama))
    built = build_variant(source, parse_recipe(BASE))
    model = load_model(source, "float32").model
    reference = _logits(model)
    units = model_units(model, "linear")
    assert [u.name for u in units] == ["L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]
    assert sum(u.params for u in units) == sum(m.weight.numel() for n, m in model.named_modules()
                                              if isinstance(m, torch.nn.Linear) and ".layers." in n)
    everything = {}
    for unit in units:
        weights = {k.removesuffix(".weight"): w for k, w in checkpoint_tensors(built, [f"{n}.weight" for n in unit.layers]).items()}
        everything.update(weights)
        with swapped(model, weights):
            assert not torch.equal(_logits(model), reference)  # the unit's quantized weights are in
        assert torch.equal(_logits(model), reference)  # and out again, bit for bit
    with swapped(model, everything):  # every unit swapped in is the full recipe
        full = load_model(source.__class__(str(built), "local", str(built), None, "x"), "float32").model
        assert torch.allclose(_logits(model), _logits(full), atol=1e-6)
    assert torch.equal(_logits(model), reference)


def test_sensitivity_run_writes_its_ranking_and_resumes(ranking: Path, tiny_llama: Path, piqa: Path,
                                                         env_cache: Path) -> None:
    from quantcal import api

    data = json.loads(ranking.read_text())
    block = data["tasks"]["piqa"]
    assert data["kind"] == "quantcal-sensitivity" and data["unit"] == "linear" and data["recipe"].startswith("rtn:bits=2")
    assert [u["name"] for u in data["units"]] == ["L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]
    assert block["n"] == N_RANK and len(block["item_hashes"]) == N_RANK
    assert set(block["units"]) == {"L0.attn", "L0.mlp", "L1.attn", "L1.mlp"}
    for entry in block["units"].values():
        assert entry["nll"]["low"] <= entry["nll"]["estimate"] <= entry["nll"]["high"]
        assert entry["mean_js"] >= 0
    assert set(block["family_share_nll"]) == {"attn", "mlp"}
    assert (ranking.parent / "sensitivity.md").is_file() and (ranking.parent / "figures" / "sensitivity.png").is_file()
    said: list[str] = []
    again = api.run_sensitivity(str(tiny_llama), BASE, f"piqa={piqa}", limit=N_RANK, unit="linear",
                                out=ranking.parent, resamples=50, say=said.append)
    scored = [m for m in said if "items scored" in m]
    assert not scored, scored  # everything came from the store
    assert again.data["tasks"]["piqa"]["units"] == block["units"]
    assert [name for name, _ in again.ranking("nll")] == sorted(block["units"], key=lambda u: -block["units"][u]["nll"]["estimate"])


def test_select_units_protects_the_most_harmful_within_the_budget() -> None:
    from quantcal.recipes.mixed import UnitCost, select_units

    units = [UnitCost("a", 100, 3.0, 8.0, 0.5), UnitCost("b", 300, 3.0, 8.0, 0.9), UnitCost("c", 100, 3.0, 8.0, 0.2),
             UnitCost("d", 100, 3.0, 8.0, -0.1)]
    # b alone adds 300*5/600 = 2.5 bits: over a 5-bit budget, so it is passed over for a (then c)
    chosen = select_units(units, 5.0)
    assert chosen.protected == ("a", "c") and chosen.bits_per_weight == pytest.approx(3 + 2 * 100 * 5 / 600)
    assert select_units(units, 6.0).protected == ("b",)  # 5.5 bits; a would make it 6.33
    assert "d" not in select_units(units, 100.0).protected  # a unit that did no harm is never protected
    assert select_units(units, 3.0).protected == ()
    with pytest.raises(QuantcalError, match="below the base recipe's 3.000"):
        select_units(units, 2.9)


def test_tasks_combine_as_shares_of_the_whole_recipes_damage_or_as_a_raw_mean() -> None:
    """Over several tasks, ``share`` weighs each task the same (a unit's Δ over the whole recipe's Δ on that task);
    ``mean`` lets the task with the larger scale decide; one task ranks the same either way."""
    from quantcal.analysis.sensitivity import COMBINE, combine_harms
    from quantcal.recipes import mixed

    assert mixed.COMBINE == COMBINE  # the recipe's choices (kept apart so recipes import without scipy)

    piqa = {"a": 0.20, "b": 0.05}  # whole recipe: +1.0
    hellaswag = {"a": 0.10, "b": 0.60}  # whole recipe: +6.0 (a scale six times larger)
    share = combine_harms([piqa, hellaswag], [1.0, 6.0], "share")
    assert share == pytest.approx({"a": (0.20 / 1.0 + 0.10 / 6.0) / 2, "b": (0.05 / 1.0 + 0.60 / 6.0) / 2})
    assert share["a"] > share["b"]  # a took 20% of piqa's damage, b 10% of hellaswag's
    mean = combine_harms([piqa, hellaswag], [1.0, 6.0], "mean")
    assert mean == pytest.approx({"a": 0.15, "b": 0.325}) and mean["b"] > mean["a"]
    assert combine_harms([piqa], [-1.0], "share") == piqa  # one task: its own Δs, even where the whole recipe helped
    with pytest.raises(QuantcalError, match="did not harm every task"):
        combine_harms([piqa, hellaswag], [1.0, -0.01], "share")
    with pytest.raises(QuantcalError, match="combine='max'"):
        combine_harms([piqa], None, "max")


def test_nested_recipe_keys_are_canonical(ranking: Path) -> None:
    from quantcal.recipes import parse_recipe

    spec = parse_recipe(f"mixed:base=({BASE}),budget=6,ranking={ranking}")
    assert spec.key == (f"mixed:base=({BASE},sym=false),budget=6.0,combine=share,"
                        f"protect=(rtn:bits=8,group_size=64,sym=false),rank=nll,ranking={ranking}")
    assert parse_recipe(spec.key) == spec


def test_mixed_recipe_respects_its_budget_and_takes_each_unit_from_one_build(ranking: Path, tiny_llama: Path,
                                                                             env_cache: Path) -> None:
    from quantcal import api
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.layers import block_linears, mean_bits
    from quantcal.recipes.mixed import layer_bits
    from quantcal.recipes.build import build_variant, checkpoint_tensors
    from quantcal.sources.models import resolve_source

    v = api.quantize(str(tiny_llama), f"mixed:base=({BASE}),protect=({PROTECT}),budget=6,ranking={ranking}")
    protected = v.meta["mixed"]["protected"]
    assert protected and v.bits_per_weight <= 6.0
    source = resolve_source(str(tiny_llama))
    base, protect = (build_variant(source, parse_recipe(r)) for r in (BASE, PROTECT))
    names = [f"{n}.weight" for n, _ in block_linears(_model(tiny_llama))]
    mixed, from_base, from_protect = (checkpoint_tensors(p, names) for p in (v.path, base, protect))
    sizes = []
    for name in names:
        unit = name.split(".")[2]
        family = "attn" if ".self_attn." in name else "mlp"
        source_weights = from_protect if f"L{unit}.{family}" in protected else from_base
        assert torch.equal(mixed[name], source_weights[name]), name
        sizes.append((mixed[name].numel(), layer_bits(parse_recipe(PROTECT if source_weights is from_protect else BASE).key,
                                                      mixed[name].shape[1])))
    assert v.bits_per_weight == pytest.approx(mean_bits(sizes))


def _model(path: Path) -> torch.nn.Module:
    from quantcal.sources.models import load_model, resolve_source

    return load_model(resolve_source(str(path)), "float32").model


def test_mixed_variant_refuses_its_ranking_items(ranking: Path, tiny_llama: Path, piqa: Path, tmp_path: Path,
                                                 env_cache: Path) -> None:
    from quantcal import api

    recipe = f"mixed:base=({BASE}),protect=({PROTECT}),budget=6,ranking={ranking}"
    with pytest.raises(QuantcalError, match=f"{N_RANK} of 20 items .* were used to rank the units"):
        api.evaluate(str(tiny_llama), "piqa", recipe=recipe, data_file=piqa, limit=20, store=tmp_path / "s.sqlite")
    with pytest.raises(QuantcalError, match="were used to rank"):  # a few-shot rendering of the same items too
        api.evaluate(str(tiny_llama), "piqa", recipe=recipe, data_file=piqa, limit=20, num_fewshot=1,
                     store=tmp_path / "s.sqlite")
    result = api.evaluate(str(tiny_llama), "piqa", recipe=recipe, data_file=piqa, limit=20, skip=N_RANK,
                          store=tmp_path / "s.sqlite")
    assert result.tasks["piqa"].n == 20
    items = result.items()
    assert sorted(items["item_id"].astype(int)) == list(range(N_RANK, N_RANK + 20))  # ids kept from the whole file


def test_bad_sensitivity_and_mixed_specs_are_one_line_exit_2(ranking: Path, tiny_llama: Path, piqa: Path,
                                                             tmp_path: Path, env_cache: Path) -> None:
    runner = CliRunner()

    def run(*args: str):  # noqa: ANN202
        return runner.invoke(app, list(args))
    quantize = ("quantize", "--model", str(tiny_llama), "--recipe")
    assert_user_error(run(*quantize, f"mixed:base=({BASE}),budget=2,ranking={ranking}"),
                      "budget=2 bits per weight is below the base recipe's 3.125")
    assert_user_error(run(*quantize, f"mixed:base=(rtn:bits=3,group_size=16),budget=5,ranking={ranking}"),
                      "measured rtn:bits=2,group_size=16,sym=false, not the base")
    assert_user_error(run(*quantize, f"mixed:base=({BASE}),budget=5,ranking={tmp_path / 'none.json'}"), "file not found")
    assert_user_error(run(*quantize, f"mixed:base=(gguf:q4_0),budget=5,ranking={ranking}"), "cannot be mixed per unit")
    assert_user_error(run(*quantize, f"mixed:base=({BASE},budget=5"), "a '(' without its ')'")
    sens = ("sensitivity", "--model", str(tiny_llama), "--task", f"piqa={piqa}", "--limit", "4", "--out", str(tmp_path / "o"))
    assert_user_error(run(*sens, "--recipe", BASE, "--unit", "layer"), "unknown unit 'layer'", "block, linear")
    assert_user_error(run(*sens, "--recipe", "bnb:nf4,mode=native"), "is not one")
    assert_user_error(run("eval", "--model", str(tiny_llama), "--task", "piqa", "--data-file", str(piqa), "--skip", "5000",
                          "--store", str(tmp_path / "s.sqlite")), "--skip 5000 leaves no item")
    from quantcal.recipes.units import find_units, model_units

    with pytest.raises(QuantcalError, match="unknown unit L7; this model's units: L0, L1"):
        find_units(model_units(_model(tiny_llama), "block"), ["L7"])


def test_recalibration_reports_the_recovered_part_with_its_interval() -> None:
    from quantcal.analysis import recalibration_report

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    scores = rng.normal(size=(400, 4)) * 4
    scores[np.arange(400), labels] += 2.0  # informative but overconfident
    r = recalibration_report(scores, labels, n_resamples=200)
    rec = r["recovered"]["ece"]
    assert rec["estimate"] == pytest.approx(r["before"]["ece"] - r["after"]["ece"])
    assert rec["low"] <= rec["estimate"] <= rec["high"] and rec["low"] > 0  # a real recovery, not noise


def test_exported_checkpoint_carries_the_study_temperature(tiny_llama: Path, tmp_path: Path, env_cache: Path) -> None:
    from transformers import GenerationConfig

    from quantcal import api
    from quantcal.study.spec import StudySpec

    report = tmp_path / "report"
    report.mkdir()
    spec = StudySpec(reference=str(tiny_llama), variants=[{"name": "rtn2", "recipe": BASE}], tasks=["piqa"])
    (report / "study.json").write_text(spec.model_dump_json())
    recal = {"temperature": 1.7321, "fold_temperatures": [1.7, 1.75], "at_bound": False, "k": 2,
             "before": {"ece": 0.2}, "after": {"ece": 0.05}}
    variants = {"reference": {"n": 10, "recalibration": {**recal, "temperature": 1.1}}, "rtn2": {"n": 10, "recalibration": recal}}
    (report / "results.json").write_text(json.dumps({"tasks": {"piqa": {"none": {"variants": variants}}}}))
    exported = api.export_checkpoint(report, "rtn2", tmp_path / "out")
    assert GenerationConfig.from_pretrained(tmp_path / "out").temperature == pytest.approx(1.7321)
    record = json.loads((tmp_path / "out" / "quantcal-variant.json").read_text())
    assert record["temperature"]["value"] == pytest.approx(1.7321) and record["temperature"]["task"] == "piqa"
    assert record["recipe"].startswith("rtn:bits=2") and record["bits_per_weight"] == pytest.approx(3.125)
    assert exported.temperature == pytest.approx(1.7321)
    reloaded = _model(tmp_path / "out")
    built = _model(Path(api.quantize(str(tiny_llama), BASE).path))
    assert torch.equal(_logits(reloaded), _logits(built))  # the weights are the variant's
    with pytest.raises(QuantcalError, match="not empty"):
        api.export_checkpoint(report, "rtn2", tmp_path / "out")
    recal["at_bound"] = True
    (report / "results.json").write_text(json.dumps({"tasks": {"piqa": {"none": {"variants": variants}}}}))
    with pytest.raises(QuantcalError, match="sits at its search bound"):
        api.export_checkpoint(report, "rtn2", tmp_path / "out2")
    with pytest.raises(QuantcalError, match="no variant 'nope'"):
        api.export_checkpoint(report, "nope", tmp_path / "out3")


@pytest.mark.heavy
def test_study_with_a_mixed_variant_reports_where_it_breaks_and_the_pareto_view(ranking: Path, tiny_llama: Path,
                                                                                piqa: Path, tmp_path: Path,
                                                                                env_cache: Path) -> None:
    from quantcal import api

    study = {"reference": str(tiny_llama), "sensitivity": [str(ranking.parent)], "bootstrap": {"resamples": 50},
             "variants": [{"name": "rtn2", "recipe": BASE},
                          {"name": "mixed6", "recipe": f"mixed:base=({BASE}),protect=({PROTECT}),budget=6,ranking={ranking}"}],
             "tasks": [{"name": "piqa", "data_file": str(piqa), "limit": 30}]}
    with pytest.raises(QuantcalError, match=f"variant mixed6 · task piqa: {N_RANK} of 30 items"):
        api.plan_study(study, output=tmp_path / "r0")  # refused before any work
    study["tasks"][0]["skip"] = N_RANK
    result = api.run_study(study, output=tmp_path / "r")
    results = result.report.results
    # the tiny reference is a float32 checkpoint: 32 bits per weight as stored (issue 34: the reference's real bits)
    assert results["bits_per_weight"]["reference"] == 32.0 and results["bits_per_weight"]["rtn2"] == pytest.approx(3.125)
    assert 3.125 < results["bits_per_weight"]["mixed6"] <= 6.0
    ranked = results["tasks"]["piqa"]["none"]["deployment"]["recalibrated"]
    assert sorted(r["variant"] for r in ranked) == ["mixed6", "reference", "rtn2"]
    assert sorted(r["rank_after"] for r in ranked) == [1, 2, 3]
    assert [r["rank_after"] for r in ranked] == [1, 2, 3] and ranked[0]["ece_after"] <= ranked[-1]["ece_after"]
    assert results["sensitivity"][0]["tasks"]["piqa"]["top"]
    assert (tmp_path / "r" / "figures" / "piqa_pareto.png").is_file()
    assert (tmp_path / "r" / "figures" / "sensitivity_1.png").is_file()
    page = result.page.read_text()
    assert "Where it breaks" in page and "After temperature scaling" in page


def test_runs_on_different_tasks_merge_into_one_ranking(ranking: Path, tiny_llama: Path, shared_data: Path,
                                                        tmp_path: Path, env_cache: Path) -> None:
    """A ranking measured task by task merges into one: each task as its own run wrote it, the harm averaged over
    them, every task's items refused by a mixed recipe ranked on it; mismatched runs are refused, one line."""
    from quantcal import api
    from quantcal.analysis.sensitivity import merge_runs, rank_units, ranking_from_json, rows_from_json

    hellaswag = shared_data / "hellaswag" / "validation.jsonl"
    other = api.run_sensitivity(str(tiny_llama), BASE, f"hellaswag={hellaswag}", limit=4, unit="linear",
                                out=tmp_path / "hs", resamples=50)
    piqa_run = api.load_sensitivity(ranking)
    merged = api.merge_sensitivity([ranking.parent, tmp_path / "hs"], tmp_path / "both")
    data = json.loads((tmp_path / "both" / "sensitivity.json").read_text())
    assert list(data["tasks"]) == ["piqa", "hellaswag"]
    assert data["tasks"]["piqa"]["limit"] == N_RANK and data["tasks"]["hellaswag"]["limit"] == 4
    for name, run in (("piqa", piqa_run), ("hellaswag", other)):
        assert {k: v for k, v in data["tasks"][name].items() if k != "limit"} == \
            {k: v for k, v in run.data["tasks"][name].items() if k != "limit"}
    blocks = [piqa_run.data["tasks"]["piqa"], other.data["tasks"]["hellaswag"]]
    rows = [rows_from_json(b) for b in blocks]
    assert merged.ranking("nll", "mean") == rank_units(rows, "nll", combine="mean") == ranking_from_json(data, "nll", "mean")
    full = [b["full_recipe"]["nll"]["estimate"] for b in blocks]
    if min(full) > 0:
        assert merged.ranking("nll") == rank_units(rows, "nll", full)
    else:  # the tiny random model: RTN may lower its NLL, and then there is no damage to share
        with pytest.raises(QuantcalError, match="did not harm every task"):
            merged.ranking("nll")
    md = (tmp_path / "both" / "sensitivity.md").read_text()
    assert md.count("## ") == 3 and "combine=mean (the raw ΔNLLs averaged): L" in md

    recipe = f"mixed:base=({BASE}),protect=({PROTECT}),budget=6,combine=mean,ranking={tmp_path / 'both'}/sensitivity.json"
    with pytest.raises(QuantcalError, match="4 of 6 items .* were used to rank the units"):
        api.evaluate(str(tiny_llama), "hellaswag", recipe=recipe, data_file=hellaswag, limit=6,
                     store=tmp_path / "s.sqlite")

    with pytest.raises(QuantcalError, match="task piqa is in both"):
        merge_runs([("a", piqa_run.data), ("b", piqa_run.data)])
    with pytest.raises(QuantcalError, match="differ in recipe_build"):
        merge_runs([("a", piqa_run.data), ("b", {**other.data, "recipe_build": "another"})])
    with pytest.raises(QuantcalError, match="at least two"):
        merge_runs([("a", piqa_run.data)])
    assert_user_error(CliRunner().invoke(app, ["merge-sensitivity", str(ranking.parent), str(tmp_path / "both"),
                                               "--out", str(tmp_path / "again")]), "task piqa is in both")
    assert_user_error(CliRunner().invoke(app, ["merge-sensitivity", str(ranking.parent), str(tmp_path / "nope"),
                                               "--out", str(tmp_path / "again")]), "no sensitivity.json")


def test_pareto_labels_are_spread_apart_only_where_they_collide() -> None:
    from quantcal.report.figures import spread

    values = [0.10, 0.10, 0.101, 0.30]
    out = spread(values, gap=0.02)
    assert np.all(np.diff(out) >= 0.02 - 1e-12)  # no two labels closer than the gap
    assert out[-1] == 0.30  # a label with room stays on its point
    assert np.mean(out[:3]) == pytest.approx(np.mean(values[:3]))  # a stack is centred on its points
    assert spread([0.1, 0.5], gap=0.02) == [0.1, 0.5] and spread([], gap=0.1) == []
