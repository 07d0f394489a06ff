"""Compression recipes: one spec string each (``rtn:bits=4,group_size=64``, ``gptq:bits=4``, ``awq:bits=4``,
``hqq:bits=3``, ``gguf:q4_0``, ``bnb:nf4``, ``quanto:qint4``), applied to a float model in simulated mode (weights on
the method's exact grid, stored in float); families with a ``native`` loader also run with the library's own
quantized modules (``mode=native``). ``mixed`` combines two of them per unit, as a sensitivity run ranks the units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


from dataclasses import replace

from quantcal.errors import QuantcalError
from quantcal.recipes import (awq_recipe, bnb, calibration, fp4, fp8, grid, gguf_types, gptq_recipe, hqq, kv_cache, mixed,
                              quanto, rtn, w8a8)
from quantcal.recipes.spec import Param, RecipeSpec, parse_spec, split_top_level


@dataclass(frozen=True)
class Family:
    params: dict[str, Param]
    positional: str | None
    apply: Callable[..., dict[str, Any]]
    summary: str
    native: Optional[Callable[..., Any]] = None  # (source, params, dtype, device) -> LoadedModel
    library: str = "quantcal"
    #: Bits per weight of one linear with ``in_features`` inputs: ``(params, in_features) -> bits`` (used by ``mixed``).
    layer_bits: Optional[Callable[[dict[str, Any], int], float]] = None
    #: Checks across parameters, run when a spec is parsed (before anything is built).
    validate: Optional[Callable[[dict[str, Any]], None]] = None
    #: What identifies a variant beyond its spec text (the content of files it names), for cache and store keys.
    identity: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None
    #: Items a variant must not be evaluated on, and why: ``params -> (zero-shot content hashes, reason)``.
    forbidden: Optional[Callable[[dict[str, Any]], tuple[frozenset[str], str]]] = None


def _grid_bits(sym: Optional[bool] = None) -> Callable[[dict[str, Any], int], float]:
    def bits(params: dict[str, Any], in_features: int) -> float:
        return grid.bits_per_weight(params["bits"], params["group_size"], in_features,
                                    params["sym"] if sym is None else sym)
    return bits


FAMILIES: dict[str, Family] = {
    "rtn": Family(rtn.PARAMS, None, rtn.apply, "round-to-nearest, group-wise integer grid", layer_bits=_grid_bits()),
    "gptq": Family(gptq_recipe.PARAMS, None, gptq_recipe.apply, "GPTQ (Frantar et al. 2022), in-house, calibrated",
                   layer_bits=_grid_bits(), validate=gptq_recipe.validate, identity=calibration.identity),
    "awq": Family(awq_recipe.PARAMS, None, awq_recipe.apply,
                  "AWQ (Lin et al. 2024), in-house: activation-aware scales + clipping, calibrated",
                  layer_bits=_grid_bits(sym=False), identity=calibration.identity),
    "hqq": Family(hqq.PARAMS, None, hqq.apply, "HQQ half-quadratic zero-point optimisation (hqq library), no calibration",
                  library="hqq", layer_bits=lambda params, _: hqq.bits_per_weight(params)),
    "gguf": Family(gguf_types.PARAMS, "type", gguf_types.apply, "llama.cpp formats: the gguf package; K-quants ported from llama.cpp", library="gguf"),
    "bnb": Family(bnb.PARAMS, "type", bnb.apply, "bitsandbytes NF4 / FP4 / int8", bnb.load_native, "bitsandbytes",
                  layer_bits=lambda params, in_features: bnb.bits_per_weight(params, in_features)),
    "quanto": Family(quanto.PARAMS, "type", quanto.apply, "optimum-quanto qint8 / qint4 / qint2", quanto.load_native,
                     "optimum-quanto"),
    "fp8": Family(fp8.PARAMS, None, fp8.apply, "FP8 E4M3 weights and activations (llm-compressor's FP8_DYNAMIC; "
                  "static or no activation quantization as options)", validate=fp8.validate,
                  identity=calibration.identity),
    "w8a8": Family(w8a8.PARAMS, None, w8a8.apply, "INT8 weights per channel and activations per token "
                   "(compressed-tensors' W8A8; smoothquant=ALPHA migrates activation outliers first)",
                   validate=w8a8.validate, identity=calibration.identity),
    "nvfp4": Family(fp4.NVFP4_PARAMS, None, fp4.apply_nvfp4, "NVFP4: E2M1 in blocks of 16 with FP8 scales, weights and "
                    "activations (acts=none: W4A16)", validate=fp4.validate_nvfp4, identity=fp4.identity),
    "mxfp4": Family(fp4.MXFP4_PARAMS, None, fp4.apply_mxfp4, "MXFP4: E2M1 in blocks of 32 with E8M0 scales, weights and "
                    "activations (acts=none: W4A16)"),
    "mixed": Family(mixed.PARAMS, None, mixed.apply,
                    "calibration-preserving mixed precision: the units a sensitivity run ranks most harmful kept at a "
                    "higher-precision recipe, within a bits-per-weight budget",
                    validate=mixed.validate, identity=mixed.identity, forbidden=mixed.forbidden_items),
    "kv": Family(kv_cache.PARAMS, "type", kv_cache.apply, "a quantized KV cache (FP8 or INT8 keys and values, vLLM's "
                 "kv_cache_dtype); compose with a weight recipe: awq:bits=4,group_size=64+kv:fp8",
                 validate=kv_cache.validate, identity=calibration.identity),
}


def parse_recipe(text: str) -> RecipeSpec:
    """A recipe spec, parsed and checked (every key and value, and each family's checks across parameters).
    ``WEIGHTS+kv:FORMAT`` composes a weight recipe with a KV-cache format (applied left to right: the weights are
    built, then served with that cache); it is one variant, with one key."""
    parts = [p.strip() for p in split_top_level(text, "+")]
    specs = [_parse_one(part) for part in parts]
    if len(specs) == 1:
        return specs[0]
    if len(specs) != 2 or specs[0].family == "kv" or specs[1].family != "kv":
        raise QuantcalError(f"recipe {text!r}: '+' composes one weight recipe with a KV-cache format, in that order "
                            "(awq:bits=4,group_size=64+kv:fp8); two weight recipes do not compose")
    return replace(specs[0], kv=specs[1])


def _parse_one(text: str) -> RecipeSpec:
    if not text:
        raise QuantcalError("recipe: an empty part (a '+' with nothing on one side)")
    spec = parse_spec(text, {name: (f.params, f.positional) for name, f in FAMILIES.items()})
    check = FAMILIES[spec.family].validate
    if check is not None:
        check(dict(spec.params))
    return spec


def recipe_identity(spec: RecipeSpec) -> dict[str, Any]:
    """What identifies a recipe beyond its canonical key (a file's content it names), empty for most."""
    identity = FAMILIES[spec.family].identity
    own = identity(dict(spec.params)) if identity is not None else {}
    cache = recipe_identity(spec.kv) if spec.kv is not None else {}
    return own | ({"kv": cache} if cache else {})


__all__ = ["FAMILIES", "RecipeSpec", "parse_recipe", "recipe_identity"]
