"""HQQ (Badri & Shaji 2023, "Half-Quadratic Quantization of Large Machine Learning Models"): calibration-free
group-wise quantization whose zero points (and scales) are optimised with a half-quadratic solver that
minimises an l_p (p < 1) reconstruction error of the weights, through the ``hqq`` library's own quantizer.

Simulated mode: each decoder-block linear is quantized with ``hqq.core.quantize.Quantizer`` (``axis=1``:
groups of ``group_size`` consecutive input columns, as GPTQ/AWQ; ``axis=0``: HQQ's strided layout, see :func:`groups`) and dequantized
back; the group's scale and zero are rounded to float16 first, as HQQ stores them, so each group holds at most
``2^bits`` values. Native HQQ modules (``HQQLinear``) need the library's CUDA/torch backends at full speed and are
not used; transformers' ``HqqConfig`` raises NotImplementedError in transformers 5.23.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes.layers import block_linears
from quantcal.recipes.spec import Param

PARAMS = {
    "bits": Param(int, 4, choices=(1, 2, 3, 4, 8), help="bits per weight code"),
    "group_size": Param(int, 64, choices=(16, 32, 64, 128, 256), help="weights per group"),
    "axis": Param(int, 1, choices=(0, 1), help="1: groups of consecutive input columns; 0: HQQ's strided layout"),
    "optimize": Param(bool, True, choices=(True, False), help="half-quadratic refinement of the zero points"),
}


def _quantizer() -> Any:
    try:
        from hqq.core.quantize import Quantizer
    except ImportError as exc:
        raise QuantcalError("hqq recipes need the hqq library: pip install 'quantcal[recipes]' (hqq==0.2.8.post1)") from exc
    return Quantizer


def roundtrip(weight: torch.Tensor, params: dict[str, Any], name: str = "weight") -> torch.Tensor:
    import torch

    if weight.numel() % params["group_size"]:
        raise QuantcalError(f"hqq: group_size={params['group_size']} does not divide {name}'s {weight.numel()} weights")
    codes, meta = _quantizer().quantize(weight.float(), nbits=params["bits"], group_size=params["group_size"],
                                        optimize=params["optimize"], axis=params["axis"], bitpack=False,
                                        compute_dtype=torch.float32, device="cpu")
    scale = meta["scale"].half().float()
    zero = meta["zero"].half().float()
    return ((codes.float() - zero) * scale).reshape(meta["shape"]).to(weight.dtype)


def groups(weight: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """The weights of each HQQ group as rows: ``axis=1`` groups consecutive weights of the flattened tensor;
    ``axis=0`` groups the columns of its ``(group_size, -1)`` view (HQQ's layout)."""
    g = params["group_size"]
    return weight.reshape(-1, g) if params["axis"] == 1 else weight.reshape(g, -1).T


def bits_per_weight(params: dict[str, Any]) -> float:
    return params["bits"] + 32 / params["group_size"]  # float16 scale and zero per group


def apply(model: nn.Module, params: dict[str, Any], **_: Any) -> dict[str, Any]:
    for name, linear in block_linears(model):
        linear.weight.data = roundtrip(linear.weight.data, params, name)
    return {"bits_per_weight": bits_per_weight(params)}
