"""Round-to-nearest (RTN): every weight group snapped to its own integer grid (:mod:`quantcal.recipes.grid`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

from quantcal.recipes import grid
from quantcal.recipes.grid_record import MODE, LayerGrid
from quantcal.recipes.layers import block_linears
from quantcal.recipes.spec import Param

PARAMS = {
    "bits": Param(int, 4, low=2, high=8, help="bits per weight code"),
    "group_size": Param(int, 64, low=-1, forbid=(0,), help="columns per group; -1 = one group per row (per channel)"),
    "sym": Param(bool, False, choices=(True, False), help="symmetric grid (zero at the middle)"),
    "mode": MODE,
}


def apply(model: nn.Module, params: dict[str, Any], grids: dict[str, LayerGrid] | None = None, **_: Any) -> dict[str, Any]:
    """Quantize every block linear in place; ``grids``, when given, receives each layer's scales and zeros."""
    named = list(block_linears(model))
    linears = [linear for _, linear in named]
    for name, linear in named:
        cols = linear.in_features
        linear.weight.data, scale, zero = grid.rtn(linear.weight.data, params["bits"], params["group_size"], params["sym"])
        if grids is not None:
            grids[name] = LayerGrid.of(scale, zero, params["bits"], params["group_size"], cols, params["sym"])
    return {"bits_per_weight": grid.model_bits_per_weight(linears, params["bits"], params["group_size"], params["sym"])}
