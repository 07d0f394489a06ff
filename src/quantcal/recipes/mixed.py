"""The ``mixed`` recipe: calibration-preserving mixed precision.

``mixed:base=(rtn:bits=3,group_size=64),protect=(rtn:bits=8,group_size=64),budget=4.5,ranking=sens/sensitivity.json``
keeps the units a sensitivity run (``quantcal sensitivity``, :mod:`quantcal.study.sensitivity`) found most harmful to
calibration at the ``protect`` recipe (another recipe, or ``float``) and quantizes the rest with ``base``.

Selection (:func:`select_units`): units are taken in decreasing order of harm, the unit's paired change of ``rank``
(ΔNLL by default; ΔECE or ΔBrier) when quantized alone, combined over the ranking's tasks as ``combine`` says
(:func:`quantcal.analysis.sensitivity.combine_harms`: by default each task's Δ as a share of the whole recipe's Δ on
that task, averaged, so a task with a larger metric scale does not outvote the others); a unit is protected when
it harmed (Δ > 0) and protecting it keeps the model's bits per weight (counted as every recipe counts them: codes,
scales and zeros over the block linears, float counted at 16) within ``budget``; a unit that does not fit is passed
over for the next, smaller or cheaper one. The choice depends only on the ranking file and the two recipes, so it is
made (and a budget below the base recipe's bits refused) before anything is built.

Building: the base and protect recipes are each built once in full (cached as any variant) and every unit's linears
are copied from one of the two checkpoints. For sequential recipes (GPTQ) a block's weights were computed after the
blocks before it were quantized with the same recipe; the composite keeps those weights as built, as the
sensitivity run that ranked the units did (it swaps units from the same full build).

The ranking must come from the same model and the base recipe (refused otherwise), and a mixed variant may not be
evaluated on the ranking's items (:func:`forbidden_items`): the selection was tuned on them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes.spec import Param

FLOAT = "float"
FLOAT_BITS = 16.0  # unquantized weights count as 16-bit, as the packed sizes of every recipe do
RANK_METRICS = ("nll", "ece", "brier")
COMBINE = ("share", "mean")  # the modes of quantcal.analysis.sensitivity.combine_harms (not imported here: scipy)


class RecipeText(str):
    """A nested recipe's canonical key (``rtn:bits=3,group_size=64,sym=false``), or ``float``."""

    what = "a recipe in parentheses, e.g. (rtn:bits=3,group_size=64), or float"

    def __new__(cls, text: str) -> "RecipeText":
        from quantcal.recipes import FAMILIES, parse_recipe

        text = text.strip()
        if text.lower() == FLOAT:
            return str.__new__(cls, FLOAT)
        spec = parse_recipe(text)
        family = FAMILIES[spec.family]
        if family.layer_bits is None or spec.params.get("mode", "simulated") != "simulated":
            usable = ", ".join(n for n, f in FAMILIES.items() if f.layer_bits is not None)
            raise QuantcalError(f"recipe mixed: {spec.key} cannot be mixed per unit (usable: {usable}, simulated, or float)")
        return str.__new__(cls, spec.key)


class PathText(str):
    """A file path, kept as written (not lower-cased)."""

    what = "a file path"


PARAMS = {
    "base": Param(RecipeText, None, help="the recipe for every unit not protected"),
    "protect": Param(RecipeText, "rtn:bits=8,group_size=64,sym=false", help="the recipe (or float) for protected units"),
    "budget": Param(float, None, low=1.0, high=32.0, help="bits per weight over the block linears, at most"),
    "rank": Param(str, "nll", choices=RANK_METRICS, help="which sensitivity ranks the units"),
    "combine": Param(str, "share", choices=COMBINE,
                     help="over a ranking's tasks: share (each unit's Δ as a fraction of the whole recipe's on that "
                          "task, averaged: tasks weigh the same) or mean (raw Δs averaged: larger-scale tasks weigh more)"),
    "ranking": Param(PathText, None, help="a sensitivity.json written by `quantcal sensitivity` for this model and base"),
}


def layer_bits(recipe: str, in_features: int) -> float:
    """Bits per weight of one linear with ``in_features`` inputs under ``recipe`` (a canonical key, or float)."""
    from quantcal.recipes import FAMILIES, parse_recipe

    if recipe == FLOAT:
        return FLOAT_BITS
    spec = parse_recipe(recipe)
    bits = FAMILIES[spec.family].layer_bits
    assert bits is not None  # RecipeText admits only families that count per layer
    return bits(dict(spec.params), in_features)


@dataclass(frozen=True)
class UnitCost:
    """A unit as the selection sees it: its weights, bits at base and at protect, and how much it harmed."""

    name: str
    params: int
    base_bits: float
    protect_bits: float
    harm: float


@dataclass(frozen=True)
class Selection:
    protected: tuple[str, ...]
    bits_per_weight: float
    base_bits_per_weight: float


def select_units(units: Sequence[UnitCost], budget: float) -> Selection:
    """Protect the most harmful units (``harm > 0``, in decreasing order) while the mean bits per weight stays
    within ``budget``; a unit that would overshoot is passed over."""
    total = sum(u.params for u in units)
    bits = sum(u.params * u.base_bits for u in units)
    base = bits / total
    if budget + 1e-9 < base:
        raise QuantcalError(f"recipe mixed: budget={budget:g} bits per weight is below the base recipe's {base:.3f}")
    protected = []
    for unit in sorted(units, key=lambda u: -u.harm):
        if unit.harm <= 0:
            break
        extra = unit.params * (unit.protect_bits - unit.base_bits)
        if (bits + extra) / total <= budget + 1e-9:
            bits += extra
            protected.append(unit.name)
    return Selection(tuple(protected), bits / total, base)


def read_ranking(path: str) -> dict[str, Any]:
    """A sensitivity run's JSON (``quantcal sensitivity`` writes it), as the ``ranking`` parameter names it."""
    from quantcal.analysis.sensitivity import read_sensitivity

    if not Path(path).is_file():
        raise QuantcalError(f"recipe mixed: ranking={path}: file not found (write one with `quantcal sensitivity`)")
    try:
        return read_sensitivity(path)
    except QuantcalError as exc:
        raise QuantcalError(f"recipe mixed: ranking={exc}") from None


def ranking_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def unit_costs(params: dict[str, Any], ranking: dict[str, Any]) -> list[UnitCost]:
    """Each ranked unit's size, bits at base and protect, and harm (the paired Δ of ``rank``, combined over the
    ranking's tasks as ``combine`` says)."""
    from quantcal.analysis.sensitivity import ranking_from_json

    try:
        harm = dict(ranking_from_json(ranking, params["rank"], params["combine"]))
    except QuantcalError as exc:
        raise QuantcalError(f"recipe mixed: {exc}") from None
    costs = []
    for unit in ranking["units"]:
        base = sum(layer["numel"] * layer_bits(params["base"], layer["in_features"]) for layer in unit["layers"])
        protect = sum(layer["numel"] * layer_bits(params["protect"], layer["in_features"]) for layer in unit["layers"])
        costs.append(UnitCost(unit["name"], unit["params"], base / unit["params"], protect / unit["params"],
                              harm[unit["name"]]))
    return costs


def plan(params: dict[str, Any]) -> Selection:
    """Check the spec against its ranking and choose the protected units (no model is loaded)."""
    ranking = read_ranking(params["ranking"])
    if ranking["recipe"] != params["base"]:
        raise QuantcalError(f"recipe mixed: the ranking {params['ranking']} measured {ranking['recipe']}, not the base "
                            f"{params['base']}; run `quantcal sensitivity` with the base recipe")
    return select_units(unit_costs(params, ranking), params["budget"])


def validate(params: dict[str, Any]) -> None:
    plan(params)


def identity(params: dict[str, Any]) -> dict[str, Any]:
    """What identifies the variant beyond its spec text: the ranking file's content (its path may be reused)."""
    return {"ranking_sha256": ranking_hash(params["ranking"])}


def forbidden_items(params: dict[str, Any]) -> tuple[frozenset[str], str]:
    """The ranking's items (zero-shot content hashes): the selection was tuned on them."""
    ranking = read_ranking(params["ranking"])
    hashes = frozenset(h for t in ranking["tasks"].values() for h in t["item_hashes"])
    return hashes, f"were used to rank the units of this mixed recipe ({params['ranking']})"


def apply(model: nn.Module, params: dict[str, Any], source: Any = None,
          progress: Callable[[int, int], None] | None = None, **_: Any) -> dict[str, Any]:
    """Copy every unit's linears from the full build of base or protect (each built once, cached)."""
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.units import model_units
    from quantcal.recipes.build import build_variant, checkpoint_tensors

    ranking = read_ranking(params["ranking"])
    if source is None or ranking["fingerprint"] != source.fingerprint:
        raise QuantcalError(f"recipe mixed: the ranking {params['ranking']} was measured on another model "
                            f"({ranking['model'].get('spec')})")
    selection = plan(params)
    units = model_units(model, ranking["unit"])
    by_unit = {u.name: u for u in units}
    missing = [u["name"] for u in ranking["units"] if u["name"] not in by_unit]
    if missing:
        raise QuantcalError(f"recipe mixed: the ranking's units {', '.join(missing[:3])} are not in this model")
    builds = {key: build_variant(source, parse_recipe(key)) for key in {params["base"], params["protect"]} - {FLOAT}}
    modules = dict(model.named_modules())
    for i, unit in enumerate(units):
        recipe = params["protect"] if unit.name in selection.protected else params["base"]
        if recipe != FLOAT:
            for name, weight in checkpoint_tensors(builds[recipe], [f"{n}.weight" for n in unit.layers]).items():
                modules[name.removesuffix(".weight")].weight.data = weight.to(modules[name.removesuffix(".weight")].weight.dtype)
        if progress:
            progress(i + 1, len(units))
    return {"bits_per_weight": selection.bits_per_weight,
            "mixed": {"protected": list(selection.protected), "unit": ranking["unit"], "units": len(units),
                      "base": params["base"], "protect": params["protect"], "rank": params["rank"],
                      "base_bits_per_weight": selection.base_bits_per_weight, "ranking": params["ranking"],
                      "ranking_sha256": ranking_hash(params["ranking"])}}
