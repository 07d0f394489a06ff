"""A variant written in the quantized format its deployment engines load, whichever family built it.

- integer grids (RTN, GPTQ with ``desc_act=false``, AWQ): compressed-tensors ``pack-quantized``
  (:mod:`quantcal.packed_checkpoint`), which vLLM and transformers run with their own kernels. Such a recipe with
  ``mode=native`` *is* that checkpoint: :func:`native_checkpoint` builds it once into the cache, and a study or
  ``quantcal eval`` scores it through the engine's quantized modules (vLLM's kernels with ``backend`` vllm);
- bitsandbytes (``bnb:nf4|fp4|int8``): transformers' bitsandbytes serialization (:mod:`quantcal.bnb_checkpoint`).

Every other recipe has no quantized checkpoint format here (HQQ, GGUF k-quants, quanto, mixed grids, GPTQ with
``desc_act``): :func:`deployable_format` says so, and :func:`export_variant` refuses it in one line.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from quantcal.errors import QuantcalError
from quantcal.models import ModelSource
from quantcal.recipes.spec import RecipeSpec

#: dtypes of the tensors that stay in float (embeddings, norms, output head).
DTYPES = ("float32", "float16", "bfloat16")
COMPRESSED_TENSORS, BITSANDBYTES = "compressed-tensors", "bitsandbytes"
#: The recipe families that keep an integer grid (:mod:`quantcal.recipes.grid_record`): compressed-tensors.
PACKABLE = ("rtn", "gptq", "awq")


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
                            "(desc_act=false) and awq (compressed-tensors), bnb:nf4|fp4 (blocksize 64) and bnb:int8 "
                            "(bitsandbytes)")
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


def native_checkpoint(source: ModelSource, spec: RecipeSpec, say: Callable[[str], None] = lambda m: None) -> Path:
    """The cached compressed-tensors checkpoint of an integer recipe with ``mode=native``: its simulated variant
    built (or found) and exported once into the native variant's cache folder (float32 tensors beside the packed
    layers); engines load it with their own quantized modules."""
    from quantcal.packed_checkpoint import export_packed
    from quantcal.recipes.variants import build_variant, variant_dir

    if spec.family not in PACKABLE or deployable_format(spec) is None:
        raise QuantcalError(f"{spec.key}: no compressed-tensors checkpoint for this recipe")
    target = variant_dir(source, spec)
    if (target / "quantcal-variant.json").is_file() and (target / "config.json").is_file():
        return target
    built = build_variant(source, simulated(spec), progress=say)
    if target.exists():  # an incomplete entry: written again
        shutil.rmtree(target)
    exported = export_packed(built, target, "float32", say)
    record = {**exported.record, "recipe": spec.key, "params": spec.params, "mode": "native",
              "checkpoint_size_mb": sum(f.stat().st_size for f in target.glob("*.safetensors")) / 2**20}
    (target / "quantcal-variant.json").write_text(json.dumps(record, indent=2, default=str))
    return target


def export_variant(source: ModelSource, spec: RecipeSpec, out: Path, dtype: str = "float32",
                   say: Callable[[str], None] = lambda m: None) -> ExportedModel:
    """Build (or find in the cache) ``spec``'s variant of ``source`` and write it to ``out`` in its deployable format;
    ``quantcal-variant.json`` there holds the variant's record and an ``export`` block (format, bytes and bits per
    weight on disk)."""
    from quantcal.recipes.variants import build_variant, variant_meta

    out = Path(out)
    fmt = check_exportable(spec, out, dtype)
    variant = build_variant(source, simulated(spec) if fmt == COMPRESSED_TENSORS else spec, progress=say)
    if fmt == BITSANDBYTES:
        from quantcal.bnb_checkpoint import export_bnb

        return export_bnb(source, dict(spec.params), variant_meta(variant), out, dtype, say)
    from quantcal.packed_checkpoint import export_packed

    return export_packed(variant, out, dtype, say)
