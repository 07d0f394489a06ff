"""The ``w8a8`` recipe: compressed-tensors' ``W8A8`` (INT8) scheme (:mod:`quantcal.recipes.number_formats`).

Weights of every decoder-block linear: symmetric INT8 per output channel; activations (each such linear's input,
:mod:`quantcal.recipes.runtime`): symmetric INT8 per token, dynamic. ``smoothquant=ALPHA`` first migrates activation
outliers into the weights (:mod:`quantcal.recipes.smoothquant`), calibrated on the ``calib`` windows. Scales are ``amax / 127.5``, as
compressed-tensors computes them (vLLM's dynamic activation kernel uses ``amax / 127``: a difference of one code at
a token's largest value). The output head stays in float.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

from dataclasses import replace

from quantcal.errors import QuantcalError
from quantcal.recipes import calibration
from quantcal.recipes.layers import block_linears, mean_bits
from quantcal.recipes.number_formats import fake_int8
from quantcal.recipes.runtime import ActivationScheme, activation_block
from quantcal.recipes.smoothquant import encode, smoothing_scales
from quantcal.recipes.spec import Param

PARAMS = {
    "acts": Param(str, "token", choices=("token", "none"), help="INT8 activations per token (dynamic), or none (W8A16)"),
    "smoothquant": Param(float, 0.0, low=0.0, high=1.0, key_default=False,
                         help="SmoothQuant's migration strength alpha (0: off; llm-compressor's recipes use 0.5-0.8), "
                              "calibrated on the calib windows"),
    # the calibration windows (used by smoothquant only; left out of the key at their defaults)
    **{k: replace(p, key_default=False) for k, p in calibration.PARAMS.items()},
}


def validate(params: dict[str, Any]) -> None:
    if params["smoothquant"] > 0 and params["acts"] != "token":
        raise QuantcalError("recipe w8a8: smoothquant moves activation outliers into the weights for the activation "
                            "quantizer; it needs acts=token")


def apply(model: nn.Module, params: dict[str, Any], tokenizer: Any = None, fingerprint: str | None = None,
          **_: Any) -> dict[str, Any]:
    smooth, stats = {}, {}
    if params["smoothquant"] > 0:  # calibrated on the float model, before its weights change
        ids = calibration.params_ids(model, tokenizer, params, fingerprint)
        smooth = smoothing_scales(model, ids, params["smoothquant"])
        stats = {"calibration": calibration.record(params, ids),
                 "smoothquant": {"alpha": params["smoothquant"], "smoothed_linears": len(smooth)}}
    sizes = []
    for name, linear in block_linears(model):
        w = linear.weight.data
        scaled = (w.float() * smooth[name]).to(w.dtype) if name in smooth else w
        linear.weight.data = fake_int8(scaled, dim=-1)
        sizes.append((w.numel(), 8 + 32 / w.shape[1]))
    scheme = ActivationScheme("int8", "token", smooth=encode(smooth) or None) if params["acts"] == "token" else None
    return {"bits_per_weight": mean_bits(sizes), **stats, **activation_block(scheme)}
