"""The integer weight grid shared by RTN and GPTQ (the GPTQ reference quantizer's min/max rule).

For a group of weights ``w`` with ``b`` bits (``maxq = 2^b - 1``):
- asymmetric: ``lo = min(min w, 0)``, ``hi = max(max w, 0)``, ``scale = (hi - lo) / maxq``,
  ``zero = round(-lo / scale)``;
- symmetric: ``hi = max|w|``, ``lo = -hi``, ``scale = 2 hi / maxq``, ``zero = (maxq + 1) / 2``;
- an all-zero group uses ``lo, hi = -1, 1``.
``q = clamp(round(w / scale) + zero, 0, maxq)`` and the dequantized weight is ``scale (q - zero)``, so a group
holds at most ``2^b`` distinct values.

Scales are rounded to float16 (:data:`SCALE_DTYPE`) as soon as they are fitted, and the zero is computed from the
rounded scale: checkpoints (GPTQ, AWQ, compressed-tensors' pack-quantized format) store float16 scales, and
``scale (q - zero)`` with a float16 scale and a small integer is exact in float32, so the simulated weights are
exactly the values an exported checkpoint holds (:mod:`quantcal.recipes.packed_export`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from quantcal.recipes.layers import mean_bits

#: The dtype checkpoints store group scales in (a ``torch`` dtype's name); the simulated grid uses the same values.
SCALE_DTYPE = "float16"


def scale_dtype() -> torch.dtype:
    """:data:`SCALE_DTYPE` as a torch dtype."""
    import torch

    return getattr(torch, SCALE_DTYPE)


def storable(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` rounded to :data:`SCALE_DTYPE` (never to zero), kept in its own dtype."""
    return scale.clamp_min(2.0 ** -24).to(scale_dtype()).to(scale.dtype)


def fit(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero for ``w`` of shape (rows, group columns)."""
    import torch

    maxq = 2 ** bits - 1
    lo = torch.clamp(w.min(dim=1).values, max=0)
    hi = torch.clamp(w.max(dim=1).values, min=0)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = -hi
    empty = (lo == 0) & (hi == 0)
    lo = torch.where(empty, torch.full_like(lo, -1.0), lo)
    hi = torch.where(empty, torch.full_like(hi, 1.0), hi)
    scale = storable((hi - lo) / maxq)
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-lo / scale)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Dequantized values on the grid; ``w`` is (rows,) or (rows, cols) with per-row scale/zero."""
    import torch

    maxq = 2 ** bits - 1
    if w.dim() == 2:
        scale, zero = scale[:, None], zero[:, None]
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return scale * (q - zero)


def rtn(weight: torch.Tensor, bits: int, group_size: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest, group-wise along the input dimension; a ragged last group is allowed. Returns the
    dequantized weight and the (rows, groups) scales and zeros."""
    import torch

    w = weight.float()
    cols = w.shape[1]
    g = cols if group_size <= 0 else group_size
    out = torch.empty_like(w)
    scales, zeros = [], []
    for start in range(0, cols, g):
        block = w[:, start:start + g]
        scale, zero = fit(block, bits, sym)
        out[:, start:start + g] = quantize(block, scale, zero, bits)
        scales.append(scale)
        zeros.append(zero)
    return out.to(weight.dtype), torch.stack(scales, 1), torch.stack(zeros, 1)


def bits_per_weight(bits: int, group_size: int, cols: int, sym: bool) -> float:
    """Storage as GPTQ checkpoints keep it: the codes, one fp16 scale per group, and a ``bits``-bit zero
    per group unless symmetric."""
    g = cols if group_size <= 0 else group_size
    groups_per_row = -(-cols // g)
    return bits + groups_per_row * (16 + (0 if sym else bits)) / cols


def model_bits_per_weight(linears: list, bits: int, group_size: int, sym: bool) -> float:
    """:func:`bits_per_weight` averaged over ``linears`` (modules with ``weight`` and ``in_features``), by size."""
    return mean_bits([(m.weight.numel(), bits_per_weight(bits, group_size, m.in_features, sym)) for m in linears])
