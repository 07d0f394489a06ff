"""The ``gptq`` recipe: :mod:`quantcal.recipes.gptq` on calibration windows (:mod:`quantcal.recipes.calibration`)."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from quantcal.recipes import grid
from quantcal.recipes.calibration import calibration_ids, ids_hash
from quantcal.recipes.gptq import gptq_model
from quantcal.recipes.layers import block_linears
from quantcal.recipes.spec import Param

PARAMS = {
    "bits": Param(int, 4, low=2, high=8, help="bits per weight code"),
    "group_size": Param(int, 64, low=-1, forbid=(0,), help="columns per group; -1 = per channel"),
    "sym": Param(bool, False, choices=(True, False)),
    "desc_act": Param(bool, False, choices=(True, False), help="quantize columns by decreasing Hessian diagonal"),
    "damp": Param(float, 0.01, low=0.0, high=1.0, help="dampening, a share of the mean Hessian diagonal"),
    "nsamples": Param(int, 64, low=1, high=4096, help="calibration windows (Study B: 128)"),
    "seqlen": Param(int, 512, low=8, high=32768, help="tokens per window (Study B: 2048)"),
    "calib": Param(str, "self", help="'self' (text sampled from the model, offline), 'c4' (hub), or a .txt/.jsonl path"),
    "seed": Param(int, 0, low=0),
}


def apply(model: nn.Module, params: dict[str, Any], tokenizer: Any = None,
          progress: Callable[[int, int], None] | None = None, fingerprint: str | None = None, **_: Any) -> dict[str, Any]:
    ids = calibration_ids(model, tokenizer, params["calib"], params["nsamples"], params["seqlen"], params["seed"],
                          fingerprint=fingerprint)
    errors = gptq_model(model, ids, params["bits"], params["group_size"], params["sym"], params["damp"],
                        params["desc_act"], progress)
    sizes = [(m.weight.numel(), grid.bits_per_weight(params["bits"], params["group_size"], m.in_features, params["sym"]))
             for _, m in block_linears(model)]
    return {"bits_per_weight": sum(n * b for n, b in sizes) / sum(n for n, _ in sizes),
            "calibration": {"source": params["calib"], "nsamples": params["nsamples"], "seqlen": params["seqlen"],
                            "sha256": ids_hash(ids)},
            "gptq_sequential_layer_error": errors}
