"""``fp8`` and ``w8a8`` variants written as compressed-tensors checkpoints: ``float-quantized`` (FP8 E4M3 weights)
and ``int-quantized`` (INT8 weights), with the activation scheme in the config, the formats llm-compressor writes
for ``FP8_DYNAMIC`` / ``W8A8`` and vLLM runs with its FP8 and INT8 kernels.

The built variant holds each block linear's weight on its grid (in float); the exporter recovers each row's scale
from it and hands weight and scale to compressed-tensors' own compressor (``FloatQuantizationCompressor`` /
``IntQuantizationCompressor``), which writes the codes:

- FP8, per channel, per tensor or per 128x128 tile (``weights=block128``, compressed-tensors' ``block`` strategy
  with ``block_structure [128, 128]``; partial tiles at the edges, which compressed-tensors pads): ``s = amax / 448``.
  The grid's largest value is the original ``amax`` exactly (``e4m3(448) = 448``), so this is the scale the build
  used.
- INT8 per channel: compressed-tensors' ``s = amax / 127.5`` leaves the largest code at 127 or -128, so the row's
  scale is ``amax / 127`` or ``amax / 128`` of the built weight, taken with the float32 neighbour that gives the
  built weights back bit for bit (``codes * s == w``). A scale one float32 rounding off would do as well in float,
  but per-token INT8 activations amplify it: on SmolLM2 (30 blocks) such an export differed from the simulation by
  up to 3.5 nats per choice, from codes flipped a layer at a time.
- SmoothQuant (``w8a8:smoothquant=...``): the built weights are ``Q(W diag(s))``; ``1 / s`` is folded into the norm
  that produces the smoothed linears' input (its weight ``w / s``, or ``(1 + w) / s - 1`` for Gemma's ``1 + w``
  norms), checked on a random input, as llm-compressor's SmoothQuantModifier leaves a model.
- Static FP8 activation scales (``acts=tensor_static``): ``input_scale = amax / 448`` per layer.

Activations are quantized at run time by the engine that loads the checkpoint (``input_activations`` in the
config: dynamic per token, or static per tensor). A ``kv:`` part adds a ``kv_cache_scheme``
(:mod:`quantcal.checkpoints.kv_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Union

import torch

from quantcal.checkpoints.formats import (COMPRESSED_TENSORS, ExportedModel, check_dtype, export_record, read_tensors,
                                         variant_record, write_quantized)
from quantcal.errors import QuantcalError
from quantcal.recipes.fp8 import BLOCK as TILE  # the side of an FP8 block128 tile, as the recipe builds it
from quantcal.recipes.number_formats import E4M3_MAX



def _schemes(family: str, params: dict[str, Any]) -> tuple[Any, str]:
    """compressed-tensors' scheme for every block linear, and the checkpoint format."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    kind = "float" if family == "fp8" else "int"
    if params.get("weights") == "block128":
        weights = QuantizationArgs(num_bits=8, type=kind, symmetric=True, strategy="block",
                                   block_structure=[TILE, TILE], dynamic=False)
    else:
        strategy = "tensor" if params.get("weights") == "tensor" else "channel"
        weights = QuantizationArgs(num_bits=8, type=kind, symmetric=True, strategy=strategy, dynamic=False)
    acts = params.get("acts", "token")
    inputs = None
    if acts == "token":
        inputs = QuantizationArgs(num_bits=8, type=kind, symmetric=True, strategy="token", dynamic=True)
    elif acts == "tensor_static":
        inputs = QuantizationArgs(num_bits=8, type=kind, symmetric=True, strategy="tensor", dynamic=False)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=inputs)
    return scheme, "float-quantized" if kind == "float" else "int-quantized"


def tile_scale(w: torch.Tensor) -> torch.Tensor:
    """FP8 scales per :data:`TILE` x :data:`TILE` tile, shaped ``(ceil(rows / TILE), ceil(cols / TILE))`` (the edge
    tiles partial: zeros padded in do not change a tile's amax)."""
    import torch.nn.functional as F

    rows, cols = w.shape
    padded = F.pad(w.float().abs(), (0, -cols % TILE, 0, -rows % TILE))
    amax = padded.reshape(padded.shape[0] // TILE, TILE, padded.shape[1] // TILE, TILE).amax(dim=(1, 3))
    return (amax / E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny)


def weight_scale(w: torch.Tensor, family: str, per_tensor: bool) -> torch.Tensor:
    """The scale the build used for ``w`` (module doc), shaped ``(rows, 1)`` per channel or ``(1,)`` per tensor."""
    w = w.float()
    amax = w.abs().amax() if per_tensor else w.abs().amax(dim=1, keepdim=True)
    tiny = torch.finfo(torch.float32).tiny
    if family == "fp8":
        return (amax / E4M3_MAX).clamp_min(tiny).reshape(-1 if per_tensor else w.shape[0], *(() if per_tensor else (1,)))
    # the build's scale is amax_original / 127.5; the largest code is 127 or -128, so amax / 127 or / 128 recovers it
    # to a float32 rounding. Each row takes the candidate (and its float32 neighbours) whose codes times it give the
    # built weights back bit for bit, else the one whose codes are integers to 1e-3.
    exact = torch.full_like(amax, torch.nan)
    close = torch.full_like(amax, torch.nan)
    for divisor in (127.0, 128.0):
        base = (amax / divisor).clamp_min(tiny)
        for scale in (base, torch.nextafter(base, torch.full_like(base, torch.inf)),
                      torch.nextafter(base, torch.zeros_like(base))):
            codes = torch.round(w / scale).clamp(-128, 127)
            same = (codes * scale == w).all(dim=1, keepdim=True)
            exact = torch.where(same & torch.isnan(exact), scale, exact)
            off = (w / scale - torch.round(w / scale)).abs().amax(dim=1, keepdim=True)
            close = torch.where((off <= 1e-3) & torch.isnan(close), scale, close)
    best = torch.where(torch.isnan(exact), close, exact)
    if torch.isnan(best).any():
        raise QuantcalError("an INT8 row of the built variant is not on a symmetric INT8 grid; rebuild it")
    return best


def _fold_smoothing(variant_dir: Path, smooth: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> int:
    """Fold each smoothed group's ``1 / s`` into the norm that produces its input (module doc); returns the count."""
    from transformers import AutoModelForCausalLM

    from quantcal.recipes.folding import fold_norm as _fold_norm, producers as _producers

    model = AutoModelForCausalLM.from_pretrained(variant_dir, dtype=torch.float32).eval()
    modules = dict(model.named_modules())
    folded: dict[str, torch.Tensor] = {}
    for name, producer in _producers(model, list(smooth)).items():
        s = smooth[name]
        if producer in folded:
            if not torch.equal(folded[producer], s):
                raise QuantcalError(f"{producer} feeds layers with different SmoothQuant scales; cannot fold them")
            continue
        key = f"{producer}.weight"
        if isinstance(modules[producer], torch.nn.Linear) or key not in state:
            raise QuantcalError(f"{name}: its input comes from {producer}, not a norm; cannot fold SmoothQuant's scale")
        state[key] = _fold_norm(modules[producer], s, producer).to(state[key].dtype)
        folded[producer] = s
    return len(folded)


def export_activation_quantized(variant_dir: Union[str, Path], out: Union[str, Path], dtype: str = "float32",
                                say: Callable[[str], None] = lambda m: None, kv: Any = None) -> ExportedModel:
    """Write the built ``fp8`` / ``w8a8`` variant in ``variant_dir`` to ``out`` (module doc); ``kv`` adds a KV-cache
    scheme (:mod:`quantcal.checkpoints.kv_checkpoint`)."""
    from compressed_tensors.compressors import FloatQuantizationCompressor, IntQuantizationCompressor

    from quantcal.recipes import parse_recipe
    from quantcal.recipes.smoothquant import decode

    variant_dir, out = Path(variant_dir), Path(out)
    check_dtype(dtype)
    meta = variant_record(variant_dir)
    spec = parse_recipe(meta["recipe"])
    params = dict(spec.params)
    scheme, fmt = _schemes(spec.family, params)
    compressor = FloatQuantizationCompressor if spec.family == "fp8" else IntQuantizationCompressor
    activations = meta.get("runtime", {}).get("activations") or {}
    smooth = {k: decode(v) for k, v in (activations.get("smooth") or {}).items()}
    state = read_tensors(variant_dir)
    names = block_linear_names(variant_dir)
    quantized: dict[str, torch.Tensor] = {}
    on_disk_bytes = weights = 0
    for name in names:
        w = state.pop(f"{name}.weight")
        scale = (tile_scale(w) if params.get("weights") == "block128"
                 else weight_scale(w, spec.family, params.get("weights") == "tensor"))
        entries = {"weight": w.float(), "weight_scale": scale}
        compressed = compressor.compress(entries, scheme)
        if params.get("acts") == "tensor_static":
            compressed["input_scale"] = torch.tensor([activations["amax"][name] / E4M3_MAX], dtype=torch.float32)
        for key, tensor in compressed.items():
            quantized[f"{name}.{key}"] = tensor.contiguous()
            on_disk_bytes += tensor.numel() * tensor.element_size()
        weights += w.numel()
    folded = _fold_smoothing(variant_dir, smooth, state) if smooth else 0
    if smooth:
        say(f"folding SmoothQuant's scales into {folded} norms")
    record = {**meta, "export": export_record(f"compressed-tensors {fmt}", dtype, len(names), weights, on_disk_bytes,
                                              smoothquant_folded_norms=folded)}
    write_quantized(out, variant_dir, state, quantized, scheme_config(scheme, fmt), dtype, record, kv)
    bits = record["export"]["bits_per_weight_on_disk"]
    say(f"{meta['recipe']}: {len(names)} layers as compressed-tensors {fmt}, {bits:.3f} bits per weight on disk, "
        f"written to {out}")
    return ExportedModel(out, meta["recipe"], COMPRESSED_TENSORS, len(names), bits, record)


def scheme_config(scheme: Any, fmt: str) -> dict[str, Any]:
    """The checkpoint's ``quantization_config``: ``scheme`` on every decoder linear (``lm_head`` kept in float),
    stored compressed in ``fmt``."""
    from compressed_tensors.quantization import QuantizationConfig

    qconfig = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"], format=fmt,
                                 quantization_status="compressed")
    return json.loads(qconfig.model_dump_json(exclude_none=True)) | {"quant_method": "compressed-tensors"}


def block_linear_names(variant_dir: Path) -> list[str]:
    """The decoder-block linears of the variant (a meta-device model: no weights are read)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from quantcal.recipes.layers import block_linears

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(variant_dir))
    return [name for name, _ in block_linears(model)]
