"""The number formats of deployment quantization, as exact casts: FP8 E4M3, FP4 E2M1, E8M0 (power-of-two) scales
and symmetric INT8, and the fake-quantizers built from them (quantize, then dequantize, in the input's dtype).

- **E4M3** (``float8_e4m3fn``, OCP 8-bit floating point spec; NVIDIA's FP8): 4 exponent bits (bias 7), 3 mantissa
  bits, no infinities, largest finite value 448. A value is clamped to [-448, 448] and rounded to the nearest
  representable value, ties to even (torch's cast), so it saturates instead of becoming NaN.
- **E2M1** (FP4, OCP Microscaling Formats spec v1.0, section 5.3.3): magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  values are clamped to [-6, 6] and rounded to the nearest, ties to the value whose mantissa bit is 0 (even):
  0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4.
- **E8M0** (OCP MX scale): a power of two ``2^e``, ``e`` in [-127, 127]. An MX block's shared scale is
  ``2^(floor(log2(amax)) - emax)`` with ``emax`` the element format's largest exponent (2 for E2M1): the OCP MX
  spec v1.0, section 6.3 (``rounding="floor"``). compressed-tensors 0.20 (``generate_mx_scales``, what llm-compressor
  writes) first rounds ``amax`` to the element's one mantissa bit, so a block whose ``amax`` has a mantissa of 1.75
  or more takes the next power of two and its largest value is not clipped from 7 to 6 (``rounding="nearest"``).
- **INT8 symmetric**: ``q = clamp(round(x / s), -128, 127)`` (round half to even, torch.round) with
  ``s = amax / 127.5``: compressed-tensors 0.20 divides by half the integer range, (127 - (-128)) / 2, for weights
  and for dynamic activations alike; vLLM's dynamic per-token INT8 kernel divides by 127 (``divisor=127``).

Scaled formats (compressed-tensors 0.20's definitions, which llm-compressor writes and vLLM reads):

- ``fp8`` per channel / token / tensor: ``s = amax / 448``; ``x̂ = e4m3(x / s) * s``.
- ``nvfp4`` (NVIDIA's NVFP4): a float32 global scale per tensor ``g = 448 * 6 / amax(tensor)``; per block of 16
  a local scale ``s_b = e4m3(amax(block) / 6 * g)`` (stored in FP8); ``x̂ = e2m1(x / (s_b / g)) * (s_b / g)``.
- ``mxfp4`` (OCP MXFP4): blocks of 32, ``s_b = E8M0`` as above; ``x̂ = e2m1(x / s_b) * s_b``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from quantcal.errors import QuantcalError

E4M3_MAX = 448.0
E2M1_MAX = 6.0
E2M1_EMAX = 2
INT8_MAX = 127
#: compressed-tensors' symmetric INT8 scale divisor (module doc).
INT8_DIVISOR = 127.5
#: E2M1's non-negative values, and the rounding boundaries between neighbours (midpoints).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def require_float8() -> None:
    """Refuse (one line) a torch without the float8 dtypes FP8 casts need."""
    import torch

    if not hasattr(torch, "float8_e4m3fn"):
        raise QuantcalError(f"FP8 formats need torch's float8_e4m3fn dtype (torch >= 2.1); this torch is "
                            f"{torch.__version__}")


def cast_e4m3(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to FP8 E4M3 (saturating at ±448, ties to even), in ``x``'s dtype."""
    import torch

    require_float8()
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).to(x.dtype)


def cast_e4m3_toward_zero(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to FP8 E4M3 toward zero (the largest E4M3 magnitude not above ``|x|``, with ``x``'s sign;
    saturating at ±448; below the smallest subnormal, 2^-9, a signed 0), in ``x``'s dtype. vLLM's CPU attention
    kernels store an FP8 KV cache this way (measured byte for byte: ``benchmarks/vllm_kv_rounding.py``). The cast to
    nearest is stepped down one code where it rounded away from zero (E4M3's magnitude codes are ordered)."""
    import torch

    require_float8()
    xf = x.float().clamp(-E4M3_MAX, E4M3_MAX)
    codes = xf.to(torch.float8_e4m3fn).view(torch.uint8)
    magnitude = codes & 0x7F
    away = (codes.view(torch.float8_e4m3fn).float().abs() > xf.abs()) & (magnitude > 0)
    codes = (codes & 0x80) | torch.where(away, magnitude - 1, magnitude)
    return codes.view(torch.float8_e4m3fn).to(x.dtype)


def cast_e2m1(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to FP4 E2M1 (saturating at ±6, ties to even), in ``x``'s dtype.

    E2M1's magnitudes are evenly spaced within each binade: by 0.5 below 2, by 1 in [2, 4), by 2 in [4, 6]. Within
    a binade the code is ``m / step`` plus a constant, so rounding ``m / step`` half to even (``torch.round``) is
    rounding to the nearest value with a tie to the even code (checked against the value table, every tie included).
    Division by a power of two is exact, so this is the cast, in a few elementwise passes."""
    import torch

    xf = x.float()
    magnitude = xf.abs().clamp(max=E2M1_MAX)
    step = torch.where(magnitude < 2.0, 0.5, 1.0)
    step = torch.where(magnitude >= 4.0, 2.0, step)
    return torch.copysign(torch.round(magnitude / step) * step, xf).to(x.dtype)


MX_ROUNDINGS = ("nearest", "floor")


def e8m0_scale(amax: torch.Tensor, emax: int = E2M1_EMAX, rounding: str = "nearest") -> torch.Tensor:
    """MX shared scale of blocks with largest magnitude ``amax``: ``2^(floor(log2(amax')) - emax)``, with ``amax'``
    = ``amax`` (``floor``, the OCP spec) or ``amax`` rounded to one mantissa bit (``nearest``, compressed-tensors);
    the exponent clamped to E8M0's [-127, 127] (an all-zero block gets the smallest scale)."""
    import torch

    if rounding not in MX_ROUNDINGS:
        raise QuantcalError(f"MX scale rounding {rounding!r}: choose one of {', '.join(MX_ROUNDINGS)}")
    mantissa, exponent = torch.frexp(amax.float().clamp_min(torch.finfo(torch.float32).tiny))  # amax = m 2^e, m in [0.5, 1)
    floor_log2 = exponent - 1
    if rounding == "nearest":
        floor_log2 = floor_log2 + (mantissa >= 0.875).to(floor_log2.dtype)  # 2m >= 1.75 rounds up to 2
    return torch.exp2((floor_log2 - emax).clamp(-127, 127).float())


def _amax(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    return x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)


def fake_fp8(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """FP8 E4M3 fake quantization with ``s = amax / 448`` over ``dim`` (``-1``: per row, i.e. per output channel
    of a weight or per token of an activation; ``None``: per tensor)."""
    import torch

    scale = (_amax(x.float(), dim) / E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    return (cast_e4m3(x.float() / scale) * scale).to(x.dtype)


def fake_int8(x: torch.Tensor, dim: int | None, divisor: float = INT8_DIVISOR) -> torch.Tensor:
    """Symmetric INT8 fake quantization with ``s = amax / divisor`` over ``dim`` (as :func:`fake_fp8`)."""
    import torch

    scale = (_amax(x.float(), dim) / divisor).clamp_min(torch.finfo(torch.float32).tiny)
    return (torch.round(x.float() / scale).clamp(-INT8_MAX - 1, INT8_MAX) * scale).to(x.dtype)


def _blocks(x: torch.Tensor, block: int, what: str) -> torch.Tensor:
    if x.shape[-1] % block:
        raise QuantcalError(f"{what}: a block of {block} does not divide the last dimension ({x.shape[-1]})")
    return x.float().reshape(*x.shape[:-1], x.shape[-1] // block, block)


def fake_nvfp4(x: torch.Tensor, block: int = 16, global_amax: torch.Tensor | None = None) -> torch.Tensor:
    """NVFP4 fake quantization (module doc): E2M1 values in blocks of ``block`` along the last dimension, FP8 E4M3
    block scales under a float32 global scale ``448 * 6 / amax`` (``global_amax``, default the tensor's own)."""
    import torch

    tiny = torch.finfo(torch.float32).tiny
    blocks = _blocks(x, block, "nvfp4")
    amax = (blocks.abs().amax() if global_amax is None else global_amax.float()).clamp_min(tiny)
    global_scale = E4M3_MAX * E2M1_MAX / amax
    local = cast_e4m3(blocks.abs().amax(dim=-1, keepdim=True) / E2M1_MAX * global_scale)
    # a block scale that rounds to 0 becomes 0.125 (compressed-tensors' eps for E4M3 scales), so nothing divides by 0
    scale = torch.where(local == 0, torch.full_like(local, 0.125), local) / global_scale
    return (cast_e2m1(blocks / scale) * scale).reshape(x.shape).to(x.dtype)


def fake_mxfp4(x: torch.Tensor, block: int = 32, rounding: str = "nearest") -> torch.Tensor:
    """MXFP4 fake quantization (module doc): E2M1 values in blocks of ``block`` with E8M0 power-of-two scales
    (``rounding`` as :func:`e8m0_scale`)."""
    blocks = _blocks(x, block, "mxfp4")
    scale = e8m0_scale(blocks.abs().amax(dim=-1, keepdim=True), rounding=rounding)
    return (cast_e2m1(blocks / scale) * scale).reshape(x.shape).to(x.dtype)


__all__ = ["E2M1_VALUES", "E4M3_MAX", "MX_ROUNDINGS", "cast_e2m1", "cast_e4m3", "cast_e4m3_toward_zero", "e8m0_scale", "fake_fp8", "fake_int8",
           "fake_mxfp4", "fake_nvfp4", "require_float8"]
