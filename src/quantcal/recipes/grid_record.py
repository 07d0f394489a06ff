"""The integer grid of a built variant's layers, kept beside its checkpoint so it can be exported packed.

An integer recipe (RTN, GPTQ, AWQ) stores its weights dequantized (``W = scale (q - zero)``, float) so any engine
can score it; :class:`LayerGrid` keeps what the dequantized values alone do not give back: each group's float16
scale and integer zero, and for AWQ the per-input-channel scale ``s`` (the stored weight is ``Q(W s) / s``;
``Q(W s)`` is on the grid and ``1/s`` belongs to the producer of the layer's input). The integer codes are
recovered exactly from the weight: ``q = round(W s / scale) + zero`` (:func:`codes`, which refuses a weight that is
not on the recorded grid).

File: ``quantcal-grid/grid.safetensors`` in the variant's folder (a subfolder: engines such as vLLM load every
top-level ``*.safetensors`` as weights); per layer ``{name}.scale`` (float16, rows x groups),
``{name}.zero`` (uint8) and for AWQ ``{name}.input_scale`` (float32, columns); the metadata holds bits, group size
and symmetry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

from quantcal.errors import QuantcalError
from quantcal.recipes import grid as integer_grid
from quantcal.recipes.spec import Param

FILE = "quantcal-grid/grid.safetensors"

#: ``mode`` of the integer recipes: the simulated float weights, or ``native``: the same grid written as a
#: compressed-tensors checkpoint (:mod:`quantcal.checkpoints.model_export`) and loaded from it: transformers unpacks it, vLLM
#: (``backend`` vllm) runs its quantized kernels on it.
MODE = Param(str, "simulated", choices=("simulated", "native"), key_default=False,
             help="simulated float weights, or native: scored from the exported compressed-tensors checkpoint "
                  "(vLLM runs its quantized kernels on it with --backend vllm)")


@dataclass(frozen=True)
class LayerGrid:
    scale: torch.Tensor  # (rows, groups), float16
    zero: torch.Tensor  # (rows, groups), uint8 in [0, 2^bits - 1]
    bits: int
    group_size: int  # columns per group (the row's width for per-channel)
    sym: bool
    input_scale: Optional[torch.Tensor] = None  # AWQ's s (columns,), float32

    @staticmethod
    def of(scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int, cols: int, sym: bool,
           input_scale: Optional[torch.Tensor] = None) -> "LayerGrid":
        """From a recipe's fitted (rows, groups) scales and zeros (any float dtype)."""
        import torch

        return LayerGrid(integer_grid.storable(scale.float()).to(integer_grid.scale_dtype()),
                         torch.round(zero).to(torch.uint8), bits, cols if group_size <= 0 else group_size, sym,
                         None if input_scale is None else input_scale.float())


def rows_rescaled(scale: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``scale`` (rows x groups, float16 values) with each row divided by ``s`` and rounded to float16 again: the
    scales of a layer whose output rows absorb the next layer's AWQ input scale ``1/s`` (float32 result)."""
    return (scale.float() / s.float()[:, None]).clamp_min(2.0 ** -24).to(integer_grid.scale_dtype()).float()


def _expand(t: torch.Tensor, group_size: int, cols: int) -> torch.Tensor:
    return t.float().repeat_interleave(group_size, dim=1)[:, :cols]


def codes(weight: torch.Tensor, layer: LayerGrid, name: str = "layer") -> torch.Tensor:
    """The integer codes (uint8, rows x cols) of a stored weight on ``layer``'s grid; refuses one that is not on it."""
    import torch

    w = weight.float() if layer.input_scale is None else weight.float() * layer.input_scale
    cols = w.shape[1]
    scale, zero = _expand(layer.scale, layer.group_size, cols), _expand(layer.zero, layer.group_size, cols)
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2 ** layer.bits - 1)
    off = ((scale * (q - zero) - w).abs() / scale).max()
    if off > 0.25:  # a quarter step: rounding still finds the code (a re-rounded producer scale moves it a little)
        raise QuantcalError(f"{name}: the stored weight is not on its recorded grid (off by {float(off):.3g} of a step)")
    return q.to(torch.uint8)


def dequantize(q: torch.Tensor, layer: LayerGrid) -> torch.Tensor:
    """``scale (q - zero)`` in float32, the on-grid weight (for AWQ ``Q(W s)``, before the ``1/s``)."""
    cols = q.shape[1]
    return _expand(layer.scale, layer.group_size, cols) * (q.float() - _expand(layer.zero, layer.group_size, cols))


def save(grids: dict[str, LayerGrid], folder: Path) -> None:
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for name, layer in grids.items():
        tensors[f"{name}.scale"] = layer.scale.contiguous()
        tensors[f"{name}.zero"] = layer.zero.contiguous()
        if layer.input_scale is not None:
            tensors[f"{name}.input_scale"] = layer.input_scale.clone()  # shared by a group: one copy each
        meta[name] = {"bits": layer.bits, "group_size": layer.group_size, "sym": layer.sym}
    (Path(folder) / FILE).parent.mkdir(exist_ok=True)
    save_file(tensors, str(Path(folder) / FILE), metadata={"layers": json.dumps(meta)})


def load(folder: Path) -> dict[str, LayerGrid]:
    """The recorded grids of a variant folder (empty when the recipe keeps none)."""
    from safetensors import safe_open

    path = Path(folder) / FILE
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["layers"])
        keys = set(f.keys())
        return {name: LayerGrid(f.get_tensor(f"{name}.scale"), f.get_tensor(f"{name}.zero"), m["bits"], m["group_size"],
                                m["sym"], f.get_tensor(f"{name}.input_scale") if f"{name}.input_scale" in keys else None)
                for name, m in meta.items()}
