"""bitsandbytes formats: NF4 and FP4 (block-wise absmax 4-bit, Dettmers et al. 2023) and int8 (row-wise absmax,
the weight side of LLM.int8()).

Simulated mode (the default, runs everywhere): each block linear is quantized with bitsandbytes' own functions
and dequantized back, so the weights are exactly bitsandbytes' grid. For int8, LLM.int8()'s run-time outlier
decomposition of activations is not simulated (weights only).

Native mode (``mode=native``): the reference is loaded through transformers' ``BitsAndBytesConfig``, so the
decoder-block linears are bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` modules (the output head stays float, as
in the simulated mode); 4-bit native uses bitsandbytes' block size 64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes.layers import block_linears, mean_bits
from quantcal.recipes.spec import Param

if TYPE_CHECKING:
    from quantcal.sources.models import LoadedModel, ModelSource

PARAMS = {
    "type": Param(str, None, choices=("nf4", "fp4", "int8")),
    "blocksize": Param(int, 64, choices=(64, 128, 256, 512, 1024, 2048, 4096), help="4-bit: weights per absmax block"),
    "double_quant": Param(bool, False, choices=(True, False), help="4-bit: quantize the absmax constants too (QLoRA)"),
    "mode": Param(str, "simulated", choices=("simulated", "native"), help="dequantized float weights, or bitsandbytes' modules",
                  key_default=False),
}


def _functional() -> Any:
    try:
        import bitsandbytes.functional as F
    except ImportError as exc:
        raise QuantcalError("bnb recipes need bitsandbytes: pip install 'bitsandbytes==0.50.2'") from exc
    return F


def roundtrip(weight: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    F = _functional()
    w = weight.float().contiguous()
    if params["type"] == "int8":
        codes, stats, _ = F.int8_vectorwise_quant(w)
        return (codes.float() * stats[:, None] / 127.0).to(weight.dtype)
    packed, state = F.quantize_4bit(w, blocksize=params["blocksize"], quant_type=params["type"],
                                    compress_statistics=params["double_quant"])
    return F.dequantize_4bit(packed, state).to(weight.dtype)


def bits_per_weight(params: dict[str, Any], in_features: int) -> float:
    if params["type"] == "int8":
        return 8 + 32 / in_features
    if params["double_quant"]:
        return 4 + 8 / params["blocksize"] + 32 / (params["blocksize"] * 256)
    return 4 + 32 / params["blocksize"]


def apply(model: nn.Module, params: dict[str, Any], **_: Any) -> dict[str, Any]:
    sizes = []
    for _, linear in block_linears(model):
        linear.weight.data = roundtrip(linear.weight.data, params)
        sizes.append((linear.weight.numel(), bits_per_weight(params, linear.in_features)))
    return {"bits_per_weight": mean_bits(sizes)}


def load_native(source: ModelSource, params: dict[str, Any], dtype: str = "auto", device: str = "cpu") -> LoadedModel:
    """The reference with bitsandbytes modules in its decoder blocks (transformers' ``BitsAndBytesConfig``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from quantcal.sources.models import LoadedModel, dequantized_gguf_copy, resolve_dtype
    from quantcal.sources.packed_load import keep_compute_dtype

    _functional()
    if params["type"] != "int8" and params["blocksize"] != 64:
        raise QuantcalError("native 4-bit bitsandbytes uses block size 64; other block sizes need the simulated form")
    location = str(dequantized_gguf_copy(source)) if source.kind in ("bundled", "gguf") else source.location
    compute = resolve_dtype(dtype, device)
    if params["type"] == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=params["type"],
                                    bnb_4bit_use_double_quant=params["double_quant"], bnb_4bit_compute_dtype=compute)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, quantization_config=config, dtype=compute,
                                                     device_map=device, use_safetensors=True)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        raise QuantcalError(f"cannot load {source.spec!r} with native bitsandbytes {params['type']}: "
                            f"{str(exc).splitlines()[0]}") from exc
    model.eval()
    keep_compute_dtype(model)
    return LoadedModel(model, tokenizer, source)
