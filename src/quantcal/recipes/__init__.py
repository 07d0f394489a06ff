"""Compression recipes: one spec string each (``rtn:bits=4,group_size=64``, ``gptq:bits=4``, ``gguf:q4_0``,
``bnb:nf4``), applied to a float model in simulated mode (weights on the method's exact grid, stored in float)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from quantcal.recipes import bnb, gguf_types, gptq_recipe, rtn
from quantcal.recipes.spec import Param, RecipeSpec, parse_spec


@dataclass(frozen=True)
class Family:
    params: dict[str, Param]
    positional: str | None
    apply: Callable[..., dict[str, Any]]
    summary: str


FAMILIES: dict[str, Family] = {
    "rtn": Family(rtn.PARAMS, None, rtn.apply, "round-to-nearest, group-wise integer grid"),
    "gptq": Family(gptq_recipe.PARAMS, None, gptq_recipe.apply, "GPTQ (Frantar et al. 2022), in-house, calibrated"),
    "gguf": Family(gguf_types.PARAMS, "type", gguf_types.apply, "llama.cpp formats via the gguf package"),
    "bnb": Family(bnb.PARAMS, "type", bnb.apply, "bitsandbytes NF4 / FP4 / int8"),
}


def parse_recipe(text: str) -> RecipeSpec:
    spec = parse_spec(text, {name: (f.params, f.positional) for name, f in FAMILIES.items()})
    return spec


__all__ = ["FAMILIES", "RecipeSpec", "parse_recipe"]
