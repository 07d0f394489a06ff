"""The frozen base a LoRA adapter trains on: float (``lora``) or 4-bit NF4 (``qlora``, Dettmers et al. 2023).

QLoRA's base comes in two forms with the same arithmetic:

- ``native``: bitsandbytes ``Linear4bit`` modules (transformers' ``BitsAndBytesConfig``), what QLoRA deploys;
  each forward dequantizes the 4-bit blocks again, which is slow on a CPU.
- ``simulated``: every decoder-block linear quantized once with bitsandbytes' own NF4 quantizer (the NF4 code
  book, block-wise absmax, optionally double-quantized absmax) and dequantized into frozen float weights.

Both quantize the same layers (decoder-block linears; embeddings, norms and the head stay float), with the
compute dtype float32 on CPU, so their forward passes agree to float rounding (tested).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from quantcal.errors import QuantcalError
from quantcal.sources.models import LoadedModel, ModelSource, load_model

Method = Literal["qlora", "lora"]
BaseForm = Literal["simulated", "native"]


@dataclass(frozen=True)
class BaseConfig:
    method: Method = "qlora"
    form: BaseForm = "simulated"
    quant_type: str = "nf4"
    blocksize: int = 64
    double_quant: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("qlora", "lora"):
            raise QuantcalError(f"`method` must be qlora or lora, got {self.method!r}")
        if self.form not in ("simulated", "native"):
            raise QuantcalError(f"`base_form` must be simulated or native, got {self.form!r}")
        if self.quant_type not in ("nf4", "fp4"):
            raise QuantcalError(f"4-bit type must be nf4 or fp4, got {self.quant_type!r}")

    @property
    def recipe_params(self) -> dict[str, Any]:
        return {"type": self.quant_type, "blocksize": self.blocksize, "double_quant": self.double_quant}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_base(source: ModelSource, config: BaseConfig, dtype: str = "auto", device: str = "cpu") -> LoadedModel:
    """The base model for training or evaluating an adapter, frozen, in the form ``config`` asks for."""
    if config.method == "qlora" and config.form == "native":
        from quantcal.recipes.bnb import load_native

        loaded = load_native(source, config.recipe_params, dtype, device)
    else:
        loaded = load_model(source, dtype=dtype, device=device)
        if config.method == "qlora":
            quantize_simulated(loaded.model, config)
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    return loaded


def quantize_simulated(model: torch.nn.Module, config: BaseConfig) -> None:
    """NF4/FP4 round trip of every decoder-block linear, in place (bitsandbytes' quantizer, float storage)."""
    from quantcal.recipes.bnb import roundtrip
    from quantcal.recipes.layers import block_linears

    for _, linear in block_linears(model):
        linear.weight.data = roundtrip(linear.weight.data, config.recipe_params)
