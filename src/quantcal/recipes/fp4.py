"""The 4-bit microscaling recipes ``nvfp4`` and ``mxfp4`` (:mod:`quantcal.recipes.number_formats`).

- ``nvfp4`` (compressed-tensors' ``NVFP4`` scheme): weights in E2M1 per block of 16 input columns with FP8 E4M3 block
  scales under a float32 global scale per tensor, shared by the linears an engine fuses into one GEMM (q/k/v,
  gate/up: :data:`FUSED_NAMES`, as llmcompressor writes them for vLLM); activations (each decoder-block linear's input,
  :mod:`quantcal.recipes.runtime`) the same per token, with a static global scale per layer from the calibration
  windows (``acts=none``: W4A16, no calibration).
- ``mxfp4`` (OCP MXFP4, compressed-tensors' ``MXFP4``): E2M1 per block of 32 with E8M0 power-of-two scales, weights
  and (dynamic) activations; ``scale_rounding`` picks compressed-tensors' rounding of the block maximum (``nearest``)
  or the OCP spec's (``floor``).

Every block linear's input features must be a multiple of the block (checked before anything is built).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes import calibration
from quantcal.recipes.layers import block_linears, mean_bits
from quantcal.recipes.number_formats import MX_ROUNDINGS, fake_mxfp4, fake_nvfp4, require_float8
from quantcal.recipes.runtime import ActivationScheme, activation_block, input_amax
from quantcal.recipes.spec import Param

NVFP4_PARAMS = {
    "acts": Param(str, "group", choices=("group", "none"), help="NVFP4 activations (W4A4), or none (W4A16)"),
    **calibration.PARAMS,
}
MXFP4_PARAMS = {
    "acts": Param(str, "group", choices=("group", "none"), help="MXFP4 activations (dynamic), or none (W4A16)"),
    "scale_rounding": Param(str, "nearest", choices=MX_ROUNDINGS,
                            help="the block maximum's rounding to a power of two: nearest (compressed-tensors) or "
                                 "floor (OCP MX spec)"),
}


def validate_nvfp4(params: dict[str, Any]) -> None:
    require_float8()


def check_blocks(model: nn.Module, block: int, family: str) -> None:
    """Refuse (one line) a model with a block linear whose input features the block does not divide."""
    for name, linear in block_linears(model):
        if linear.in_features % block:
            raise QuantcalError(f"recipe {family}: {name} has {linear.in_features} input features, not a multiple of "
                                f"the {block}-value block")


#: Linears an engine runs as one GEMM (vLLM's qkv_proj, gate_up_proj): under NVFP4 they share one global scale.
#: llmcompressor's ``FUSED_LAYER_NAMES`` (observers/helpers.py), the names vLLM fuses.
FUSED_NAMES = (("gate_proj", "up_proj"), ("q_proj", "k_proj", "v_proj"), ("q_a_proj", "kv_a_proj_with_mqa"),
               ("w1", "w3"))


def fused_weight_amax(model: nn.Module) -> dict[str, float]:
    """Each block linear's NVFP4 global amax (its global scale is ``448 * 6 / amax``): its own weight's largest
    magnitude, or its fused group's largest (module doc of :data:`FUSED_NAMES`), as llmcompressor computes it."""
    amax = {name: float(linear.weight.data.float().abs().amax()) for name, linear in block_linears(model)}
    for parent in {name.rsplit(".", 1)[0] for name in amax}:
        for group in FUSED_NAMES:
            members = [f"{parent}.{n}" for n in group]
            if all(m in amax for m in members):
                top = max(amax[m] for m in members)
                amax.update({m: top for m in members})
    return amax


def identity(params: dict[str, Any]) -> dict[str, Any]:
    """What the build depends on beyond the recipe key: the calibration, and (since it changed) fused global scales."""
    return {**calibration.identity(params), "global_scale": "fused"}


def apply_nvfp4(model: nn.Module, params: dict[str, Any], tokenizer: Any = None, fingerprint: str | None = None,
                **_: Any) -> dict[str, Any]:
    check_blocks(model, 16, "nvfp4")
    stats: dict[str, Any] = {}
    scheme = None
    if params["acts"] == "group":  # the activations' global scales, calibrated on the float model
        ids = calibration.params_ids(model, tokenizer, params, fingerprint)
        scheme = ActivationScheme("nvfp4", "group", input_amax(model, ids))
        stats["calibration"] = calibration.record(params, ids)
    import torch

    sizes = []
    weight_amax = fused_weight_amax(model)  # kept for the export (checkpoints.microscaling_checkpoint)
    for name, linear in block_linears(model):
        linear.weight.data = fake_nvfp4(linear.weight.data, global_amax=torch.tensor(weight_amax[name]))
        sizes.append((linear.weight.numel(), 4 + 8 / 16))
    return {"bits_per_weight": mean_bits(sizes), **stats, **activation_block(scheme), "weight_amax": weight_amax}


def apply_mxfp4(model: nn.Module, params: dict[str, Any], **_: Any) -> dict[str, Any]:
    check_blocks(model, 32, "mxfp4")
    sizes = []
    for _, linear in block_linears(model):
        linear.weight.data = fake_mxfp4(linear.weight.data, rounding=params["scale_rounding"])
        sizes.append((linear.weight.numel(), 4 + 8 / 32))
    scheme = ActivationScheme("mxfp4", "group", rounding=params["scale_rounding"]) if params["acts"] == "group" else None
    return {"bits_per_weight": mean_bits(sizes), **activation_block(scheme)}
