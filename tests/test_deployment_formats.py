"""FP8, W8A8, NVFP4 and MXFP4 variants: weights quantized at build time, activations at run time, and the packed
scorer (with shared prefixes) still equal to a plain forward of the same quantized model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantcal.errors import QuantcalError
from quantcal.recipes import parse_recipe
from quantcal.recipes.layers import block_linears
from quantcal.recipes.number_formats import fake_fp8, fake_int8, fake_mxfp4
from quantcal.sources.models import load_model, resolve_source
from quantcal.variants.definition import LoadOptions, VariantDef, load_variant_model
from tests.test_scoring import assert_packed_and_shared_prefixes_exact

CALIB = "nsamples=2,seqlen=32"


def by_hand(float_model: torch.nn.Module, weight: callable, act: callable) -> torch.nn.Module:  # noqa: F821
    """The float model with every block linear's weight and input quantized by hand (no recipe code)."""
    for _, linear in block_linears(float_model):
        linear.weight.data = weight(linear.weight.data)
        linear.register_forward_pre_hook(lambda module, args: (act(args[0]),))
    return float_model


@pytest.mark.parametrize("recipe, weight, act", [
    ("fp8", lambda w: fake_fp8(w, -1), lambda x: fake_fp8(x, -1)),
    ("fp8:acts=none", lambda w: fake_fp8(w, -1), lambda x: x),
    ("fp8:weights=tensor", lambda w: fake_fp8(w, None), lambda x: fake_fp8(x, -1)),
    ("w8a8", lambda w: fake_int8(w, -1), lambda x: fake_int8(x, -1)),
    ("mxfp4", fake_mxfp4, fake_mxfp4),
])
def test_a_variant_computes_what_its_format_says(tiny_llama: Path, env_cache: Path, recipe: str, weight, act) -> None:  # noqa: ANN001
    source = resolve_source(str(tiny_llama))
    variant = load_variant_model(VariantDef(str(tiny_llama), parse_recipe(recipe).key), source, LoadOptions(dtype="float32"))
    reference = by_hand(load_model(source, dtype="float32").model, weight, act)
    ids = torch.randint(0, 1000, (2, 24))
    with torch.inference_mode():
        assert torch.equal(variant.model(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("recipe", ["fp8:acts=tensor_static," + CALIB, "nvfp4:" + CALIB, "w8a8", "mxfp4",
                                    "w8a8:smoothquant=0.5," + CALIB])
@pytest.mark.parametrize("fixture", ["tiny_llama", pytest.param("tiny_gemma", marks=pytest.mark.heavy)])
def test_packed_and_shared_prefix_scoring_stay_exact_with_quantized_activations(
        fixture: str, recipe: str, env_cache: Path, request: pytest.FixtureRequest) -> None:
    """Every activation scheme is token-local, so a packed row or a shared prefix gives each choice the
    log-likelihood of its own plain forward through the same quantized model.

    In float64: packing changes matmul shapes, so the float sums before a quantizer differ in their last bits, and in
    float32 such a difference occasionally moves a value across a rounding boundary of the 4- or 8-bit grid (one
    code, a 2e-4 change of a log-likelihood seen once under load). Token-locality is what is tested; float64 makes
    that boundary case vanishingly rare without loosening the tolerance."""
    path = request.getfixturevalue(fixture)
    lm = load_variant_model(VariantDef(str(path), parse_recipe(recipe).key), resolve_source(str(path)),
                            LoadOptions(dtype="float32"))
    lm.model.double()
    assert_packed_and_shared_prefixes_exact(lm)


def test_static_scales_are_recorded_and_change_the_output(tiny_llama: Path, env_cache: Path) -> None:
    from quantcal.recipes.build import build_variant, variant_meta

    source = resolve_source(str(tiny_llama))
    meta = variant_meta(build_variant(source, parse_recipe("fp8:acts=tensor_static," + CALIB)))
    amax = meta["runtime"]["activations"]["amax"]
    assert meta["runtime"]["activations"]["per"] == "tensor_static"
    assert len(amax) == len(list(block_linears(load_model(source).model))) and all(v > 0 for v in amax.values())
    assert 8 < meta["bits_per_weight"] < 9


@pytest.mark.parametrize("recipe, words", [
    ("nvfp4:acts=none,block=8", "unknown"),
    ("mxfp4:scale_rounding=up", "scale_rounding"),
    ("fp8:weights=row", "weights"),
])
def test_bad_format_parameters_are_one_line(recipe: str, words: str) -> None:
    with pytest.raises(QuantcalError, match=words):
        parse_recipe(recipe)


def test_a_block_that_does_not_divide_a_layer_is_refused(tmp_path: Path, smol_checkpoint: Path,
                                                         env_cache: Path) -> None:
    """A model whose hidden size is not a multiple of 32 cannot take MXFP4 blocks: one line naming the layer."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import _save_tiny

    vocab = json.loads((smol_checkpoint / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    path = _save_tiny(tmp_path / "odd", LlamaForCausalLM(config).eval(), smol_checkpoint)
    with pytest.raises(QuantcalError, match="48 input features, not a multiple of the 32-value block"):
        load_variant_model(VariantDef(str(path), "mxfp4"), resolve_source(str(path)))


@pytest.mark.parametrize("recipe, scheme, kv_dtype", [("w8a8", "int-quantized", "auto"),
                                                     ("kv:fp8", "dense", "fp8"),
                                                     ("fp8+kv:fp8,scale=calibrated,nsamples=2,seqlen=32",
                                                      "float-quantized", "fp8")])
def test_vllm_serves_a_run_time_format_from_its_exported_checkpoint(tiny_llama: Path, env_cache: Path,
                                                                     monkeypatch: pytest.MonkeyPatch, recipe: str,
                                                                     scheme: str, kv_dtype: str) -> None:
    """With ``backend`` vllm, quantized activations and KV caches run on vLLM's own kernels: the variant's
    compressed-tensors checkpoint (exported once into the cache, the KV cache's scales in it) is what vLLM loads,
    with ``kv_cache_dtype=fp8`` for a kv: part; a second load finds the same checkpoint. vLLM itself is replaced by
    a recorder here (the real engine runs in the slow tier and the GPU suite)."""
    import importlib.util
    import json

    from quantcal.engines import vllm as vllm_engine

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    calls: list[dict] = []

    class FakeLLM:
        def __init__(self, **kwargs) -> None:  # noqa: ANN003
            calls.append(kwargs)

    monkeypatch.setattr(vllm_engine, "require_vllm", lambda: type("vllm", (), {"LLM": FakeLLM}))
    for _ in range(2):
        load_variant_model(VariantDef(str(tiny_llama), recipe), resolve_source(str(tiny_llama)), LoadOptions(backend="vllm"))
    assert len(calls) == 2 and calls[0]["model"] == calls[1]["model"] and calls[0]["model"].endswith("-served")
    assert calls[0].get("kv_cache_dtype", "auto") == kv_dtype
    config = json.loads((Path(calls[0]["model"]) / "config.json").read_text())["quantization_config"]
    assert config["format"] == scheme and ("kv_cache_scheme" in config) == (kv_dtype == "fp8")


def test_vllm_has_no_int8_kv_cache(tiny_llama: Path, env_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    with pytest.raises(QuantcalError, match="vLLM's KV cache has no INT8 format"):
        load_variant_model(VariantDef(str(tiny_llama), "kv:int8"), resolve_source(str(tiny_llama)),
                           LoadOptions(backend="vllm"))


def test_vllm_refuses_a_built_run_time_variant_folder(tiny_llama: Path, env_cache: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A built w8a8 variant's folder given to vLLM as the model would score its weights alone (the activation scheme
    lives in quantcal's record, which vLLM does not read): refused in one line that names the export; a weight-only
    variant's folder is vLLM's to load as it is."""
    import importlib.util

    from quantcal.engines import vllm as vllm_engine
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.build import build_variant

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    calls: list[dict] = []
    monkeypatch.setattr(vllm_engine, "require_vllm",
                        lambda: type("vllm", (), {"LLM": lambda **kw: calls.append(kw)}))
    source = resolve_source(str(tiny_llama))
    folder = build_variant(source, parse_recipe("w8a8"))
    with pytest.raises(QuantcalError, match="quantizes its activations at run time.*export-model"):
        load_variant_model(VariantDef(str(folder)), resolve_source(str(folder)), LoadOptions(backend="vllm"))
    assert not calls
    weights_only = build_variant(source, parse_recipe("rtn:bits=4,group_size=16"))
    load_variant_model(VariantDef(str(weights_only)), resolve_source(str(weights_only)), LoadOptions(backend="vllm"))
    assert len(calls) == 1 and calls[0]["model"] == str(weights_only)


def test_smoothquant_computes_q_of_x_over_s_times_q_of_w_s(tiny_llama: Path, env_cache: Path) -> None:
    """w8a8:smoothquant=0.5: each q/k/v and gate/up linear computes ``Q_a(x / s) Q_w(W diag(s))^T`` with
    ``s_j = max|X_j|^a / max|W_:j|^(1-a)`` from the float model's calibration inputs (recomputed here by hand), the
    ``1 / s`` folded into the norms that produce x as a deployment does; o_proj and down_proj, which read inputs of
    their own, are not smoothed."""
    from quantcal.recipes import calibration
    from quantcal.recipes.build import build_variant, variant_meta
    from quantcal.recipes.smoothquant import decode

    recipe = parse_recipe("w8a8:smoothquant=0.5," + CALIB)
    source = resolve_source(str(tiny_llama))
    meta = variant_meta(build_variant(source, recipe))
    smooth = {k: decode(v) for k, v in meta["runtime"]["activations"]["smooth"].items()}
    float_model = load_model(source, dtype="float32").model
    names = [n for n, _ in block_linears(float_model)]
    assert sorted(smooth) == sorted(n for n in names if n.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))
    assert meta["smoothquant"] == {"alpha": 0.5, "smoothed_linears": len(smooth)}

    ids = calibration.params_ids(float_model, load_model(source).tokenizer, dict(recipe.params), source.fingerprint)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: inputs.__setitem__(
        n, torch.maximum(inputs[n], args[0].abs().reshape(-1, args[0].shape[-1]).amax(0)) if n in inputs
        else args[0].abs().reshape(-1, args[0].shape[-1]).amax(0))) for n, m in block_linears(float_model)]
    with torch.inference_mode():
        for start in range(0, ids.shape[0], 4):
            float_model(ids[start:start + 4], use_cache=False)
    for h in hooks:
        h.remove()
    modules = dict(block_linears(float_model))
    layer0 = names[0].rsplit(".", 1)[0]  # model.layers.0.self_attn
    qkv = [f"{layer0}.{k}" for k in ("q_proj", "k_proj", "v_proj")]
    w_max = torch.stack([modules[n].weight.abs().amax(0) for n in qkv]).amax(0)
    expected = inputs[qkv[0]].clamp_min(1e-5).pow(0.5) / w_max.pow(0.5)
    assert torch.allclose(smooth[qkv[0]], expected, rtol=1e-6) and all(torch.equal(smooth[n], smooth[qkv[0]]) for n in qkv)

    variant = load_variant_model(VariantDef(str(tiny_llama), recipe.key), source, LoadOptions(dtype="float32"))
    for name, linear in block_linears(float_model):  # by hand: no recipe code
        s = smooth.get(name)
        linear.weight.data = fake_int8(linear.weight.data * s if s is not None else linear.weight.data, -1)
        linear.register_forward_pre_hook(lambda module, args: (fake_int8(args[0], -1),))
    for i, layer in enumerate(float_model.model.layers):  # 1/s folded into the norms that feed q/k/v and gate/up
        layer.input_layernorm.weight.data = layer.input_layernorm.weight.data / smooth[f"model.layers.{i}.self_attn.q_proj"]
        layer.post_attention_layernorm.weight.data = (layer.post_attention_layernorm.weight.data
                                                      / smooth[f"model.layers.{i}.mlp.gate_proj"])
    test_ids = torch.randint(0, 1000, (2, 24))
    with torch.inference_mode():
        assert torch.equal(variant.model(test_ids).logits, float_model(test_ids).logits)


def test_smoothquant_moves_an_outlier_channel_out_of_the_activation_quantizer() -> None:
    """The point of SmoothQuant: an input channel 100x larger than the rest makes per-token INT8 activations coarse
    for every other channel; dividing it out (alpha 0.5) lowers the W8A8 output error of the linear."""
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    x[:, 3] *= 100.0
    w = torch.randn(32, 64) * 0.05
    exact = x @ w.T
    plain = fake_int8(x, -1) @ fake_int8(w, -1).T
    s = x.abs().amax(0).pow(0.5) / w.abs().amax(0).pow(0.5)
    smoothed = fake_int8(x / s, -1) @ fake_int8(w * s, -1).T
    assert torch.allclose((x / s) @ (w * s).T, exact, rtol=1e-4, atol=1e-4)  # the same product in float
    error = lambda y: float((y - exact).norm() / exact.norm())  # noqa: E731
    assert error(smoothed) < 0.5 * error(plain)


@pytest.mark.parametrize("recipe, words", [("w8a8:acts=none,smoothquant=0.5", "needs acts=token"),
                                           ("w8a8:smoothquant=1.5", "out of range")])
def test_smoothquant_refusals(recipe: str, words: str) -> None:
    with pytest.raises(QuantcalError, match=words):
        parse_recipe(recipe)


def test_a_built_variant_folder_given_as_the_model_keeps_its_activation_quantizers(tiny_llama: Path, env_cache: Path) -> None:
    """`--model <the w8a8 variant's cache folder>` computes W8A8, as `--recipe w8a8` does (its record's run-time
    part is part of the variant; before, such a folder scored as W8A16)."""
    from quantcal.recipes.build import build_variant

    source = resolve_source(str(tiny_llama))
    folder = build_variant(source, parse_recipe("w8a8"))
    by_recipe = load_variant_model(VariantDef(str(tiny_llama), "w8a8"), source, LoadOptions(dtype="float32")).model
    by_folder = load_variant_model(VariantDef(str(folder)), resolve_source(str(folder)), LoadOptions(dtype="float32")).model
    ids = torch.randint(0, 1000, (2, 24))
    with torch.inference_mode():
        assert torch.equal(by_recipe(ids).logits, by_folder(ids).logits)


def test_nvfp4_fused_linears_share_one_global_scale(tiny_llama: Path, env_cache: Path) -> None:
    """vLLM runs q/k/v and gate/up as one GEMM each, so NVFP4 gives each group one global scale (its largest weight
    magnitude), as llmcompressor writes it; o_proj and down_proj keep their own. Every block of 16 is then on that
    scale's grid (checked by hand against fake_nvfp4 with the group's amax)."""
    from quantcal.recipes.build import build_variant, variant_meta
    from quantcal.recipes.number_formats import fake_nvfp4

    source = resolve_source(str(tiny_llama))
    built = build_variant(source, parse_recipe("nvfp4:acts=none"))
    amax = variant_meta(built)["weight_amax"]
    original = dict(block_linears(load_model(source, "float32").model))
    variant = dict(block_linears(load_model(resolve_source(str(built)), "float32").model))
    for group in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("o_proj",), ("down_proj",)):
        for block in {n.rsplit(".", 1)[0] for n in original if n.endswith(group[0])}:
            names = [f"{block}.{g}" for g in group]
            top = max(float(original[n].weight.abs().amax()) for n in names)
            assert all(amax[n] == top for n in names)
            for n in names:
                assert torch.equal(variant[n].weight, fake_nvfp4(original[n].weight, global_amax=torch.tensor(top)))
