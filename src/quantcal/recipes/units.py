"""Units of a model that a recipe can quantize apart: whole decoder blocks, or each block's attention and MLP linears.

``block`` units are ``L0, L1, ...`` (every linear of decoder block ``i``); ``linear`` units split each block into
``L{i}.attn`` (the attention projections: q/k/v/o) and ``L{i}.mlp`` (the feed-forward projections). A unit is only
ever a set of block linears, the layers every recipe quantizes (:func:`quantcal.recipes.layers.block_linears`), so
a unit's quantized weights can be taken from a full build of the recipe and swapped into the reference model
(:func:`swapped`), and swapped back out exactly.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Mapping

import torch
from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes.layers import block_linears

UnitKind = Literal["block", "linear"]
UNIT_KINDS: tuple[str, ...] = ("block", "linear")
_ATTENTION = re.compile(r"(^|\.)(self_attn|attn|attention|self_attention)(\.|$)")
_BLOCK = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class Unit:
    """A named set of block linears (qualified module names) and their weight count."""

    name: str
    layers: tuple[str, ...]
    params: int


def family(linear_name: str) -> str:
    """``attn`` for an attention projection, ``mlp`` for every other block linear."""
    return "attn" if _ATTENTION.search(linear_name) else "mlp"


def model_units(model: nn.Module, kind: str = "block") -> list[Unit]:
    """The model's units of ``kind`` (``block`` or ``linear``), in block order (attention before MLP)."""
    if kind not in UNIT_KINDS:
        raise QuantcalError(f"unknown unit {kind!r}; units: {', '.join(UNIT_KINDS)}")
    groups: dict[str, list[tuple[str, int]]] = {}
    for name, linear in block_linears(model):
        match = _BLOCK.search(name)
        assert match is not None  # block_linears names are PREFIX.INDEX.PATH
        key = f"L{match.group(1)}" + (f".{family(name)}" if kind == "linear" else "")
        groups.setdefault(key, []).append((name, linear.weight.numel()))

    def order(key: str) -> tuple[int, int]:
        block, _, part = key[1:].partition(".")
        return int(block), {"": 0, "attn": 0, "mlp": 1}[part]
    return [Unit(key, tuple(n for n, _ in groups[key]), sum(c for _, c in groups[key])) for key in sorted(groups, key=order)]


def unit_block(unit: Unit) -> int:
    """The decoder block a unit belongs to (the lowest, should a unit ever span blocks)."""
    return min(int(m.group(1)) for m in (_BLOCK.search(n) for n in unit.layers) if m is not None)


def find_units(units: list[Unit], names: list[str]) -> list[Unit]:
    """The units called ``names``; an unknown name is an error listing a few valid ones."""
    by_name = {u.name: u for u in units}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        shown = ", ".join(u.name for u in units[:4]) + (", ..." if len(units) > 4 else "")
        raise QuantcalError(f"unknown unit {', '.join(unknown)}; this model's units: {shown}")
    return [by_name[n] for n in names]


@contextmanager
def swapped(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """``model`` with the linears named in ``weights`` holding those weights; the originals come back on exit (the
    same tensors, so the reference is restored bit for bit)."""
    modules = dict(model.named_modules())
    missing = [n for n in weights if not isinstance(modules.get(n), nn.Linear)]
    if missing:
        raise QuantcalError(f"no linear layer named {missing[0]} in {type(model).__name__}")
    originals = {name: modules[name].weight.data for name in weights}
    try:
        for name, w in weights.items():
            if w.shape != originals[name].shape:
                raise QuantcalError(f"{name}: quantized weight {tuple(w.shape)} does not fit {tuple(originals[name].shape)}")
            modules[name].weight.data = w.to(originals[name].dtype)
        yield model
    finally:
        for name, w in originals.items():
            modules[name].weight.data = w
