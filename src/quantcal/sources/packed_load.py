"""Loading exported quantized checkpoints so that they compute what the simulated variant computes.

bitsandbytes checkpoints: :func:`keep_compute_dtype` keeps bitsandbytes' 4-bit modules in the compute dtype.

compressed-tensors pack-quantized checkpoints: the integer layers are read back in float32.

transformers (5.24, compressed-tensors 0.20.1) loads an asymmetric pack-quantized checkpoint only with
``dequantize=True`` (its compressed modules expect an unpacked zero point where the format packs it), and that
path computes ``(q - zero) * scale`` in the scale's dtype, float16: every weight is rounded to float16. On the bundled
SmolLM2 that moves per-choice log-likelihoods by up to 0.18 (``benchmarks/packed_export.py``), so quantcal, after
transformers has loaded the model, sets each quantized linear's weight again from the file: the codes and zeros
unpacked with compressed-tensors' own helper, ``scale (q - zero)`` in float32 (exact for float16 scales).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def packed_scheme(location: Path) -> dict[str, Any] | None:
    """The ``weights`` arguments of a compressed-tensors pack-quantized checkpoint (one scheme), else ``None``."""
    config_file = location / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text()).get("quantization_config") or {}
    if config.get("quant_method") != "compressed-tensors" or config.get("format") != "pack-quantized":
        return None
    groups = list(config.get("config_groups", {}).values())
    return groups[0].get("weights") if len(groups) == 1 else None


def load_kwargs(location: Path) -> dict[str, Any]:
    """``from_pretrained`` arguments: ``dequantize=True`` for an asymmetric pack-quantized checkpoint."""
    scheme = packed_scheme(location)
    if scheme is None or scheme.get("symmetric", True):
        return {}
    from transformers import CompressedTensorsConfig

    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}


def restore_float32(model: torch.nn.Module, location: Path) -> int:
    """Set each packed linear's weight to ``scale (q - zero)`` computed in float32 from the checkpoint's files
    (after a ``dequantize=True`` load); returns the number of layers set. A symmetric checkpoint (kept compressed by
    transformers, dequantized in float32 at each forward) is left alone."""
    scheme = packed_scheme(location)
    if scheme is None or scheme.get("symmetric", True):
        return 0
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors import safe_open

    bits = int(scheme["num_bits"])
    modules = dict(model.named_modules())
    count = 0
    for file in sorted(location.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            names = [k[: -len(".weight_packed")] for k in f.keys() if k.endswith(".weight_packed")]
            for name in names:
                shape = tuple(int(x) for x in f.get_tensor(f"{name}.weight_shape"))
                scale = f.get_tensor(f"{name}.weight_scale").float()
                q = unpack_from_int32(f.get_tensor(f"{name}.weight_packed"), bits, torch.Size(shape)).float()
                zero = unpack_from_int32(f.get_tensor(f"{name}.weight_zero_point"), bits,
                                         torch.Size((shape[0], scale.shape[1])), packed_dim=0).float()
                group = -(-shape[1] // scale.shape[1])
                expand = lambda t: t.repeat_interleave(group, dim=1)[:, : shape[1]]  # noqa: E731
                module = modules[name]
                module.weight.data = (expand(scale) * (q - expand(zero))).to(module.weight.dtype)
                count += 1
    return count


def keep_compute_dtype(model: Any) -> None:
    """Turn off bitsandbytes' AVX-512-BF16 CPU inference path on every 4-bit module.

    On CPUs with AVX512-BF16, ``Linear4bit`` in eval mode repacks its weights and multiplies in bfloat16 whatever
    the compute dtype, so scores would depend on the processor (max |Δ log p| 0.38 on SmolLM2-135M against the
    float32 path, measured on an AMD EPYC with AVX512-BF16), and it fails outright on layers narrower than the
    block size. With it off, the module dequantizes the same NF4/FP4 grid and multiplies in the compute dtype:
    the same numbers on every CPU, equal to the simulated form.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
