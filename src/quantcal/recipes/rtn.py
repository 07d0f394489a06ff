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
    linears = [linear for _, linear in block_linears(model)]
    for linear in linears:
        linear.weight.data = grid.rtn(linear.weight.data, params["bits"], params["group_size"], params["sym"])
    return {"bits_per_weight": grid.model_bits_per_weight(linears, params["bits"], params["group_size"], params["sym"])}
