"""Compression recipes: spec errors, exact grids, GPTQ against a plain implementation, GGUF/bitsandbytes
round trips, and the variant cache."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from quantcal.errors import QuantcalError
from quantcal.sources.models import resolve_source
from quantcal.recipes import grid, parse_recipe
from quantcal.recipes.gptq import gptq_weight


def test_spec_canonical_key_and_errors() -> None:
    a = parse_recipe("rtn:group_size=64,bits=4")
    assert a.key == parse_recipe("rtn:bits=4,group_size=64,sym=false").key == "rtn:bits=4,group_size=64,sym=false"
    assert parse_recipe("gguf:q4_0").key == "gguf:type=q4_0" and parse_recipe("bnb:nf4").slug == "bnb-nf4"
    # the default execution form stays out of the key (keys of earlier builds hold); native is a different variant
    assert parse_recipe("bnb:nf4,mode=simulated").key == "bnb:blocksize=64,double_quant=false,type=nf4"
    native = parse_recipe("bnb:nf4,mode=native")
    assert native.key == "bnb:blocksize=64,double_quant=false,mode=native,type=nf4" and native.slug == "bnb-nf4-native"
    for bad, message in [("awk:bits=4", "known recipes: awq, bnb, fp8, gguf, gptq, hqq, kv, mixed, mxfp4, nvfp4, quanto, rtn, w8a8"),
                         ("quanto:qint3", "one of qint8, qint4, qint2"), ("hqq:bits=5", "one of 1, 2, 3, 4, 8"), ("rtn:bits=9", "in [2, 8]"),
                         ("rtn:group_size=0", "not 0"), ("rtn:colour=red", "valid keys: bits"),
                         ("gguf:q9_9", "one of q8_0"), ("bnb", "type is required"), ("rtn:sym=perhaps", "true, false")]:
        with pytest.raises(QuantcalError, match=re.escape(message)):
            parse_recipe(bad)  # noqa: B023


@pytest.mark.parametrize("bits,group,sym", [(2, 16, False), (4, 64, False), (4, 48, True), (8, -1, False), (3, 40, False)])
def test_rtn_groups_have_at_most_2_pow_bits_values(bits: int, group: int, sym: bool) -> None:
    w = torch.randn(12, 100)
    q, scale, zero = grid.rtn(w, bits, group, sym)
    g = 100 if group == -1 else group
    assert torch.equal(scale.half().float(), scale)  # float16 values, as a checkpoint stores them
    expanded = lambda t: t.repeat_interleave(g, dim=1)[:, :100]  # noqa: E731
    assert torch.equal(q, expanded(scale) * (torch.round(q / expanded(scale)) + expanded(zero) - expanded(zero)))
    for start in range(0, 100, g):  # includes the ragged last group
        for row in q[:, start:start + g]:
            assert row.unique().numel() <= 2 ** bits
    assert (q - w).abs().max() < (w.abs().max() * 2 / (2 ** bits - 1))


def plain_gptq(w: torch.Tensor, h: torch.Tensor, bits: int, g: int, sym: bool, damp: float = 0.01) -> torch.Tensor:
    """GPTQ's equations one column at a time, with no lazy batching: the independent reference."""
    w, h = w.clone().double(), h.clone().double()
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    q = torch.zeros_like(w)
    for j in range(w.shape[1]):
        if j % g == 0:
            scale, zero = grid.fit(w[:, j:j + g], bits, sym)
        q[:, j] = grid.quantize(w[:, j], scale, zero, bits)
        e = (w[:, j] - q[:, j]) / u[j, j]
        w[:, j:] -= e[:, None] * u[j, j:][None, :]
    return q


@pytest.mark.parametrize("group", [16, 32, 50, 64])
def test_gptq_equals_plain_equations_and_beats_rtn(group: int) -> None:
    torch.manual_seed(group)
    w = torch.randn(24, 160, dtype=torch.float64)
    x = torch.randn(600, 160, dtype=torch.float64) @ torch.randn(160, 160, dtype=torch.float64) * 0.2
    h = 2 * x.T @ x / 600
    ours = gptq_weight(w, h, 4, group, False, block_size=128).weight
    assert torch.allclose(ours, plain_gptq(w, h, 4, group, False), atol=1e-10)
    err = lambda q: float(torch.trace((q - w) @ h @ (q - w).T))  # noqa: E731
    assert err(ours) < err(grid.rtn(w, 4, group, False)[0])
    for start in range(0, 160, group):
        for row in ours[:, start:start + group]:
            assert row.unique().numel() <= 16


def test_gptq_desc_act_keeps_grid_in_permuted_groups() -> None:
    torch.manual_seed(1)
    w = torch.randn(8, 64, dtype=torch.float64)
    x = torch.randn(300, 64, dtype=torch.float64) * torch.linspace(0.1, 3, 64, dtype=torch.float64)
    result = gptq_weight(w, 2 * x.T @ x / 300, 3, 16, False, desc_act=True)
    permuted = result.weight[:, result.perm]
    for start in range(0, 64, 16):
        for row in permuted[:, start:start + 16]:
            assert row.unique().numel() <= 8


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_gguf_roundtrip_is_exact(kind: str) -> None:
    from quantcal.recipes.gguf_types import roundtrip

    w = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    once = roundtrip(w, kind)
    assert np.array_equal(roundtrip(once, kind), once)  # already on the grid: quantize/dequantize is identity
    assert not np.array_equal(once, w)


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8"])
def test_bnb_grid(kind: str) -> None:
    pytest.importorskip("bitsandbytes")
    from quantcal.recipes.bnb import roundtrip

    params = dict(parse_recipe(f"bnb:{kind}").params)
    w = torch.randn(16, 128)
    q = roundtrip(w, params)
    blocks = q.reshape(-1, 64) if kind != "int8" else q
    for block in blocks:
        assert block.unique().numel() <= (16 if kind != "int8" else 256)
    assert (q - w).abs().mean() < 0.15 * w.abs().mean() if kind != "int8" else (q - w).abs().max() < 0.05


def test_gguf_refuses_unported_types_and_ragged_rows(tmp_path: Path, tiny_llama: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantcal.recipes.build import build_variant

    with pytest.raises(QuantcalError, match="q2_k"):  # refused when the recipe is read, so --dry-run catches it
        parse_recipe("gguf:q2_k")
    with pytest.raises(QuantcalError, match=r"32 input features, not a multiple of the q4_k block size 256 \(fallback=true"):
        build_variant(resolve_source(str(tiny_llama)), parse_recipe("gguf:q4_k,fallback=false"), tmp_path / "k")
    odd = tmp_path / "odd"
    config = LlamaConfig(vocab_size=49152, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(odd)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (odd / f).write_bytes((tiny_llama / f).read_bytes())
    with pytest.raises(QuantcalError, match="48 input features, not a multiple of the q4_0 block size 32"):
        build_variant(resolve_source(str(odd)), parse_recipe("gguf:q4_0"), tmp_path / "o")


def test_variant_cache_hit_miss_and_identical_reload(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.engines.encoding import Encoder
    from quantcal.tasks.items import Item
    from quantcal.recipes import FAMILIES
    from quantcal.recipes.build import variant_dir, variant_meta
    from quantcal.variants.definition import VariantDef, load_variant_model
    from quantcal.engines.hf_scorer import iter_flat, score_items

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    source = resolve_source(str(tiny_llama))
    spec = parse_recipe("rtn:bits=4,group_size=16")
    first = load_variant_model(VariantDef(str(tiny_llama), spec.key), source)
    meta = variant_meta(variant_dir(source, spec))
    assert meta["recipe"] == spec.key and meta["quantized_layers"] == 14
    assert meta["bits_per_weight"] == pytest.approx(4 + 20 / 16) and 0 < meta["mean_layer_error"] < 1

    calls = []
    original = FAMILIES["rtn"].apply
    monkeypatch.setitem(FAMILIES, "rtn", FAMILIES["rtn"].__class__(FAMILIES["rtn"].params, None,
                                                                  lambda *a, **k: calls.append(1) or original(*a, **k), ""))
    second = load_variant_model(VariantDef(str(tiny_llama), spec.key), source)
    assert calls == []  # cache hit
    assert variant_dir(source, parse_recipe("rtn:bits=4,group_size=32")) != variant_dir(source, spec)

    item = Item("a", "the cat sat on the", ("mat", "dog river"), 0)

    def score(lm):  # noqa: ANN001, ANN202
        encoded = [Encoder(lm.tokenizer, 128).encode_item(0, item, " ")]
        return iter_flat(score_items(lm.model, encoded))[0].logliks
    assert score(first) == score(second)


def test_two_processes_sharing_a_cache_build_a_variant_once(tmp_path: Path, tiny_llama: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             request: pytest.FixtureRequest) -> None:
    """The second builder waits on the entry's lock and then takes the first one's entry instead of building again
    (threads hold separate open files, so ``flock`` excludes them as it does two processes)."""
    import dataclasses
    import threading

    from quantcal.recipes import FAMILIES
    from quantcal.recipes.build import build_variant

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    previous_umask = os.umask(0o022)
    request.addfinalizer(lambda: os.umask(previous_umask))
    source, spec = resolve_source(str(tiny_llama)), parse_recipe("rtn:bits=4,group_size=16")
    building, second_waits, calls = threading.Event(), threading.Event(), []
    original = FAMILIES["rtn"].apply

    def slow_apply(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        building.set()
        assert second_waits.wait(60), "the second builder never waited"
        return original(*args, **kwargs)

    monkeypatch.setitem(FAMILIES, "rtn", dataclasses.replace(FAMILIES["rtn"], apply=slow_apply))
    said: list[str] = []
    folders: list[Path] = []
    first = threading.Thread(target=lambda: folders.append(build_variant(source, spec)))
    first.start()
    assert building.wait(60)

    def note(message: str) -> None:
        said.append(message)
        if message.startswith("waiting for another process"):
            second_waits.set()
    folders.append(build_variant(source, spec, progress=note))
    first.join(60)
    assert calls == [1] and len(folders) == 2 and folders[0] == folders[1]
    for path in [folders[0], *folders[0].rglob("*")]:  # the umask's modes (022 here), not mkdtemp's 0700 or 0600
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), (path, oct(path.stat().st_mode))
    assert said == [f"waiting for another process that is building {spec.key}"]  # then the cache hit: no build


@pytest.mark.heavy
def test_gptq_variant_layer_error_below_rtn(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.recipes.build import build_variant, variant_meta

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    source = resolve_source(str(tiny_llama))
    rtn_meta = variant_meta(build_variant(source, parse_recipe("rtn:bits=3,group_size=16")))
    gptq_meta = variant_meta(build_variant(source, parse_recipe("gptq:bits=3,group_size=16,nsamples=16,seqlen=64")))
    assert gptq_meta["calibration"]["source"] == "self" and len(gptq_meta["calibration"]["sha256"]) == 16
    assert gptq_meta["mean_layer_error"] < rtn_meta["mean_layer_error"]
    assert json.dumps(gptq_meta)  # the record is plain JSON


@pytest.mark.parametrize("bits,group,axis", [(3, 32, 1), (4, 64, 1), (2, 16, 0), (8, 64, 1)])
def test_hqq_groups_have_at_most_2_pow_bits_values(bits: int, group: int, axis: int) -> None:
    pytest.importorskip("hqq")
    from quantcal.recipes import hqq

    params = dict(parse_recipe(f"hqq:bits={bits},group_size={group},axis={axis}").params)
    w = torch.randn(48, 128)
    q = hqq.roundtrip(w, params)
    assert max(row.unique().numel() for row in hqq.groups(q, params)) <= 2 ** bits
    assert float((q - w).norm() / w.norm()) < {2: 0.5, 3: 0.25, 4: 0.12, 8: 0.01}[bits]
    with pytest.raises(QuantcalError, match="does not divide"):
        hqq.roundtrip(torch.randn(3, 10), params, "tiny")


@pytest.mark.parametrize("kind,levels", [("qint8", 256), pytest.param("qint4", 16, marks=pytest.mark.heavy), ("qint2", 4)])
def test_quanto_grid_and_group_choice(kind: str, levels: int) -> None:
    pytest.importorskip("optimum.quanto")
    from quantcal.recipes import quanto

    linear = torch.nn.Linear(576, 32)  # 576 = SmolLM2's width: quanto's 128 does not divide it, it takes 96
    module = quanto.quantized_linear(linear, kind)
    q = module.qweight.dequantize()
    group = quanto.group_size(module)
    assert group == (-1 if kind == "qint8" else 96)
    rows = q.reshape(-1, 576 if group == -1 else group)
    assert max(row.unique().numel() for row in rows) <= levels
    x = torch.randn(4, 576)
    assert torch.allclose(module(x), x @ q.T + linear.bias, atol=1e-5)  # quanto's module computes with that grid


@pytest.mark.parametrize("recipe", ["quanto:qint4", "bnb:nf4", "bnb:int8"])
def test_native_mode_matches_simulated(recipe: str, tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.engines.encoding import Encoder
    from quantcal.tasks.items import Item
    from quantcal.recipes.build import variant_dir, variant_meta
    from quantcal.variants.definition import LoadOptions, VariantDef, load_variant_model
    from quantcal.engines.hf_scorer import iter_flat, score_items

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    source = resolve_source(str(tiny_llama))
    simulated = load_variant_model(VariantDef(str(tiny_llama), recipe), source, LoadOptions(dtype="float32"))
    native_spec = parse_recipe(recipe + ",mode=native")
    native = load_variant_model(VariantDef(str(tiny_llama), recipe + ",mode=native"), source, LoadOptions(dtype="float32"))
    meta = variant_meta(variant_dir(source, native_spec))
    assert meta["mode"] == "native" and not list(variant_dir(source, native_spec).glob("*.safetensors"))
    kinds = {type(m).__name__ for m in native.model.model.layers[0].modules()}
    assert kinds & {"QLinear", "Linear4bit", "Linear8bitLt"}
    item = Item("a", "the cat sat on the", ("mat", "dog river", "quietly"), 0)

    def score(lm):  # noqa: ANN001, ANN202
        encoded = [Encoder(lm.tokenizer, 128).encode_item(0, item, " ")]
        return np.array(iter_flat(score_items(lm.model, encoded))[0].logliks)
    # int8: LLM.int8() also quantizes activations at run time, which the simulated (weights-only) form does not
    tolerance = 0.05 if recipe == "bnb:int8" else 1e-4
    assert np.abs(score(simulated) - score(native)).max() < tolerance


def test_cli_quantize_reports_mode_and_gguf_fallback(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from quantcal.cli import app

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")
    native = CliRunner().invoke(app, ["quantize", "--model", str(tiny_llama), "--recipe", "quanto:qint8,mode=native"])
    assert native.exit_code == 0, native.output
    assert "native" in native.output and "none (native: built at load)" in native.output
    kquant = CliRunner().invoke(app, ["quantize", "--model", str(tiny_llama), "--recipe", "gguf:q6_k"])
    assert kquant.exit_code == 0, kquant.output
    assert "q8_0 x14" in kquant.output  # llama.cpp's fallback for Q6_K on rows not a multiple of 256
    bad = CliRunner().invoke(app, ["quantize", "--model", str(tiny_llama), "--recipe", "awq:bits=4,group_size=48"])
    assert bad.exit_code == 2 and "does not divide" in bad.output and "Traceback" not in bad.output


def test_task_text_as_calibration_source(tmp_path: Path, smol_checkpoint: Path) -> None:
    """calib=task:NAME:PATH: windows cut from the task's prompts and gold answers, seeded, the same on every call."""
    from transformers import AutoTokenizer

    from quantcal.recipes.calibration import calibration_ids, task_text
    from tests.conftest import write_jsonl

    rows = [{"question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1)], "answer": 0}
            for i in range(60)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    text = task_text(f"task:custom:{path}")
    assert text.startswith("Question: What is 0 plus 0?\nAnswer: 0\n\nQuestion: What is 1 plus 1?\nAnswer: 2")
    tokenizer = AutoTokenizer.from_pretrained(smol_checkpoint)
    a = calibration_ids(None, tokenizer, f"task:custom:{path}", 4, 32, seed=3)
    b = calibration_ids(None, tokenizer, f"task:custom:{path}", 4, 32, seed=3)
    assert a.shape == (4, 32) and torch.equal(a, b)
    assert not torch.equal(a, calibration_ids(None, tokenizer, f"task:custom:{path}", 4, 32, seed=4))
    assert "plus" in tokenizer.decode(a[0])
    with pytest.raises(QuantcalError, match="unknown task 'nope'"):
        calibration_ids(None, tokenizer, "task:nope", 4, 32, seed=0)


def test_gptq_static_groups_fit_every_scale_on_the_original_weights() -> None:
    """static_groups (AutoGPTQ's option, llmcompressor's behaviour): each group's scale comes from the weights before
    any GPTQ update; by default a group's scale is fitted on the updated weights, so later groups differ."""
    from quantcal.recipes import grid

    torch.manual_seed(0)
    w, x = torch.randn(8, 64), torch.randn(300, 64)
    h = 2 * x.T @ x / 300
    static = gptq_weight(w, h, 4, 16, False, static_groups=True)
    fitted = [grid.fit(w[:, j:j + 16].double(), 4, False) for j in range(0, 64, 16)]
    assert torch.equal(static.scales, torch.stack([s for s, _ in fitted], 1))
    assert torch.equal(static.zeros, torch.stack([z for _, z in fitted], 1))
    codes = torch.round(static.weight.double() / static.scales.repeat_interleave(16, 1) + static.zeros.repeat_interleave(16, 1))
    assert codes.min() >= 0 and codes.max() <= 15  # every weight is on its group's fixed grid
    default = gptq_weight(w, h, 4, 16, False)
    assert torch.equal(default.scales[:, 0], static.scales[:, 0])  # the first group sees no update yet
    assert not torch.equal(default.scales[:, 1:], static.scales[:, 1:])


def test_a_local_calibration_files_content_is_part_of_the_variants_key(tmp_path: Path, tiny_llama: Path) -> None:
    """Editing the file a calibrated recipe draws its windows from makes another variant (cache and store keys);
    self-generated and hub sources keep the key their spec gives."""
    from quantcal.recipes.build import variant_key

    source = resolve_source(str(tiny_llama))
    text = tmp_path / "calib.txt"
    text.write_text("some calibration prose. " * 50)
    keys = {}
    for family in ("gptq", "awq"):
        spec = parse_recipe(f"{family}:bits=4,group_size=16,calib={text}")
        keys[family] = variant_key(source, spec)
        assert variant_key(source, spec) == keys[family]
    text.write_text("other calibration prose. " * 50)
    for family in ("gptq", "awq"):
        assert variant_key(source, parse_recipe(f"{family}:bits=4,group_size=16,calib={text}")) != keys[family]
    task = tmp_path / "piqa.jsonl"
    task.write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}) + "\n")
    before = variant_key(source, parse_recipe(f"gptq:bits=4,group_size=16,calib=task:piqa:{task}"))
    task.write_text(json.dumps({"goal": "h", "sol1": "a", "sol2": "b", "label": 0}) + "\n")
    assert variant_key(source, parse_recipe(f"gptq:bits=4,group_size=16,calib=task:piqa:{task}")) != before
    from quantcal.recipes import recipe_identity
    assert recipe_identity(parse_recipe("gptq:bits=4,group_size=16")) == {}
    assert recipe_identity(parse_recipe("awq:bits=4,group_size=16,calib=c4")) == {}
