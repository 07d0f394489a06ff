"""Compression recipes: one spec string each (``rtn:bits=4,group_size=64``, ``gptq:bits=4``, ``awq:bits=4``,
``hqq:bits=3``, ``gguf:q4_0``, ``bnb:nf4``, ``quanto:qint4``), applied to a float model in simulated mode (weights on
the method's exact grid, stored in float); families with a ``native`` loader also run with the library's own
quantized modules (``mode=native``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


from quantcal.recipes import awq_recipe, bnb, gguf_types, gptq_recipe, hqq, quanto, rtn
from quantcal.recipes.spec import Param, RecipeSpec, parse_spec


@dataclass(frozen=True)
class Family:
    params: dict[str, Param]
    positional: str | None
    apply: Callable[..., dict[str, Any]]
    summary: str
    native: Optional[Callable[..., Any]] = None  # (source, params, dtype, device) -> LoadedModel
    library: str = "quantcal"


FAMILIES: dict[str, Family] = {
    "rtn": Family(rtn.PARAMS, None, rtn.apply, "round-to-nearest, group-wise integer grid"),
    "gptq": Family(gptq_recipe.PARAMS, None, gptq_recipe.apply, "GPTQ (Frantar et al. 2022), in-house, calibrated"),
    "awq": Family(awq_recipe.PARAMS, None, awq_recipe.apply,
                  "AWQ (Lin et al. 2024), in-house: activation-aware scales + clipping, calibrated"),
    "hqq": Family(hqq.PARAMS, None, hqq.apply, "HQQ half-quadratic zero-point optimisation (hqq library), no calibration",
                  library="hqq"),
    "gguf": Family(gguf_types.PARAMS, "type", gguf_types.apply, "llama.cpp formats: the gguf package; K-quants ported from llama.cpp", library="gguf"),
    "bnb": Family(bnb.PARAMS, "type", bnb.apply, "bitsandbytes NF4 / FP4 / int8", bnb.load_native, "bitsandbytes"),
    "quanto": Family(quanto.PARAMS, "type", quanto.apply, "optimum-quanto qint8 / qint4 / qint2", quanto.load_native,
                     "optimum-quanto"),
}


def parse_recipe(text: str) -> RecipeSpec:
    return parse_spec(text, {name: (f.params, f.positional) for name, f in FAMILIES.items()})


__all__ = ["FAMILIES", "RecipeSpec", "parse_recipe"]
