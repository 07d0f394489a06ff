"""The ``w8a8`` recipe: compressed-tensors' ``W8A8`` (INT8) scheme (:mod:`quantcal.recipes.number_formats`).

Weights of every decoder-block linear: symmetric INT8 per output channel; activations (each such linear's input,
:mod:`quantcal.recipes.runtime`): symmetric INT8 per token, dynamic. Scales are ``amax / 127.5``, as
compressed-tensors computes them (vLLM's dynamic activation kernel uses ``amax / 127``: a difference of one code at
a token's largest value). The output head stays in float.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

from quantcal.recipes.layers import block_linears, mean_bits
from quantcal.recipes.number_formats import fake_int8
from quantcal.recipes.runtime import ActivationScheme, activation_block
from quantcal.recipes.spec import Param

PARAMS = {
    "acts": Param(str, "token", choices=("token", "none"), help="INT8 activations per token (dynamic), or none (W8A16)"),
}


def apply(model: nn.Module, params: dict[str, Any], **_: Any) -> dict[str, Any]:
    sizes = []
    for _, linear in block_linears(model):
        w = linear.weight.data
        linear.weight.data = fake_int8(w, dim=-1)
        sizes.append((w.numel(), 8 + 32 / w.shape[1]))
    scheme = ActivationScheme("int8", "token") if params["acts"] == "token" else None
    return {"bits_per_weight": mean_bits(sizes), **activation_block(scheme)}
