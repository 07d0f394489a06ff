"""llama.cpp's weight formats: quantize each block linear, then dequantize it back into the float model with the
``gguf`` package's dequantizer (simulated mode: the exact GGUF grid, run by PyTorch).

The ``gguf`` package quantizes Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4, TQ1_0, TQ2_0, BF16 and F16; Q4_K, Q5_K and Q6_K
are quantized by :mod:`quantcal.recipes.gguf_kquants` (llama.cpp's reference algorithms) and dequantized by the
package. Q2_K and Q3_K are refused (not ported). Rows (input features) must be a multiple of the type's block size
(32, or 256 for TQ/K types). For K-quants, a layer whose rows are not a multiple of 256 gets llama.cpp's fallback
type (``llama-quantize`` does the same: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0) unless ``fallback=false``, which
refuses instead; the layers that fell back are listed in the variant's record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
if TYPE_CHECKING:
    from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes import gguf_kquants
from quantcal.recipes.layers import block_linears, mean_bits
from quantcal.recipes.spec import Param

QUANTIZABLE = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mxfp4", "tq1_0", "tq2_0", "bf16", "f16")
K_QUANTS = ("q4_k", "q5_k", "q6_k")
NOT_PORTED = ("q2_k", "q3_k")
FALLBACK = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}  # llama.cpp's choice for rows not a multiple of 256
PARAMS = {
    "type": Param(str, None, choices=QUANTIZABLE + K_QUANTS,
                  help=f"GGUF tensor type ({', '.join(NOT_PORTED)}: not ported, the 'gguf' package only dequantizes them)"),
    "fallback": Param(bool, True, choices=(True, False),
                      help="K-quants: layers whose rows are not a multiple of 256 take llama.cpp's fallback type",
                      key_default=False),
}


def qtype(name: str) -> Any:
    import gguf

    return gguf.GGMLQuantizationType[name.upper()]


def roundtrip(weight: np.ndarray, name: str) -> np.ndarray:
    from gguf import quants

    t = qtype(name)
    packed = gguf_kquants.quantize(weight, name) if name in K_QUANTS else quants.quantize(weight.astype(np.float32), t)
    return quants.dequantize(packed, t)


def bits_per_weight(name: str) -> float:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype(name)]
    return 8 * size / block


def layer_types(model: nn.Module, name: str, fallback: bool) -> dict[str, str]:
    """The GGUF type each block linear gets, or a clear error for rows the type cannot hold."""
    import gguf

    block = gguf.GGML_QUANT_SIZES[qtype(name)][0]
    types = {}
    for layer_name, linear in block_linears(model):
        kind = name
        if linear.in_features % block:
            if name in FALLBACK and fallback and linear.in_features % 32 == 0:
                kind = FALLBACK[name]
            else:
                hint = " (fallback=true uses llama.cpp's fallback type for such layers)" if name in FALLBACK else ""
                raise QuantcalError(
                    f"gguf:{name}: layer {layer_name} has {linear.in_features} input features, not a multiple of the "
                    f"{name} block size {block}{hint}")
        types[layer_name] = kind
    return types


def apply(model: nn.Module, params: dict[str, Any], **_: Any) -> dict[str, Any]:
    import torch

    name = params["type"]
    types = layer_types(model, name, params["fallback"])
    sizes = []
    for layer_name, linear in block_linears(model):
        w = linear.weight.data
        linear.weight.data = torch.from_numpy(roundtrip(w.float().numpy(), types[layer_name])).to(w.dtype)
        sizes.append((w.numel(), bits_per_weight(types[layer_name])))
    fell_back = {layer: kind for layer, kind in types.items() if kind != name}
    return {"bits_per_weight": mean_bits(sizes),
            "gguf_fallback_layers": fell_back,
            "gguf_type_counts": {kind: list(types.values()).count(kind) for kind in sorted(set(types.values()))}}
