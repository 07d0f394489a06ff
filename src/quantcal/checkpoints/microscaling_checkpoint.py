"""``nvfp4`` and ``mxfp4`` variants written as compressed-tensors checkpoints: ``nvfp4-pack-quantized`` and
``mxfp4-pack-quantized`` (two E2M1 codes per byte), with the ``NVFP4`` / ``NVFP4A16`` / ``MXFP4`` / ``MXFP4A16``
preset schemes in the config, the formats llmcompressor writes and vLLM serves with its FP4 kernels.

The built variant holds each block linear's weight on its grid (in float); the exporter recovers every block's scale
from it and hands weight and scales to compressed-tensors' own compressor, then decompresses what it wrote with the
same library and requires the built weights back bit for bit (else it refuses: rebuild the variant).

- NVFP4: the per-tensor global scale ``g = 448 * 6 / amax(W)`` is the build's (its record keeps ``amax(W)``;
  a variant built before it did is searched around ``448 * 6 / max|Ŵ|``, the same number up to float32 roundings);
  a block's FP8 scale ``s_b = e4m3(amax_b / 6 * g)`` is recovered as ``e4m3(max|Ŵ_b| / c * g)`` with ``c`` the
  block's largest E2M1 code (6 for all but the smallest blocks, whose FP8 scale is subnormal), the first ``c`` whose
  codes give the block back. A block whose FP8 scale rounded to 0 was built with 0.125 (compressed-tensors' floor):
  written so.
- MXFP4: a block's scale is the power of two ``max|Ŵ_b| / c`` for its largest code ``c`` (4 or 6 under either
  rounding of the block maximum), written as its E8M0 exponent.
- Activations are quantized at run time by the engine that loads the checkpoint: NVFP4 with a static per-layer
  ``input_global_scale = 448 * 6 / amax(input)`` from the variant's calibration, MXFP4 dynamically. compressed-tensors
  rounds an MX activation block's maximum to nearest, so ``mxfp4:scale_rounding=floor`` with activations is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Union

import torch

from quantcal.checkpoints.formats import (COMPRESSED_TENSORS, ExportedModel, check_dtype, export_record, read_tensors,
                                         variant_record, write_quantized)
from quantcal.errors import QuantcalError
from quantcal.recipes.number_formats import E2M1_MAX, E2M1_VALUES, E4M3_MAX, cast_e2m1, cast_e4m3

BLOCK = {"nvfp4": 16, "mxfp4": 32}
#: the candidate largest codes of a block, most likely first
_CODES = tuple(sorted((v for v in E2M1_VALUES if v > 0), reverse=True))


def _reproduces(blocks: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per block: whether E2M1 codes times ``scale`` give ``blocks`` back exactly."""
    return (cast_e2m1(blocks / scale) * scale == blocks).all(dim=-1)


def nvfp4_scales(w: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The FP8 block scales (shape ``(rows, cols / 16)``, in float) and the global scale (shape ``(1,)``) that give
    the built NVFP4 weight ``w`` back, with the global scale computed from ``amax`` as the build did; None when no
    block scales do."""
    blocks = w.float().reshape(w.shape[0], -1, BLOCK["nvfp4"])
    top = blocks.abs().amax(dim=-1)
    g = E4M3_MAX * E2M1_MAX / amax.float().clamp_min(torch.finfo(torch.float32).tiny)
    chosen = torch.full_like(top, torch.nan)
    for code in _CODES:
        local = cast_e4m3(top / code * g)
        local = torch.where(local == 0, torch.full_like(local, 0.125), local)
        ok = _reproduces(blocks, (local / g)[..., None]) & torch.isnan(chosen)
        chosen = torch.where(ok, local, chosen)
        if not torch.isnan(chosen).any():
            return chosen, g.reshape(1)
    return None


def mxfp4_scales(w: torch.Tensor) -> torch.Tensor | None:
    """The power-of-two block scales (shape ``(rows, cols / 32)``) that give the built MXFP4 weight ``w`` back."""
    blocks = w.float().reshape(w.shape[0], -1, BLOCK["mxfp4"])
    top = blocks.abs().amax(dim=-1)
    chosen = torch.where(top == 0, torch.full_like(top, 2.0 ** -127), torch.full_like(top, torch.nan))
    for code in _CODES:
        scale = top / code
        mantissa, _ = torch.frexp(scale)
        ok = (mantissa == 0.5) & _reproduces(blocks, scale[..., None]) & torch.isnan(chosen)
        chosen = torch.where(ok, scale, chosen)
    return None if torch.isnan(chosen).any() else chosen


def scheme_for(family: str, params: dict[str, Any]) -> Any:
    """compressed-tensors' preset scheme for the recipe (W4A4 or, with ``acts=none``, W4A16) on every ``Linear``."""
    from compressed_tensors.quantization import preset_name_to_scheme

    name = family.upper() + ("A16" if params.get("acts") == "none" else "")
    return preset_name_to_scheme(name, ["Linear"])


def export_microscaling(variant_dir: Union[str, Path], out: Union[str, Path], dtype: str = "float32",
                        say: Callable[[str], None] = lambda m: None, kv: Any = None) -> ExportedModel:
    """Write the built ``nvfp4`` / ``mxfp4`` variant in ``variant_dir`` to ``out`` (module doc); ``kv`` adds a KV-cache
    scheme (:mod:`quantcal.checkpoints.kv_checkpoint`)."""
    from compressed_tensors.compressors import MXFP4PackedCompressor, NVFP4PackedCompressor

    from quantcal.checkpoints.activation_checkpoint import block_linear_names, scheme_config
    from quantcal.recipes import parse_recipe

    variant_dir, out = Path(variant_dir), Path(out)
    check_dtype(dtype)
    meta = variant_record(variant_dir)
    spec = parse_recipe(meta["recipe"])
    params = dict(spec.params)
    if spec.family == "mxfp4" and params["acts"] != "none" and params["scale_rounding"] != "nearest":
        raise QuantcalError(f"{spec.key}: compressed-tensors rounds MX activation scales to nearest; a checkpoint of "
                            "this variant would not score as it does. Export mxfp4 with scale_rounding=nearest or "
                            "acts=none")
    scheme = scheme_for(spec.family, params)
    compressor = NVFP4PackedCompressor if spec.family == "nvfp4" else MXFP4PackedCompressor
    fmt = "nvfp4-pack-quantized" if spec.family == "nvfp4" else "mxfp4-pack-quantized"
    activations = meta.get("runtime", {}).get("activations") or {}
    weight_amax = meta.get("weight_amax") or {}
    state = read_tensors(variant_dir)
    names = block_linear_names(variant_dir)
    quantized: dict[str, torch.Tensor] = {}
    on_disk_bytes = weights = 0
    for name in names:
        w = state.pop(f"{name}.weight").float()
        entries = _entries(name, w, spec.family, weight_amax.get(name))
        if spec.family == "nvfp4" and params["acts"] == "group":
            entries["input_global_scale"] = (E4M3_MAX * E2M1_MAX / torch.tensor([activations["amax"][name]],
                                                                                dtype=torch.float32))
        compressed = compressor.compress(entries, scheme)
        back = decompressed_weight(compressor, compressed, scheme)
        if not torch.equal(back, w):
            raise QuantcalError(f"{name}: compressed-tensors does not give the built weights back from the recovered "
                                f"scales (max gap {float((back.float() - w).abs().max()):.3g}); rebuild the variant")
        for key, tensor in compressed.items():
            quantized[f"{name}.{key}"] = tensor.contiguous()
            on_disk_bytes += tensor.numel() * tensor.element_size()
        weights += w.numel()
    record = {**meta, "export": export_record(f"compressed-tensors {fmt}", dtype, len(names), weights, on_disk_bytes)}
    write_quantized(out, variant_dir, state, quantized, scheme_config(scheme, fmt), dtype, record, kv)
    bits = record["export"]["bits_per_weight_on_disk"]
    say(f"{meta['recipe']}: {len(names)} layers as compressed-tensors {fmt}, {bits:.3f} bits per weight on disk, "
        f"written to {out}")
    return ExportedModel(out, meta["recipe"], COMPRESSED_TENSORS, len(names), bits, record)


def decompressed_weight(compressor: Any, compressed: dict[str, torch.Tensor], scheme: Any) -> torch.Tensor:
    """The weight compressed-tensors reads back from what it wrote, in float32 (its own ``decompress`` unpacks the
    codes to bfloat16 and dequantizes in bfloat16: a rounding of its CPU path that vLLM's FP4 kernels do not make)."""
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    packed = compressed["weight_packed"]
    codes = unpack_fp4_from_uint8(packed, packed.shape[0], packed.shape[1] * 2, dtype=torch.float32)
    scale = compressor._decompress_scale(compressed["weight_scale"], torch.float32)
    return dequantize(x_q=codes, scale=scale, args=scheme.weights, global_scale=compressed.get("weight_global_scale"),
                      dtype=torch.float32)


def _entries(name: str, w: torch.Tensor, family: str, amax: float | None) -> dict[str, torch.Tensor]:
    """weight and recovered scales of one layer, as compressed-tensors' compressor takes them."""
    if family == "mxfp4":
        scale = mxfp4_scales(w)
        if scale is None:
            raise QuantcalError(f"{name}: the built weight is not on an MXFP4 grid; rebuild the variant")
        return {"weight": w, "weight_scale": scale}
    top = w.abs().amax()
    # a variant built before its record kept amax(W): the largest built value is amax(W) up to float32 roundings
    nearby = [top]
    for direction in (torch.tensor(torch.inf), torch.tensor(0.0)):
        step = top
        for _ in range(3):
            step = torch.nextafter(step, direction)
            nearby.append(step)
    candidates = ([torch.tensor(amax, dtype=torch.float32)] if amax is not None else []) + nearby
    for candidate in candidates:
        found = nvfp4_scales(w, candidate)
        if found is not None:
            scale, g = found
            return {"weight": w, "weight_scale": scale, "weight_global_scale": g}
    raise QuantcalError(f"{name}: the built weight is not on an NVFP4 grid; rebuild the variant")
