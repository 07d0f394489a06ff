"""The ``fp8`` recipe: llm-compressor's ``FP8_DYNAMIC`` scheme and its variants (:mod:`quantcal.recipes.number_formats`).

Weights of every decoder-block linear: FP8 E4M3 with ``s = amax / 448`` per output channel (``weights=channel``,
the default), per tensor, or per 128x128 block (``block128``, DeepSeek-V3's layout, partial blocks at the edges).
Activations (the input of every such linear, :mod:`quantcal.recipes.runtime`): per token, dynamic (``acts=token``,
the default), per tensor with a static scale from the calibration windows (``tensor_static``), or left in float
(``none``: W8A16). The output head stays in float.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

from quantcal.recipes import calibration
from quantcal.recipes.layers import block_linears, mean_bits
from quantcal.recipes.number_formats import E4M3_MAX, cast_e4m3, fake_fp8, require_float8
from quantcal.recipes.runtime import ActivationScheme, activation_block, input_amax
from quantcal.recipes.spec import Param

WEIGHTS = ("channel", "tensor", "block128")
PARAMS = {
    "weights": Param(str, "channel", choices=WEIGHTS, help="FP8 weight scales: per output channel, per tensor, or per "
                                                            "128x128 block"),
    "acts": Param(str, "token", choices=("token", "tensor_static", "none"),
                  help="FP8 activations: dynamic per token, static per tensor (calibrated), or none (W8A16)"),
    **calibration.PARAMS,
}
BLOCK = 128


def validate(params: dict[str, Any]) -> None:
    require_float8()


def fake_fp8_blocks(w: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """FP8 E4M3 per ``block`` x ``block`` tile of ``w`` (``s = amax(tile) / 448``; tiles at the edges are partial)."""
    import torch
    import torch.nn.functional as F

    rows, cols = w.shape
    padded = F.pad(w.float(), (0, -cols % block, 0, -rows % block))
    tiles = padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block)
    scale = (tiles.abs().amax(dim=(1, 3), keepdim=True) / E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    quantized = (cast_e4m3(tiles / scale) * scale).reshape(padded.shape)
    return quantized[:rows, :cols].to(w.dtype)


def weight_bits(weights: str, rows: int, cols: int) -> float:
    """Bits per weight with the float32 scales: one per row, one per tensor, or one per 128x128 tile."""
    scales = {"channel": rows, "tensor": 1, "block128": -(-rows // BLOCK) * -(-cols // BLOCK)}[weights]
    return 8 + 32 * scales / (rows * cols)


def apply(model: nn.Module, params: dict[str, Any], tokenizer: Any = None, fingerprint: str | None = None,
          **_: Any) -> dict[str, Any]:
    scheme = None
    stats: dict[str, Any] = {}
    if params["acts"] == "tensor_static":  # calibrated on the float model, before its weights change
        ids = calibration.params_ids(model, tokenizer, params, fingerprint)
        scheme = ActivationScheme("fp8", "tensor_static", input_amax(model, ids))
        stats["calibration"] = calibration.record(params, ids)
    elif params["acts"] == "token":
        scheme = ActivationScheme("fp8", "token")
    sizes = []
    for _, linear in block_linears(model):
        w = linear.weight.data
        linear.weight.data = (fake_fp8_blocks(w) if params["weights"] == "block128"
                              else fake_fp8(w, dim=-1 if params["weights"] == "channel" else None))
        sizes.append((w.numel(), weight_bits(params["weights"], *w.shape)))
    return {"bits_per_weight": mean_bits(sizes), **stats, **activation_block(scheme)}
