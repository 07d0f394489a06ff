"""optimum-quanto weight quantization: ``qint8`` (symmetric per-output-channel absmax) and ``qint4``/``qint2``
(affine, group-wise; quanto picks the group: 128, else the largest of 96/64/32 that divides the input width, else
one group per row).

- ``simulated`` (default): each decoder-block linear becomes quanto's ``QLinear`` (frozen), whose quantized weight
  is dequantized back into the float linear: exactly quanto's grid.
- ``native``: the decoder-block linears are replaced by quanto's frozen ``QLinear`` modules and the model runs
  quanto's own kernels/fallbacks (built at load time from the reference; quantization takes about a second).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes.layers import block_linears, mean_bits
from quantcal.recipes.spec import Param

if TYPE_CHECKING:
    from quantcal.sources.models import LoadedModel, ModelSource

PARAMS = {
    "type": Param(str, None, choices=("qint8", "qint4", "qint2")),
    "mode": Param(str, "simulated", choices=("simulated", "native"), help="dequantized float weights, or quanto's modules",
                  key_default=False),
}


def quantized_linear(linear: nn.Linear, qtype_name: str) -> nn.Module:
    try:
        from optimum.quanto import qtypes
        from optimum.quanto.nn import QLinear
    except ImportError as exc:
        raise QuantcalError("quanto recipes need optimum-quanto: pip install 'quantcal[recipes]'") from exc
    module = QLinear.from_module(linear, weights=qtypes[qtype_name])
    module.freeze()
    return module


def group_size(module: nn.Module) -> int:
    """The group size quanto used (``-1``: one scale per output row)."""
    return int(module.weight_group_size or -1)


def bits_per_weight(qtype_name: str, in_features: int, group: int) -> float:
    if qtype_name == "qint8":
        return 8 + 16 / in_features  # one float16 scale per row
    bits = 4 if qtype_name == "qint4" else 2
    per_row = in_features if group <= 0 else group
    return bits + 32 / per_row  # float16 scale and shift per group


def apply(model: nn.Module, params: dict[str, Any], **_: Any) -> dict[str, Any]:
    import torch

    sizes, groups = [], {}
    for name, linear in block_linears(model):
        module = quantized_linear(linear, params["type"])
        with torch.no_grad():
            linear.weight.data = module.qweight.dequantize().to(linear.weight.dtype).contiguous()
        groups[name] = group_size(module)
        sizes.append((linear.weight.numel(), bits_per_weight(params["type"], linear.in_features, groups[name])))
    return {"bits_per_weight": mean_bits(sizes),
            "quanto_group_sizes": sorted(set(groups.values()))}


def load_native(source: ModelSource, params: dict[str, Any], dtype: str = "auto", device: str = "cpu") -> LoadedModel:
    """The reference with every decoder-block linear replaced by quanto's frozen ``QLinear``."""
    from quantcal.sources.models import load_model

    loaded = load_model(source, dtype=dtype, device=device)
    modules = dict(loaded.model.named_modules())
    for name, linear in list(block_linears(loaded.model)):
        parent, _, leaf = name.rpartition(".")
        setattr(modules[parent], leaf, quantized_linear(linear, params["type"]))
    return loaded
