"""bitsandbytes formats: NF4 and FP4 (block-wise absmax 4-bit, Dettmers et al. 2023) and int8 (row-wise absmax,
the weight side of LLM.int8()).

Simulated mode (the default, runs everywhere): each block linear is quantized with bitsandbytes' own functions
and dequantized back, so the weights are exactly bitsandbytes' grid. For int8, LLM.int8()'s run-time outlier
decomposition of activations is not simulated (weights only).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes.layers import block_linears
from quantcal.recipes.spec import Param

PARAMS = {
    "type": Param(str, None, choices=("nf4", "fp4", "int8")),
    "blocksize": Param(int, 64, choices=(64, 128, 256, 512, 1024, 2048, 4096), help="4-bit: weights per absmax block"),
    "double_quant": Param(bool, False, choices=(True, False), help="4-bit: quantize the absmax constants too (QLoRA)"),
}


def _functional() -> Any:
    try:
        import bitsandbytes.functional as F
    except ImportError as exc:
        raise QuantcalError("bnb recipes need bitsandbytes: pip install 'bitsandbytes==0.50.2'") from exc
    return F


def roundtrip(weight: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    F = _functional()
    w = weight.float().contiguous()
    if params["type"] == "int8":
        codes, stats, _ = F.int8_vectorwise_quant(w)
        return (codes.float() * stats[:, None] / 127.0).to(weight.dtype)
    packed, state = F.quantize_4bit(w, blocksize=params["blocksize"], quant_type=params["type"],
                                    compress_statistics=params["double_quant"])
    return F.dequantize_4bit(packed, state).to(weight.dtype)


def bits_per_weight(params: dict[str, Any], in_features: int) -> float:
    if params["type"] == "int8":
        return 8 + 32 / in_features
    if params["double_quant"]:
        return 4 + 8 / params["blocksize"] + 32 / (params["blocksize"] * 256)
    return 4 + 32 / params["blocksize"]


def apply(model: nn.Module, params: dict[str, Any], **_: Any) -> dict[str, Any]:
    sizes = []
    for _, linear in block_linears(model):
        linear.weight.data = roundtrip(linear.weight.data, params)
        sizes.append((linear.weight.numel(), bits_per_weight(params, linear.in_features)))
    return {"bits_per_weight": sum(n * b for n, b in sizes) / sum(n for n, _ in sizes)}
