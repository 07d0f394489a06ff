"""The ``awq`` recipe: :mod:`quantcal.recipes.awq` on calibration windows (:mod:`quantcal.recipes.calibration`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from torch import nn

from quantcal.recipes import calibration, grid
from quantcal.recipes.awq import awq_model, check_model
from quantcal.recipes.grid_record import MODE, LayerGrid
from quantcal.recipes.layers import block_linears
from quantcal.recipes.spec import Param

PARAMS = {
    "bits": Param(int, 4, low=2, high=8, help="bits per weight code"),
    "group_size": Param(int, 64, low=-1, forbid=(0,), help="columns per group (must divide every layer's inputs); -1 = per channel"),
    "n_grid": Param(int, 20, low=1, high=100, help="points of the scale exponent grid in [0, 1)"),
    "clip": Param(bool, True, choices=(True, False), help="search per-group clipping ranges (AutoAWQ's auto_clip)"),
    **calibration.PARAMS,
    "mode": MODE,
}


def apply(model: nn.Module, params: dict[str, Any], tokenizer: Any = None,
          progress: Callable[[int, int], None] | None = None, fingerprint: str | None = None,
          grids: dict[str, LayerGrid] | None = None, **_: Any) -> dict[str, Any]:
    check_model(model, params["group_size"])
    ids = calibration.params_ids(model, tokenizer, params, fingerprint)
    report = awq_model(model, ids, params["bits"], params["group_size"], params["n_grid"], params["clip"], progress,
                       grids)
    linears = [m for _, m in block_linears(model)]
    return {"bits_per_weight": grid.model_bits_per_weight(linears, params["bits"], params["group_size"], False),
            "calibration": calibration.record(params, ids), "awq_layers": report}
