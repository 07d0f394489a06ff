"""The deployable checkpoint formats and which recipe exports to which: the rules both writers
(:mod:`quantcal.checkpoints.packed_checkpoint`, :mod:`quantcal.checkpoints.bnb_checkpoint`) and the dispatcher
(:mod:`quantcal.checkpoints.model_export`) share."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from quantcal.errors import QuantcalError
from quantcal.recipes.spec import RecipeSpec

#: dtypes of the tensors that stay in float (embeddings, norms, output head).
DTYPES = ("float32", "float16", "bfloat16")
COMPRESSED_TENSORS, BITSANDBYTES = "compressed-tensors", "bitsandbytes"
#: The recipe families that keep an integer grid (:mod:`quantcal.recipes.grid_record`): compressed-tensors.
PACKABLE = ("rtn", "gptq", "awq")
#: Weight-and-activation formats written as compressed-tensors float-quantized / int-quantized checkpoints.
ACTIVATION_FORMATS = ("fp8", "w8a8")


@dataclass(frozen=True)
class ExportedModel:
    """A variant written as a deployable quantized checkpoint (:func:`export_variant`)."""

    out: Path
    recipe: str
    format: str  # compressed-tensors | bitsandbytes
    layers: int
    bits_per_weight: float  # the quantized linears' bytes on disk, per weight
    record: dict[str, Any]


def deployable_format(spec: RecipeSpec) -> Optional[str]:
    """The quantized checkpoint format ``spec``'s variant exports to (module doc), or ``None``."""
    params = dict(spec.params)
    if spec.family in PACKABLE:
        return None if params.get("desc_act") else COMPRESSED_TENSORS
    if spec.family in ACTIVATION_FORMATS:  # float-quantized / int-quantized (checkpoints.activation_checkpoint)
        return None if spec.kv is not None or params.get("weights") == "block128" else COMPRESSED_TENSORS
    if spec.family == "bnb":  # transformers' bitsandbytes loader quantizes 4-bit weights in blocks of 64 only
        return BITSANDBYTES if params["type"] == "int8" or params["blocksize"] == 64 else None
    return None


def is_packed_native(spec: RecipeSpec) -> bool:
    """Whether ``spec`` is an integer recipe in ``mode=native``: its variant is its compressed-tensors export."""
    return spec.family in PACKABLE and spec.params.get("mode") == "native"


def check_exportable(spec: RecipeSpec, out: Path, dtype: str) -> str:
    """The format of ``spec``'s export, after refusing what cannot be written (one line each)."""
    fmt = deployable_format(spec)
    if fmt is None:
        raise QuantcalError(f"{spec.key}: no quantized checkpoint format for this recipe. Exportable: rtn, gptq "
                            "(desc_act=false) and awq (compressed-tensors pack-quantized), fp8 (weights=channel|tensor) "
                            "and w8a8 (float-/int-quantized, without a kv part), bnb:nf4|fp4 (blocksize 64) and "
                            "bnb:int8 (bitsandbytes); not yet nvfp4/mxfp4")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QuantcalError(f"{out}: exists and is not an empty folder; choose a new folder")
    check_dtype(dtype)
    return fmt


def check_dtype(dtype: str) -> None:
    """Refuse (one line) a float dtype the exported checkpoint cannot be written in."""
    if dtype not in DTYPES:
        raise QuantcalError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")


def simulated(spec: RecipeSpec) -> RecipeSpec:
    """``spec`` in simulated mode (an integer recipe's ``mode=native`` is its simulated variant, exported)."""
    if spec.params.get("mode", "simulated") == "simulated":
        return spec
    return replace(spec, params={**spec.params, "mode": "simulated"})
