"""Deployable checkpoints beyond compressed-tensors: bitsandbytes variants in transformers' bnb serialization, a
study's variant exported in its quantized format with its fitted temperature, and the study's ``export`` block."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from quantcal.errors import QuantcalError
from tests.test_cli_bad_input import assert_user_error, run

pytest.importorskip("compressed_tensors")
pytest.importorskip("bitsandbytes")


def _log_probs(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 1000, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits.float(), -1)


@pytest.mark.parametrize("recipe", ["bnb:nf4", "bnb:int8"])
def test_bnb_export_computes_the_simulated_variant(recipe: str, tiny_llama: Path, tmp_path: Path, env_cache: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from quantcal import api
    from quantcal.sources.models import load_model, resolve_source

    exported = api.export_model(str(tiny_llama), recipe, tmp_path / "bnb")
    config = json.loads((tmp_path / "bnb" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert exported.format == "bitsandbytes" and exported.layers == 14
    record = json.loads((tmp_path / "bnb" / "quantcal-variant.json").read_text())
    assert record["recipe"] == exported.recipe and record["export"]["bits_per_weight_on_disk"] == exported.bits_per_weight
    # the codes and their scales on disk are the variant's bits per weight; the code book and quant state add a
    # constant per layer (large for a 32-wide toy layer, negligible for a real one: benchmarks/packed_export.py)
    names = [n for n, m in torch.nn.Module.named_modules(load_model(resolve_source(str(tmp_path / "bnb"))).model)
             if type(m).__name__ in ("Linear4bit", "Linear8bitLt")]
    assert len(names) == 14
    with safe_open(str(tmp_path / "bnb" / "model.safetensors"), "pt") as f:
        core = sum(f.get_tensor(f"{n}.{part}").numel() * f.get_tensor(f"{n}.{part}").element_size()
                   for n in names for part in (("weight", "weight.absmax") if "nf4" in recipe else ("weight", "SCB")))
        weights = sum(f.get_tensor(f"{n}.weight").numel() * (2 if "nf4" in recipe else 1) for n in names)
    assert 8 * core / weights == pytest.approx(record["bits_per_weight"], rel=1e-9)
    assert exported.bits_per_weight > record["bits_per_weight"]
    simulated = AutoModelForCausalLM.from_pretrained(api.quantize(str(tiny_llama), recipe).path, dtype=torch.float32).eval()
    deployed = _log_probs(load_model(resolve_source(str(tmp_path / "bnb")), dtype="float32").model)
    if recipe == "bnb:nf4":  # the same grid, dequantized and multiplied in float32
        assert (_log_probs(simulated) - deployed).abs().max() < 1e-4
    else:  # LLM.int8()'s module rounds activations to float16 (and splits outliers): the native variant, not the
        # simulated one (weights only), is what the checkpoint runs
        from quantcal.recipes import parse_recipe
        from quantcal.recipes.bnb import load_native

        native = load_native(resolve_source(str(tiny_llama)), dict(parse_recipe(recipe).params), dtype="float32").model
        assert torch.equal(_log_probs(native), deployed)
        assert 0 < (_log_probs(simulated) - deployed).abs().max() < 0.05


def test_export_model_refuses_recipes_without_a_format(tiny_llama: Path, tmp_path: Path, env_cache: Path) -> None:
    from quantcal import api

    for recipe in ("hqq:bits=4", "gptq:bits=4,group_size=16,desc_act=true", "quanto:qint4", "bnb:nf4,blocksize=128",
                   "bnb:nf4+kv:fp8"):
        with pytest.raises(QuantcalError, match="no quantized checkpoint format"):
            api.export_model(str(tiny_llama), recipe, tmp_path / "x")
    with pytest.raises(QuantcalError, match="keeps no column order"):
        api.export_model(str(tiny_llama), "gptq:bits=4,desc_act=true,mode=native", tmp_path / "x")
    assert_user_error(run("quantize", "--model", str(tiny_llama), "--recipe", "hqq:bits=4,mode=native"), "unknown key 'mode'")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(QuantcalError, match="not an empty folder"):
        api.export_model(str(tiny_llama), "bnb:nf4", tmp_path / "full")
    assert_user_error(run("export-model", "--model", str(tiny_llama), "--recipe", "gguf:q4_0", "--out", str(tmp_path / "y")),
                      "no quantized checkpoint format")
    assert_user_error(run("export-model", "--model", str(tiny_llama), "--recipe", "rtn:bits=4,group_size=16",
                          "--out", str(tmp_path / "z"), "--dtype", "int8"), "dtype 'int8'")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


@pytest.mark.parametrize("recipe", ["rtn:bits=4,group_size=16,sym=true", "awq:bits=4,group_size=16,nsamples=4,seqlen=32"])
def test_native_integer_variant_is_its_exported_checkpoint(recipe: str, tiny_llama: Path, env_cache: Path) -> None:
    """mode=native scores the compressed-tensors checkpoint (cached once), which computes the simulated variant."""
    from quantcal import api
    from quantcal.sources.models import resolve_source
    from quantcal.variants.definition import LoadOptions, VariantDef, load_variant_model

    native = api.quantize(str(tiny_llama), f"{recipe},mode=native")
    config = json.loads((native.path / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized" and native.mode == "native"
    assert native.meta["recipe"] == native.recipe and "mode=native" in native.recipe
    simulated = api.quantize(str(tiny_llama), recipe)
    assert simulated.path != native.path and native.bits_per_weight == simulated.bits_per_weight
    source = resolve_source(str(tiny_llama))
    options = LoadOptions(dtype="float32")
    deployed = load_variant_model(VariantDef(str(tiny_llama), f"{recipe},mode=native"), source, options).model
    assert (_log_probs(deployed) - _log_probs(load_variant_model(VariantDef(str(tiny_llama), recipe), source,
                                                                 options).model)).abs().max() < 1e-4
    stamp = (native.path / "model.safetensors").stat().st_mtime_ns
    assert api.quantize(str(tiny_llama), f"{recipe},mode=native").path == native.path  # cached: not exported again
    assert (native.path / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.heavy
def test_study_exports_quantized_checkpoints_with_their_temperature(tiny_llama: Path, shared_data: Path,
                                                                   tmp_path: Path, env_cache: Path) -> None:
    from transformers import GenerationConfig

    from quantcal import api
    from quantcal.sources.models import load_model, resolve_source

    study = {"reference": str(tiny_llama), "bootstrap": {"resamples": 50}, "recalibration": {"folds": 2},
             "variants": [{"name": "rtn4", "recipe": "rtn:bits=4,group_size=16,sym=true"},
                          {"name": "nf4", "recipe": "bnb:nf4"}],
             "tasks": [{"name": "piqa", "data_file": str(shared_data / "piqa" / "validation.jsonl"), "limit": 12}],
             "export": {"variants": ["rtn4", "nf4", "reference"]}, "output": str(tmp_path / "report")}
    result = api.run_study(study)
    assert not result.failures, result.failures
    formats = {e.variant: e.format for e in result.checkpoints}
    assert formats == {"rtn4": "compressed-tensors", "nf4": "bitsandbytes", "reference": "float"}
    fitted = result.report.results["tasks"]["piqa"]["none"]["variants"]
    for exported in result.checkpoints:
        folder = tmp_path / "report" / "checkpoints" / exported.variant
        assert exported.out == folder
        temperature = fitted[exported.variant]["recalibration"]["temperature"]
        if fitted[exported.variant]["recalibration"]["at_bound"]:  # 12 toy items: a bound is possible, and then no T
            assert exported.temperature is None and "search bound" in exported.record["temperature"]["why_none"]
            continue
        assert GenerationConfig.from_pretrained(folder).temperature == pytest.approx(temperature, rel=1e-12)
        assert exported.record["temperature"]["value"] == pytest.approx(temperature, rel=1e-12)
        assert exported.record["variant"] == exported.variant
        for path in [folder, *folder.rglob("*")]:  # a server running as another user can read it (any umask up to 022)
            assert path.stat().st_mode & 0o044 == 0o044 or os.umask(os.umask(0)) & 0o044, (path, oct(path.stat().st_mode))
    packed = load_model(resolve_source(str(tmp_path / "report" / "checkpoints" / "rtn4")), dtype="float32").model
    simulated = load_model(resolve_source(str(api.quantize(str(tiny_llama), "rtn:bits=4,group_size=16,sym=true").path)),
                           dtype="float32").model
    assert (_log_probs(packed) - _log_probs(simulated)).abs().max() < 1e-4
    flat = api.export_checkpoint(tmp_path / "report", "nf4", tmp_path / "flat", form="float", require_temperature=False)
    assert flat.format == "float" and flat.record["export"] == {"format": "float", "dtype": "float32"}
    assert "quantization_config" not in json.loads((tmp_path / "flat" / "config.json").read_text())
    nf4 = load_model(resolve_source(str(api.quantize(str(tiny_llama), "bnb:nf4").path)), dtype="float32").model
    assert torch.equal(_log_probs(load_model(resolve_source(str(tmp_path / "flat")), dtype="float32").model), _log_probs(nf4))
    stamp = (tmp_path / "report" / "checkpoints" / "rtn4" / "model.safetensors").stat().st_mtime_ns
    again = api.run_study(study)  # resumed: nothing scored, nothing exported again
    assert again.checkpoints == [] and (tmp_path / "report" / "checkpoints" / "rtn4" / "model.safetensors").stat().st_mtime_ns == stamp


def test_export_checkpoint_form_and_bad_export_blocks(tiny_llama: Path, tmp_path: Path) -> None:
    from quantcal.study.deployment import checkpoint_form
    from quantcal.study.spec import StudySpec
    from quantcal.variants.definition import VariantDef

    assert checkpoint_form(VariantDef("m", "rtn:bits=4"), "auto") == "compressed-tensors"
    assert checkpoint_form(VariantDef("m", "bnb:fp4"), "quantized") == "bitsandbytes"
    assert checkpoint_form(VariantDef("m", "hqq:bits=4"), "auto") is None
    assert checkpoint_form(VariantDef("m", "rtn:bits=4"), "float") is None
    with pytest.raises(QuantcalError, match="no quantized checkpoint format"):
        checkpoint_form(VariantDef("m", "hqq:bits=4"), "quantized")
    with pytest.raises(QuantcalError, match="`form` 'packed'"):
        checkpoint_form(VariantDef("m", "rtn:bits=4"), "packed")
    base = {"reference": str(tiny_llama), "variants": [{"name": "g", "recipe": "gptq:bits=4", "repeats": 2}],
            "tasks": ["piqa"]}
    assert StudySpec(**base, export=True).exported_variants() == ["g@seed0", "g@seed1"]
    assert StudySpec(**base, export=False).export is None
    with pytest.raises(ValueError, match="no variant 'g'"):
        StudySpec(**base, export={"variants": ["g"]})
    with pytest.raises(ValueError, match="task 'boolq' is not one"):
        StudySpec(**base, export={"task": "boolq"})
    with pytest.raises(ValueError, match="form"):
        StudySpec(**base, export={"form": "gguf"})


@pytest.mark.parametrize("recipe, fmt, exact", [
    ("fp8", "float-quantized", True), ("fp8:weights=tensor,acts=none", "float-quantized", True),
    ("fp8:weights=block128", "float-quantized", True),
    ("fp8:acts=tensor_static,nsamples=2,seqlen=32", "float-quantized", True),
    ("w8a8", "int-quantized", True), ("w8a8:smoothquant=0.5,nsamples=2,seqlen=32", "int-quantized", True)])
def test_activation_formats_export_as_compressed_tensors_and_reload_as_simulated(
        recipe: str, fmt: str, exact: bool, tiny_llama: Path, tmp_path: Path, env_cache: Path) -> None:
    """Issue 33: fp8 and w8a8 written as compressed-tensors float-/int-quantized checkpoints (the library's own
    compressors write the codes); transformers reloads them, quantizing activations as the config says, and
    computes the simulated variant exactly (SmoothQuant's 1/s folded into the norms in both, as a deployment does)."""
    import json

    from transformers import AutoModelForCausalLM

    from quantcal import api
    from quantcal.recipes import parse_recipe
    from quantcal.sources.models import resolve_source
    from quantcal.variants.definition import LoadOptions, VariantDef, load_variant_model

    out = tmp_path / "out"
    exported = api.export_model(str(tiny_llama), recipe, out)
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["format"] == fmt and config["ignore"] == ["lm_head"]
    group = config["config_groups"]["group_0"]
    assert group["weights"]["num_bits"] == 8 and (group.get("input_activations") is None) == ("acts=none" in recipe)
    assert 8 < exported.bits_per_weight <= 9  # one byte per weight and a float32 scale per row (32 columns here)
    spec = parse_recipe(recipe)
    simulated = load_variant_model(VariantDef(str(tiny_llama), spec.key), resolve_source(str(tiny_llama)),
                                   LoadOptions(dtype="float32")).model
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, 1000, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = simulated(ids).logits, loaded(ids).logits
    if exact:
        assert torch.equal(a, b)
    else:
        assert 0 < float((a - b).abs().max()) < 5e-3


def _simulated_and_reloaded(tiny_llama: Path, recipe: str, out: Path, dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the simulated variant and of transformers' reload of its exported checkpoint, in ``dtype``."""
    from transformers import AutoModelForCausalLM

    from quantcal.sources.models import resolve_source
    from quantcal.variants.definition import LoadOptions, VariantDef, load_variant_model

    simulated = load_variant_model(VariantDef(str(tiny_llama), recipe), resolve_source(str(tiny_llama)),
                                   LoadOptions(dtype=dtype)).model
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=getattr(torch, dtype)).eval()
    ids = torch.randint(0, 1000, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return simulated(ids).logits.float(), loaded(ids).logits.float()


@pytest.mark.parametrize("recipe", ["nvfp4:nsamples=2,seqlen=32", "nvfp4:acts=none", "mxfp4",
                                    "mxfp4:acts=none,scale_rounding=floor"])
def test_microscaling_formats_export_as_compressed_tensors(recipe: str, tiny_llama: Path, tmp_path: Path,
                                                           env_cache: Path) -> None:
    """Issue 33: nvfp4 / mxfp4 written as compressed-tensors nvfp4- / mxfp4-pack-quantized checkpoints: the block
    scales are recovered from the built weights and compressed-tensors' compressor writes the codes; the exporter
    requires compressed-tensors' own dequantization (float32) to give the built weights back bit for bit.
    transformers loads these only in bfloat16 on CPU (compressed-tensors unpacks FP4 codes to bfloat16) and there
    computes the bfloat16 simulation exactly, except NVFP4's activations: compressed-tensors takes a block's maximum
    / 6 in the activations' dtype (bfloat16) before the global scale, quantcal in float32 (as the kernels do); in
    float32 the two activation quantizers are equal (checked on compressed-tensors' own forward_quantize)."""
    import json

    from compressed_tensors.quantization import QuantizationStatus, preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    from quantcal import api
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.number_formats import fake_nvfp4

    out = tmp_path / "out"
    exported = api.export_model(str(tiny_llama), recipe, out)
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    spec = parse_recipe(recipe)
    assert config["format"] == f"{spec.family}-pack-quantized" and "kv_cache_scheme" not in config
    group = config["config_groups"]["group_0"]
    assert group["weights"]["num_bits"] == 4 and (group.get("input_activations") is None) == ("acts=none" in recipe)
    assert 4 < exported.bits_per_weight < 5  # half a byte per weight and a one-byte scale per block
    a, b = _simulated_and_reloaded(tiny_llama, spec.key, out, "bfloat16")
    if recipe.startswith("nvfp4:nsamples"):
        assert 0 < float((a - b).abs().max()) < 0.1
        x = torch.randn(4, 7, 64, generator=torch.Generator().manual_seed(1)) * 3
        module = torch.nn.Linear(64, 8)
        module.quantization_status = QuantizationStatus.FROZEN
        amax = x.abs().amax() * 0.8  # a static global amax below the input's own: blocks saturate as in use
        module.input_global_scale = torch.nn.Parameter((448 * 6 / amax).reshape(1), requires_grad=False)
        args = preset_name_to_scheme("NVFP4", ["Linear"]).input_activations
        assert torch.equal(forward_quantize(module, x, "input", args), fake_nvfp4(x, global_amax=amax))
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("recipe, fmt", [
    ("kv:fp8", "dense"), ("fp8+kv:fp8", "float-quantized"),
    ("w8a8+kv:int8,scale=calibrated,per=head,nsamples=2,seqlen=32", "int-quantized"),
    ("rtn:bits=4,group_size=16,sym=true+kv:fp8,scale=calibrated,nsamples=2,seqlen=32", "pack-quantized")])
def test_kv_part_exports_as_kv_cache_scheme_with_the_scorers_scales(recipe: str, fmt: str, tiny_llama: Path,
                                                                   tmp_path: Path, env_cache: Path) -> None:
    """Issue 33: a kv: part (or kv: alone) written as the config's kv_cache_scheme with every attention layer's
    k_scale / v_scale: the scales quantcal's scorer uses for that variant, rounded by compressed-tensors' own
    forward_quantize exactly as quantcal rounds the cache. The weights reload as their simulation does; this
    transformers (5.25, attention argument `cache`) is not one compressed-tensors 0.20 hooks the cache of, so the
    reloaded model leaves its cache in float (vLLM reads the scheme itself)."""
    import json

    from compressed_tensors.quantization import QuantizationArgs, QuantizationStatus
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize
    from safetensors.torch import load_file

    from quantcal import api
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.kv_cache import attention_layers, round_to
    from quantcal.sources.models import resolve_source
    from quantcal.variants.definition import LoadOptions, VariantDef, load_variant_model

    out = tmp_path / "out"
    exported = api.export_model(str(tiny_llama), recipe, out)
    spec = parse_recipe(recipe)
    kv = spec if spec.family == "kv" else spec.kv
    assert exported.recipe == spec.key
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["format"] == fmt
    args = QuantizationArgs(**config["kv_cache_scheme"])
    assert args.strategy == ("attn_head" if kv.params["per"] == "head" else "tensor") and args.num_bits == 8
    tensors = load_file(str(out / "model.safetensors"))
    scored = load_variant_model(VariantDef(str(tiny_llama), spec.key), resolve_source(str(tiny_llama)),
                                LoadOptions(dtype="float32")).model
    names = {id(m): n for n, m in scored.named_modules()}
    x = torch.randn(2, scored.config.num_key_value_heads, 5, 16, generator=torch.Generator().manual_seed(2)) * 20
    for layer in attention_layers(scored):
        name, cache = names[id(layer)], layer.quantcal_kv
        for key, scale in (("k_scale", cache.key_scale), ("v_scale", cache.value_scale)):
            written = tensors[f"{name}.{key}"]
            assert torch.equal(written.flatten(), torch.as_tensor(scale, dtype=torch.float32).flatten())
            module = torch.nn.Module()
            module.quantization_status = QuantizationStatus.FROZEN
            setattr(module, key, torch.nn.Parameter(written, requires_grad=False))
            ours = round_to(x, kv.params["type"], torch.as_tensor(scale, dtype=torch.float32))
            assert torch.equal(forward_quantize(module, x, key[0], args), ours)
    weights = spec.weights.key if spec.family != "kv" else None
    plain = load_variant_model(VariantDef(str(tiny_llama), weights), resolve_source(str(tiny_llama)),
                               LoadOptions(dtype="float32")).model
    a, b = _simulated_and_reloaded(tiny_llama, spec.key, out, "float32")
    ids = torch.randint(0, 1000, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(plain(ids).logits, b)  # the weights as simulated; the cache unhooked (docstring)
    assert not torch.equal(a, b)  # the simulation rounds the cache


@pytest.mark.parametrize("writer", ["export_packed", "export_activation_quantized", "export_microscaling"])
def test_exporters_refuse_a_folder_that_is_not_a_variant(writer: str, tmp_path: Path) -> None:
    import importlib

    module = {"export_packed": "packed_checkpoint", "export_activation_quantized": "activation_checkpoint",
              "export_microscaling": "microscaling_checkpoint"}[writer]
    export = getattr(importlib.import_module(f"quantcal.checkpoints.{module}"), writer)
    (tmp_path / "model").mkdir()
    with pytest.raises(QuantcalError, match="not a built variant"):
        export(tmp_path / "model", tmp_path / "out")
    assert not (tmp_path / "out").exists()
