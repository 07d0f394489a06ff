"""The ``gptq`` recipe: :mod:`quantcal.recipes.gptq` on calibration windows (:mod:`quantcal.recipes.calibration`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes import calibration, grid
from quantcal.recipes.gptq import GPTQResult, gptq_model
from quantcal.recipes.grid_record import MODE, LayerGrid
from quantcal.recipes.layers import block_linears
from quantcal.recipes.spec import Param

PARAMS = {
    "bits": Param(int, 4, low=2, high=8, help="bits per weight code"),
    "group_size": Param(int, 64, low=-1, forbid=(0,), help="columns per group; -1 = per channel"),
    "sym": Param(bool, False, choices=(True, False)),
    "desc_act": Param(bool, False, choices=(True, False), help="quantize columns by decreasing Hessian diagonal"),
    "damp": Param(float, 0.01, low=0.0, high=1.0, help="dampening, a share of the mean Hessian diagonal"),
    "static_groups": Param(bool, False, choices=(True, False), key_default=False,
                           help="fit every group's scale on the weights before GPTQ's updates (AutoGPTQ's "
                                "static_groups, llmcompressor's behaviour) instead of on the updated weights"),
    **calibration.PARAMS,
    "mode": MODE,
}


def validate(params: dict[str, Any]) -> None:
    """``mode=native`` runs the exported compressed-tensors checkpoint, whose grid has no column permutation."""
    if params["desc_act"] and params["mode"] == "native":
        raise QuantcalError("recipe gptq: mode=native runs the exported compressed-tensors checkpoint, which keeps no "
                            "column order; use desc_act=false (or the simulated mode)")


def apply(model: nn.Module, params: dict[str, Any], tokenizer: Any = None,
          progress: Callable[[int, int], None] | None = None, fingerprint: str | None = None,
          grids: dict[str, LayerGrid] | None = None, **_: Any) -> dict[str, Any]:
    """GPTQ in place; ``grids``, when given, receives each layer's scales and zeros (not with ``desc_act``, whose
    groups follow the activation order: a packed checkpoint needs its ``g_idx``, which quantcal does not write)."""
    ids = calibration.params_ids(model, tokenizer, params, fingerprint)
    results: dict[str, GPTQResult] = {}
    errors = gptq_model(model, ids, params["bits"], params["group_size"], params["sym"], params["damp"],
                        params["desc_act"], progress, results=results, static_groups=params["static_groups"])
    named = list(block_linears(model))
    linears = [m for _, m in named]
    if grids is not None and not params["desc_act"]:
        for name, m in named:
            r = results[name]
            grids[name] = LayerGrid.of(r.scales, r.zeros, params["bits"], params["group_size"], m.in_features, params["sym"])
    return {"bits_per_weight": grid.model_bits_per_weight(linears, params["bits"], params["group_size"], params["sym"]),
            "calibration": calibration.record(params, ids), "gptq_sequential_layer_error": errors}
