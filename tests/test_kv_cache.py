"""KV-cache formats (``kv:fp8``, ``kv:int8``, composed as ``WEIGHTS+kv:...``): keys after the rotary embedding and
values rounded as an engine's quantized cache stores them, exact under the packed scorer, shared prefixes and
incremental decoding, and scored as variants of their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from quantcal.cli import app
from quantcal.errors import QuantcalError
from quantcal.recipes import parse_recipe
from quantcal.recipes.kv_cache import attention_layers, install, round_to
from quantcal.recipes.number_formats import E4M3_MAX
from quantcal.sources.models import load_model, resolve_source
from quantcal.variants.definition import LoadOptions, VariantDef, load_variant_model
from tests.conftest import write_jsonl
from tests.test_scoring import assert_packed_and_shared_prefixes_exact

runner = CliRunner()
CALIB = {"calib": "self", "nsamples": 2, "seqlen": 16, "seed": 0}


def test_rounding_follows_the_formats() -> None:
    x = torch.tensor([0.0, 0.3, -1.26, 500.0, -1000.0, 2.5, 3.5])
    one = torch.tensor(1.0)
    fp8 = round_to(x, "fp8", one)
    assert fp8[3] == E4M3_MAX and fp8[4] == -E4M3_MAX  # saturating, as vLLM's conversion
    assert torch.equal(fp8[:3], x[:3].to(torch.float8_e4m3fn).float())  # E4M3 round to nearest even in range
    int8 = round_to(x, "int8", torch.tensor(0.5))
    assert int8.tolist() == [0.0, 0.5, -1.5, 63.5, -64.0, 2.5, 3.5]  # round(x / 0.5) clamped to [-128, 127], * 0.5
    assert torch.equal(round_to(fp8, "fp8", one), fp8)  # idempotent: a cached value is rounded once


@pytest.mark.parametrize("params", [
    {"type": "fp8", "scale": "1.0", "per": "tensor"},
    {"type": "fp8", "scale": "1.0", "per": "tensor", "rounding": "toward_zero"},
    {"type": "int8", "scale": "0.05", "per": "tensor"},
    {"type": "fp8", "scale": "calibrated", "per": "head"},
    {"type": "int8", "scale": "calibrated", "per": "tensor"},
])
def test_the_cache_rounds_what_attention_reads_and_decoding_with_a_cache_agrees(tiny_llama: Path, env_cache: Path,
                                                                                params: dict) -> None:
    source = resolve_source(str(tiny_llama))
    lm = load_model(source, dtype="float32")
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode():
        base = lm.model(ids).logits
    info = install(lm.model, params | CALIB, lm.tokenizer, source.fingerprint)["kv_cache"]
    layers = attention_layers(lm.model)
    for layer in layers:  # watch what reaches the wrapped attention function
        inner = layer.quantcal_kv.inner
        layer.quantcal_kv.inner = (lambda f: lambda m, q, k, v, *a, **kw: (seen.append((k, v)), f(m, q, k, v, *a, **kw))[1])(inner)
    with torch.inference_mode():
        rounded = lm.model(ids).logits
        first = lm.model(ids[:, :10], use_cache=True)
        rest = lm.model(ids[:, 10:], past_key_values=first.past_key_values, use_cache=True).logits
    assert not torch.equal(rounded, base)
    if params.get("rounding") == "toward_zero":  # recorded, and not the nearest rounding's output
        nearest = load_model(source, dtype="float32")
        install(nearest.model, {**params, "rounding": "nearest"} | CALIB, nearest.tokenizer, source.fingerprint)
        with torch.inference_mode():
            assert not torch.equal(nearest.model(ids).logits, rounded)
        assert info["rounding"] == "toward_zero" and layers[0].quantcal_kv.rounding == "toward_zero"
    assert torch.equal(rest, rounded[:, 10:])  # a cached prefix is rounded exactly as the engine stores it
    for layer, (k, v) in zip(layers, seen[:len(layers)]):
        cache = layer.quantcal_kv
        assert torch.equal(round_to(k, cache.fmt, cache.key_scale, cache.rounding), k)  # already on the grid
        assert torch.equal(round_to(v, cache.fmt, cache.value_scale, cache.rounding), v)
    if params["scale"] == "calibrated":
        top = 448.0 if params["type"] == "fp8" else 127.0
        assert info["calibration"]["nsamples"] == 2 and 0 < info["key_scale_max"] < 10 / top
        expected_shape = (1, lm.model.config.num_key_value_heads, 1, 1) if params["per"] == "head" else ()
        assert tuple(layers[0].quantcal_kv.key_scale.shape) == expected_shape
    else:
        assert info["key_scale_max"] == pytest.approx(float(params["scale"]))


def test_packed_and_shared_prefix_scoring_stay_exact_with_a_quantized_cache(tiny_llama: Path, env_cache: Path) -> None:
    lm = load_variant_model(VariantDef(str(tiny_llama), "kv:int8,scale=0.02"), resolve_source(str(tiny_llama)),
                            LoadOptions(dtype="float32"))
    lm.model.double()  # as the activation formats' test: token-locality tested without float32 boundary cases
    assert_packed_and_shared_prefixes_exact(lm)


def test_a_composed_recipe_is_the_weight_variant_served_with_the_cache(tiny_llama: Path, env_cache: Path) -> None:
    source = resolve_source(str(tiny_llama))
    composed = load_variant_model(VariantDef(str(tiny_llama), "rtn:bits=4,group_size=16+kv:fp8"), source)
    by_parts = load_variant_model(VariantDef(str(tiny_llama), "rtn:bits=4,group_size=16"), source)
    install(by_parts.model, dict(parse_recipe("kv:fp8").params), by_parts.tokenizer)
    plain = load_variant_model(VariantDef(str(tiny_llama), "rtn:bits=4,group_size=16"), source)
    ids = torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(composed.model(ids).logits, by_parts.model(ids).logits)
        assert not torch.equal(composed.model(ids).logits, plain.model(ids).logits)


def test_kv_variants_are_runs_of_their_own(tiny_llama: Path, env_cache: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": f"{i} plus {i}?", "choices": [str(2 * i), "x", "y"],
                                               "answer": 0} for i in range(6)])
    store = tmp_path / "s.sqlite"
    for name, recipe in (("ref", None), ("kv8", "kv:int8,scale=0.02"), ("rtn-kv", "rtn:bits=4,group_size=16+kv:fp8")):
        args = ["eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(data), "--store", str(store),
                "--name", name] + (["--recipe", recipe] if recipe else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in
            (lambda out: (runner.invoke(app, ["export", str(store), "--out", str(out)]), out.read_text())[1])(
                tmp_path / "x.jsonl").splitlines()]
    by_variant = {v: [r["p_gold"] for r in rows if r["variant"] == v] for v in ("ref", "kv8", "rtn-kv")}
    assert by_variant["ref"] != by_variant["kv8"] and len(by_variant["rtn-kv"]) == 6


@pytest.mark.parametrize("recipe, words", [
    ("kv:fp16", "kv"), ("kv:fp8,per=head", "calibrated"), ("kv:fp8+rtn:bits=4", "in that order"),
    ("rtn:bits=4+gptq:bits=4", "do not compose"), ("kv:int8,scale=0", "positive"),
])
def test_bad_kv_recipes_are_one_line(recipe: str, words: str) -> None:
    with pytest.raises(QuantcalError, match=words):
        parse_recipe(recipe)


def test_a_model_whose_cache_cannot_be_rounded_is_refused_before_its_weights_are_built(
        tmp_path: Path, smol_checkpoint: Path, env_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPT-2 style block (one fused c_attn, no k_proj/v_proj): `rtn:...+kv:fp8` stops in one line before the RTN
    build runs (an AWQ or GPTQ build would take minutes first), and nothing is written to the variant cache."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from quantcal.recipes import build
    from quantcal.sources.models import resolve_source
    from quantcal.variants.definition import LoadOptions, VariantDef, load_variant_model
    from tests.conftest import _save_tiny

    vocab = json.loads((smol_checkpoint / "config.json").read_text())["vocab_size"]
    path = _save_tiny(tmp_path / "gpt2", GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=1, n_head=2)).eval(),
                      smol_checkpoint)
    built = []
    monkeypatch.setattr(build, "build_variant", lambda *a, **k: built.append(a) or (_ for _ in ()).throw(AssertionError))
    from quantcal.variants import definition
    monkeypatch.setattr(definition, "build_variant", lambda *a, **k: built.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(QuantcalError, match="GPT2LMHeadModel has no attention layers with key and value projections"):
        load_variant_model(VariantDef(str(path), "rtn:bits=4,group_size=16+kv:fp8"), resolve_source(str(path)),
                           LoadOptions(dtype="float32"))
    assert built == []
