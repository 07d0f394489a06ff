"""llama.cpp's K-quants Q4_K, Q5_K and Q6_K, quantized in numpy and packed into GGUF blocks.

The ``gguf`` package dequantizes K-quants but cannot quantize them; these functions follow llama.cpp's reference
quantizers (``quantize_row_q{4,5,6}_K_ref`` in ``ggml-quants.c``, which ``llama-quantize`` runs when no importance
matrix is given), in float32 with sequential sums as the C loops accumulate:

- **Q4_K / Q5_K** (144 / 176 bytes per 256 weights): 8 sub-blocks of 32 weights, each fitted with an
  affine grid ``x ~ scale * q - min`` (``q`` in ``[0, 15]`` / ``[0, 31]``) by ``make_qkx2_quants``: start from the
  sub-block's min/max, then try ``nstep + 1`` rescaled grids and keep the weighted least-squares (scale, min) of
  the one with the lowest weighted squared error (weights ``sqrt(mean x^2) + |x|``). Scales and mins are then
  stored as 6-bit multiples of two float16 super-block constants and the codes recomputed with those.
- **Q6_K** (210 bytes per 256 weights): 16 sub-blocks of 16 weights, symmetric ``q`` in ``[-32, 31]`` fitted by
  ``make_qx_quants`` (19 candidate scales around ``-32 / x_absmax``, weighted by ``x^2``), the sub-block scales
  stored as int8 multiples of one float16 constant.

The bytes are decoded by the ``gguf`` package's own dequantizer (tests check the round trip exactly). llama.cpp
compiled with fused multiply-add may round a few intermediate products differently, so a minority of blocks
can differ from its output in the last code; ``benchmarks/kquant_vs_llama_cpp.py`` measures the agreement.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
F32 = np.float32


def _seqsum(a: np.ndarray) -> np.ndarray:
    """Sum along the last axis one element at a time in float32 (the C loop's rounding)."""
    return np.cumsum(a, axis=-1, dtype=F32)[..., -1]


def _rint(a: np.ndarray) -> np.ndarray:
    """llama.cpp's ``nearest_int``: round half to even in float32."""
    return np.rint(a.astype(F32))


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine fit of each row of ``x`` ``(rows, n)``: returns ``(scale, -min, codes)`` per row."""
    x, w = x.astype(F32), weights.astype(F32)
    lo = np.minimum(x.min(axis=1), F32(0))
    hi = x.max(axis=1)
    flat = hi == lo
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(flat, F32(0), F32(nmax) / (hi - lo)).astype(F32)
        scale = np.where(flat, F32(0), F32(1) / iscale).astype(F32)
    codes = np.clip(_rint(iscale[:, None] * (x - lo[:, None])), 0, nmax)
    diff = (scale[:, None] * codes + lo[:, None]) - x
    best = _seqsum(w * (diff * diff))
    for step in range(nstep + 1):
        with np.errstate(divide="ignore", invalid="ignore"):
            trial = ((F32(rmin) + F32(rdelta) * F32(step)) + F32(nmax)) / (hi - lo)
            aux = np.clip(_rint(trial[:, None] * (x - lo[:, None])), 0, nmax).astype(F32)
        wl = w * aux
        sum_l, sum_l2, sum_xl = _seqsum(wl), _seqsum(wl * aux), _seqsum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale).astype(F32)
        this_min = np.where(positive, F32(0), this_min).astype(F32)
        d = (this_scale[:, None] * aux + this_min[:, None]) - x
        err = _seqsum(w * (d * d))
        better = (det > 0) & (err < best) & ~flat
        codes = np.where(better[:, None], aux, codes)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        lo = np.where(better, this_min, lo)  # later steps measure from the improved minimum, as the C loop does
    return scale.astype(F32), (-lo).astype(F32), codes.astype(np.uint8)


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric fit of each row of ``x`` (``rmse_type=1``: weights ``x^2``): returns ``(scale, codes + nmax)``."""
    x = x.astype(F32)
    rows = np.arange(x.shape[0])
    peak = x[rows, np.argmax(np.abs(x), axis=1)]
    zero = np.abs(peak) < F32(1e-15)
    w = x * x
    safe = np.where(zero, F32(1), peak)

    def trial(numerator: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        l = np.clip(_rint((-numerator / safe)[:, None] * x), -nmax, nmax - 1).astype(F32)
        return l, _seqsum((w * x) * l), _seqsum((w * l) * l)

    l, sumlx, suml2 = trial(np.full(x.shape[0], F32(nmax)))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
    best = scale * sumlx
    for step in [s for s in range(-9, 10) if s != 0]:
        cand, sumlx, suml2 = trial(np.full(x.shape[0], F32(nmax) + F32(0.1) * F32(step), dtype=F32))
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        l = np.where(better[:, None], cand, l)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(better, sumlx / suml2, scale).astype(F32)
        best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, F32(0), scale)
    l = np.where(zero[:, None], F32(-nmax), l)
    return scale.astype(F32), (l + nmax).astype(np.uint8)


def _f16(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=F32).astype(np.float16)


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """6-bit scales and mins of 8 sub-blocks into 12 bytes (``get_scale_min_k4``'s layout)."""
    out = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return out


def _affine_k(x: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple[np.ndarray, ...]:
    """Shared part of Q4_K and Q5_K: ``x`` (blocks, 256) -> d, dmin (float16), packed scales, codes (blocks, 256)."""
    blocks = x.shape[0]
    sub = x.reshape(-1, 32)
    av_x = np.sqrt(_seqsum(sub * sub) / F32(32)).astype(F32)
    scales, mins, codes = make_qkx2_quants(sub, av_x[:, None] + np.abs(sub), nmax, rmin, 0.1, nstep)
    scales, mins, codes = scales.reshape(blocks, 8), mins.reshape(blocks, 8), codes.reshape(blocks, 8, 32)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
    ls = np.minimum(_rint(inv_scale[:, None] * scales), 63).astype(np.uint8)
    lm = np.minimum(_rint(inv_min[:, None] * mins), 63).astype(np.uint8)
    d, dmin = _f16(max_scale / F32(63)), _f16(max_min / F32(63))
    sub_d = d.astype(F32)[:, None] * ls.astype(F32)
    sub_m = dmin.astype(F32)[:, None] * lm.astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        fresh = np.clip(_rint((x.reshape(blocks, 8, 32) + sub_m[..., None]) / sub_d[..., None]), 0, nmax)
    codes = np.where(sub_d[..., None] != 0, fresh, codes).astype(np.uint8).reshape(blocks, QK_K)
    return d, dmin, _pack_scales_k4(ls, lm), codes


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """``x`` (blocks, 256) float32 -> (blocks, 144) bytes: d, dmin, 12 scale bytes, 128 code bytes."""
    d, dmin, scales, codes = _affine_k(x, 15, -1.0, 20)
    c = codes.reshape(-1, 4, 2, 32)
    qs = (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qs], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """``x`` (blocks, 256) float32 -> (blocks, 176) bytes: d, dmin, 12 scale bytes, 32 high-bit bytes, 128 low."""
    d, dmin, scales, codes = _affine_k(x, 31, -0.5, 15)
    c = codes.reshape(-1, 4, 2, 32)
    low = c & 0xF
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    high = (c >> 4) & 1  # bit (2 * pair + half) of qh[j]
    qh = np.zeros((c.shape[0], 32), dtype=np.uint8)
    for pair in range(4):
        for half in range(2):
            qh |= (high[:, pair, half] << (2 * pair + half)).astype(np.uint8)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qh, qs], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """``x`` (blocks, 256) float32 -> (blocks, 210) bytes: 128 low-nibble bytes, 64 high-bit bytes, 16 int8 scales, d."""
    blocks = x.shape[0]
    scales, codes = make_qx_quants(x.reshape(-1, 16), 32)
    scales, codes = scales.reshape(blocks, 16), codes.reshape(blocks, 16, 16)
    pick = np.argmax(np.abs(scales), axis=1)  # first sub-block with the largest |scale|
    max_scale = scales[np.arange(blocks), pick]
    empty = np.abs(max_scale) < F32(1e-15)
    with np.errstate(divide="ignore"):
        iscale = np.where(empty, F32(0), F32(-128) / np.where(empty, F32(1), max_scale)).astype(F32)
        d = _f16(np.where(empty, F32(0), F32(1) / iscale))
    q_scales = np.minimum(_rint(iscale[:, None] * scales), 127).astype(np.int8)
    sub_d = d.astype(F32)[:, None] * q_scales.astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        fresh = np.clip(_rint(x.reshape(blocks, 16, 16) / sub_d[..., None]), -32, 31) + 32
    codes = np.where(sub_d[..., None] != 0, fresh, codes).astype(np.uint8).reshape(blocks, 2, 4, 32)
    codes = np.where(empty[:, None, None, None], 0, codes).astype(np.uint8)
    low = codes & 0xF
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2).reshape(blocks, 128)
    high = codes >> 4
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(blocks, 64)
    q_scales = np.where(empty[:, None], 0, q_scales).astype(np.int8)
    return np.concatenate([ql, qh, q_scales.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)


QUANTIZERS = {"q4_k": quantize_q4_k, "q5_k": quantize_q5_k, "q6_k": quantize_q6_k}


def quantize(weight: np.ndarray, kind: str) -> np.ndarray:
    """A ``(rows, cols)`` float array (``cols`` a multiple of 256) as GGUF bytes ``(rows, cols / 256 * block bytes)``."""
    rows, cols = weight.shape
    packed = QUANTIZERS[kind](np.ascontiguousarray(weight, dtype=F32).reshape(-1, QK_K))
    return packed.reshape(rows, -1)
