"""llama.cpp's weight formats through the ``gguf`` package: quantize each block linear, then dequantize it back
into the float model (simulated mode: the exact GGUF grid, run by PyTorch).

The ``gguf`` package can quantize Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4, TQ1_0, TQ2_0, BF16 and F16. K-quants
(Q2_K..Q6_K) need llama.cpp's own quantizer, which the package does not have; they are refused with that
reason. Rows (input features) must be a multiple of the type's block size (32, or 256 for TQ/K types).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes.layers import block_linears
from quantcal.recipes.spec import Param

QUANTIZABLE = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mxfp4", "tq1_0", "tq2_0", "bf16", "f16")
K_QUANTS = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
PARAMS = {"type": Param(str, None, choices=QUANTIZABLE + K_QUANTS, help="GGUF tensor type")}


def qtype(name: str) -> Any:
    import gguf

    return gguf.GGMLQuantizationType[name.upper()]


def roundtrip(weight: np.ndarray, name: str) -> np.ndarray:
    from gguf import quants

    t = qtype(name)
    return quants.dequantize(quants.quantize(weight.astype(np.float32), t), t)


def bits_per_weight(name: str) -> float:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype(name)]
    return 8 * size / block


def apply(model: nn.Module, params: dict[str, Any], **_: Any) -> dict[str, Any]:
    import gguf

    name = params["type"]
    if name in K_QUANTS:
        raise QuantcalError(
            f"gguf:{name}: K-quants need llama.cpp's quantizer, which the 'gguf' package does not provide "
            f"(it only dequantizes them); use one of {', '.join(QUANTIZABLE)}"
        )
    block = gguf.GGML_QUANT_SIZES[qtype(name)][0]
    for layer_name, linear in block_linears(model):
        if linear.in_features % block:
            raise QuantcalError(
                f"gguf:{name}: layer {layer_name} has {linear.in_features} input features, not a multiple of the "
                f"{name} block size {block}"
            )
    for _, linear in block_linears(model):
        w = linear.weight.data
        linear.weight.data = torch.from_numpy(roundtrip(w.float().numpy(), name)).to(w.dtype)
    return {"bits_per_weight": bits_per_weight(name)}
