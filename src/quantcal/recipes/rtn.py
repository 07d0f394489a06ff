"""Round-to-nearest (RTN): every weight group snapped to its own integer grid (:mod:`quantcal.recipes.grid`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from quantcal.recipes import grid
from quantcal.recipes.layers import block_linears
from quantcal.recipes.spec import Param

PARAMS = {
    "bits": Param(int, 4, low=2, high=8, help="bits per weight code"),
    "group_size": Param(int, 64, low=-1, forbid=(0,), help="columns per group; -1 = one group per row (per channel)"),
    "sym": Param(bool, False, choices=(True, False), help="symmetric grid (zero at the middle)"),
}


def apply(model: nn.Module, params: dict[str, Any], **_: Any) -> dict[str, Any]:
    bpw = []
    for _, linear in block_linears(model):
        linear.weight.data = grid.rtn(linear.weight.data, params["bits"], params["group_size"], params["sym"])
        bpw.append((linear.weight.numel(), grid.bits_per_weight(params["bits"], params["group_size"], linear.in_features, params["sym"])))
    return {"bits_per_weight": sum(n * b for n, b in bpw) / sum(n for n, _ in bpw)}
