"""The ``kv`` recipe: a quantized KV cache, as a serving engine stores it (vLLM's ``kv_cache_dtype``).

``kv:fp8`` keeps every attention layer's keys (after the rotary embedding, as vLLM stores them) and values in FP8
E4M3, ``kv:int8`` in INT8, each with a fixed scale: ``x_q = Q(x / s) * s``, where ``Q`` rounds to the format's grid
(E4M3: round to nearest even, saturating at ±448; INT8: round half to even, clamped to [-128, 127]; with
``rounding=toward_zero`` each goes to the grid value toward zero instead, as vLLM's CPU attention kernels store an
FP8 cache: every byte of their keys and values matches that rule, ``benchmarks/vllm_kv_rounding.py``). The scale is
1.0 by default (vLLM's uncalibrated default, ``kv_cache_dtype=fp8`` without scales), or ``scale=calibrated``: the
largest magnitude over the calibration windows divided by the format's largest value (448, or 127), per layer
(``per=tensor``, llm-compressor's ``kv_cache_scheme``) or per KV head (``per=head``). Calibrated scales are measured
on the model being served (its own weights, quantized or not), with its own self-generated windows by default.

It composes with any weight recipe: ``awq:bits=4,group_size=64+kv:fp8`` is the AWQ variant served with an FP8 cache
(:func:`quantcal.recipes.parse_recipe`); ``kv:fp8`` alone is the reference with an FP8 cache. Nothing is built: the
weights are the weight recipe's (or the reference's), and :func:`install` puts the cache's rounding into the model's
forward.

How it runs: transformers calls a registered attention function with each layer's keys and values *after* the new
tokens are appended to the cache, so rounding them there, elementwise with fixed scales, gives exactly what an
engine computes from a cache that stored the rounded values (rounding is idempotent: a prefix cached once and reused
by later items or choices, as quantcal's scorer shares it, is rounded the same way). The function then calls the
model's own attention implementation (``sdpa`` or ``eager``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes import calibration
from quantcal.recipes.number_formats import E4M3_MAX, cast_e4m3, cast_e4m3_toward_zero, require_float8
from quantcal.recipes.spec import Param

FORMATS = {"fp8": E4M3_MAX, "int8": 127.0}
ROUNDINGS = ("nearest", "toward_zero")
PARAMS = {
    "type": Param(str, "fp8", choices=tuple(FORMATS), help="the cache's number format: FP8 E4M3 or INT8"),
    "scale": Param(str, "1.0", help="1.0 (vLLM's uncalibrated default), another fixed number, or 'calibrated' "
                                    "(amax over the calibration windows / the format's largest value)"),
    "per": Param(str, "tensor", choices=("tensor", "head"), help="one scale per layer, or per KV head (calibrated)"),
    "rounding": Param(str, "nearest", choices=ROUNDINGS, key_default=False,
                      help="to the grid: nearest (ties to even, compressed-tensors' definition) or toward zero "
                           "(what vLLM's CPU attention kernels store, measured byte for byte)"),
    **calibration.PARAMS,
    "nsamples": Param(int, 16, low=1, high=4096, help="calibration windows (scale=calibrated)"),
}
ATTENTION = "quantcal_kv"


def validate(params: dict[str, Any]) -> None:
    if params["type"] == "fp8":
        require_float8()
    if params["scale"] != "calibrated":
        try:
            value = float(params["scale"])
        except ValueError:
            raise QuantcalError(f"recipe kv: scale={params['scale']!r}: a positive number or 'calibrated'") from None
        if not value > 0 or value == float("inf"):
            raise QuantcalError(f"recipe kv: scale={params['scale']!r}: a positive number or 'calibrated'")
        if params["per"] == "head":
            raise QuantcalError("recipe kv: per=head needs scale=calibrated (a fixed scale is one number)")


def apply(*_: Any, **__: Any) -> dict[str, Any]:
    raise QuantcalError("kv changes no weights: it is applied when the model is loaded (recipes.kv_cache.install)")


def round_to(x: torch.Tensor, fmt: str, scale: torch.Tensor, rounding: str = "nearest") -> torch.Tensor:
    """``Q(x / s) * s`` in the cache's format (E4M3 saturating at ±448, INT8 clamped to [-128, 127]), to the nearest
    grid value (ties to even) or toward zero."""
    import torch

    scaled = x.float() / scale
    if fmt == "fp8":
        grid = cast_e4m3(scaled) if rounding == "nearest" else cast_e4m3_toward_zero(scaled)
    else:
        grid = (torch.round(scaled) if rounding == "nearest" else torch.trunc(scaled)).clamp(-128, 127)
    return (grid * scale).to(x.dtype)


@dataclass
class LayerCache:
    """One attention layer's cache rounding: its key and value scales (a number, or one per KV head) and the
    attention implementation it hands the rounded tensors to. ``record`` (calibration) keeps amax instead."""

    fmt: str
    key_scale: Any  # torch.Tensor: shape () or (1, heads, 1, 1)
    value_scale: Any
    inner: Callable[..., Any]
    record: dict[str, Any] | None = None
    rounding: str = "nearest"

    def __call__(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.record is not None:
            dims = (0, 2, 3)  # per KV head: keys and values are (batch, heads, positions, head_dim)
            for name, x in (("key", key), ("value", value)):
                amax = x.detach().abs().float().amax(dim=dims)
                self.record[name] = amax if self.record.get(name) is None else self.record[name].maximum(amax)
            return key, value
        return (round_to(key, self.fmt, self.key_scale, self.rounding),
                round_to(value, self.fmt, self.value_scale, self.rounding))


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: Any, **kwargs: Any) -> Any:
    """The registered attention function: round the layer's keys and values as its cache stores them, then run the
    model's own implementation."""
    cache: LayerCache = module.quantcal_kv
    key, value = cache(key, value)
    return cache.inner(module, query, key, value, attention_mask, **kwargs)


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The model's self-attention modules (those with key and value projections), in order."""
    return [m for m in model.modules() if hasattr(m, "k_proj") and hasattr(m, "v_proj")]


def _inner(model: nn.Module, layer: nn.Module) -> Callable[..., Any]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = model.config._attn_implementation
    if name == ATTENTION:
        return layer.quantcal_kv.inner
    if name == "eager" or name not in ALL_ATTENTION_FUNCTIONS:
        eager = getattr(sys.modules[type(layer).__module__], "eager_attention_forward", None)
        if eager is None:
            raise QuantcalError(f"kv: cannot find {type(layer).__name__}'s attention function to wrap")
        return eager
    return ALL_ATTENTION_FUNCTIONS[name]


def _register(model: nn.Module) -> None:
    """Name the cache-rounding attention to transformers (its attention and mask registries) and select it."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    previous = model.config._attn_implementation
    if previous != ATTENTION:
        AttentionInterface.register(ATTENTION, _attention)
        AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS[previous if previous in
                                                                               ALL_MASK_ATTENTION_FUNCTIONS else "sdpa"])
        model.set_attn_implementation(ATTENTION)


def calibrate(model: nn.Module, ids: torch.Tensor, batch_size: int = 4) -> list[dict[str, Any]]:
    """Each attention layer's largest key and value magnitude per KV head over the windows ``ids``."""
    import torch

    layers = attention_layers(model)
    records: list[dict[str, Any]] = [{} for _ in layers]
    saved = [getattr(layer, "quantcal_kv", None) for layer in layers]
    for layer, record in zip(layers, records):
        layer.quantcal_kv = LayerCache("fp8", None, None, _inner(model, layer), record)
    _register(model)
    try:
        with torch.inference_mode():
            for start in range(0, ids.shape[0], batch_size):
                model(ids[start:start + batch_size], use_cache=False)
    finally:
        for layer, old in zip(layers, saved):
            if old is not None:
                layer.quantcal_kv = old
    return records


def check_architecture(config: Any) -> None:
    """Refuse, before any weights are built or loaded, a model whose attention the cache rounding cannot wrap: one
    built from ``config`` on the meta device (no weights) must have attention layers with key and value projections
    and an attention function to hand the rounded keys and values to."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    layers = attention_layers(model)
    if not layers:
        raise QuantcalError(f"kv: {type(model).__name__} has no attention layers with key and value projections "
                            "(k_proj, v_proj): quantcal cannot round its KV cache")
    _inner(model, layers[0])


def install(model: nn.Module, params: dict[str, Any], tokenizer: Any = None, fingerprint: str | None = None) -> dict[str, Any]:
    """Put the cache's rounding into ``model``'s attention; returns what was installed (format, scales) for the
    record. ``fingerprint`` names the model's cached calibration windows (``scale=calibrated``, ``calib=self``)."""
    import torch

    fmt, top = params["type"], FORMATS[params["type"]]
    layers = attention_layers(model)
    if not layers:
        raise QuantcalError(f"kv: {type(model).__name__} has no attention layers with key and value projections")
    if params["scale"] == "calibrated":
        ids = calibration.params_ids(model, tokenizer, params, fingerprint)
        amax = calibrate(model, ids)
        tiny = torch.finfo(torch.float32).tiny
        scales = []
        for record in amax:
            k, v = record["key"], record["value"]
            if params["per"] == "tensor":
                k, v = k.amax(), v.amax()
            else:
                k, v = k.reshape(1, -1, 1, 1), v.reshape(1, -1, 1, 1)
            scales.append(((k / top).clamp_min(tiny), (v / top).clamp_min(tiny)))
        summary = {"calibration": calibration.record(params, ids)}
    else:
        fixed = torch.tensor(float(params["scale"]))
        scales = [(fixed, fixed)] * len(layers)
        summary = {}
    for layer, (k_scale, v_scale) in zip(layers, scales):
        layer.quantcal_kv = LayerCache(fmt, k_scale, v_scale, _inner(model, layer),
                                       rounding=params.get("rounding", "nearest"))
    _register(model)
    rounding = {"rounding": params["rounding"]} if params.get("rounding", "nearest") != "nearest" else {}
    return {"kv_cache": {"type": fmt, "per": params["per"], "scale": params["scale"], **rounding, **summary,
                         "key_scale_max": max(float(k.max()) for k, _ in scales),
                         "value_scale_max": max(float(v.max()) for _, v in scales)}}


__all__ = ["ATTENTION", "FORMATS", "PARAMS", "check_architecture", "install", "round_to", "validate"]
