"""The ``awq`` recipe: :mod:`quantcal.recipes.awq` on calibration windows (:mod:`quantcal.recipes.calibration`)."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from quantcal.recipes import grid
from quantcal.recipes.awq import awq_model
from quantcal.recipes.calibration import calibration_ids, ids_hash
from quantcal.recipes.layers import block_linears
from quantcal.recipes.spec import Param

PARAMS = {
    "bits": Param(int, 4, low=2, high=8, help="bits per weight code"),
    "group_size": Param(int, 64, low=-1, forbid=(0,), help="columns per group (must divide every layer's inputs); -1 = per channel"),
    "n_grid": Param(int, 20, low=1, high=100, help="points of the scale exponent grid in [0, 1)"),
    "clip": Param(bool, True, choices=(True, False), help="search per-group clipping ranges (AutoAWQ's auto_clip)"),
    "nsamples": Param(int, 64, low=1, high=4096, help="calibration windows (AutoAWQ: 128)"),
    "seqlen": Param(int, 512, low=8, high=32768, help="tokens per window"),
    "calib": Param(str, "self", help="'self' (text sampled from the model, offline), 'c4' (hub), or a .txt/.jsonl path"),
    "seed": Param(int, 0, low=0),
}


def apply(model: nn.Module, params: dict[str, Any], tokenizer: Any = None,
          progress: Callable[[int, int], None] | None = None, fingerprint: str | None = None, **_: Any) -> dict[str, Any]:
    ids = calibration_ids(model, tokenizer, params["calib"], params["nsamples"], params["seqlen"], params["seed"],
                          fingerprint=fingerprint)
    report = awq_model(model, ids, params["bits"], params["group_size"], params["n_grid"], params["clip"], progress)
    sizes = [(m.weight.numel(), grid.bits_per_weight(params["bits"], params["group_size"], m.in_features, False))
             for _, m in block_linears(model)]
    return {"bits_per_weight": sum(n * b for n, b in sizes) / sum(n for n, _ in sizes),
            "calibration": {"source": params["calib"], "nsamples": params["nsamples"], "seqlen": params["seqlen"],
                            "sha256": ids_hash(ids)},
            "awq_layers": report}
