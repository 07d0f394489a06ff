"""A variant written in the quantized format its deployment engines load, whichever family built it.

- integer grids (RTN, GPTQ with ``desc_act=false``, AWQ): compressed-tensors ``pack-quantized``
  (:mod:`quantcal.checkpoints.packed_checkpoint`), which vLLM and transformers run with their own kernels. Such a recipe with
  ``mode=native`` *is* that checkpoint: :func:`native_checkpoint` builds it once into the cache, and a study or
  ``quantcal eval`` scores it through the engine's quantized modules (vLLM's kernels with ``backend`` vllm);
- bitsandbytes (``bnb:nf4|fp4|int8``): transformers' bitsandbytes serialization (:mod:`quantcal.checkpoints.bnb_checkpoint`).

Every other recipe has no quantized checkpoint format here (HQQ, GGUF k-quants, quanto, mixed grids, GPTQ with
``desc_act``): :func:`deployable_format` says so, and :func:`export_variant` refuses it in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from quantcal.errors import QuantcalError
from quantcal.checkpoints.formats import (ACTIVATION_FORMATS, BITSANDBYTES, COMPRESSED_TENSORS, PACKABLE, ExportedModel,
                                     check_exportable,
                                     deployable_format, simulated)
from quantcal.sources.cache import remove_entry
from quantcal.sources.manifest import manifest_problem, write_manifest
from quantcal.sources.models import ModelSource
from quantcal.recipes.spec import RecipeSpec

def native_checkpoint(source: ModelSource, spec: RecipeSpec, say: Callable[[str], None] = lambda m: None) -> Path:
    """The cached compressed-tensors checkpoint of an integer recipe with ``mode=native``: its simulated variant
    built (or found) and exported once into the native variant's cache folder (float32 tensors beside the packed
    layers); engines load it with their own quantized modules."""
    from quantcal.checkpoints.packed_checkpoint import export_packed
    from quantcal.recipes.build import build_variant, variant_dir

    if spec.family not in PACKABLE or deployable_format(spec) is None:
        raise QuantcalError(f"{spec.key}: no compressed-tensors checkpoint for this recipe")
    target = variant_dir(source, spec)
    if target.is_symlink() or (target / "quantcal-variant.json").is_file():
        problem = "it is a symbolic link" if target.is_symlink() else manifest_problem(target)
        if problem is None:
            return target
        say(f"the cached checkpoint {target.name} is damaged ({problem}); writing it again")
    built = build_variant(source, simulated(spec), progress=say)
    remove_entry(target)  # an incomplete or damaged entry: written again
    exported = export_packed(built, target, "float32", say)
    record = {**exported.record, "recipe": spec.key, "params": spec.params, "mode": "native",
              "checkpoint_size_mb": sum(f.stat().st_size for f in target.glob("*.safetensors")) / 2**20}
    (target / "quantcal-variant.json").write_text(json.dumps(record, indent=2, default=str))
    write_manifest(target)
    return target


def export_variant(source: ModelSource, spec: RecipeSpec, out: Path, dtype: str = "float32",
                   say: Callable[[str], None] = lambda m: None) -> ExportedModel:
    """Build (or find in the cache) ``spec``'s variant of ``source`` and write it to ``out`` in its deployable format;
    ``quantcal-variant.json`` there holds the variant's record and an ``export`` block (format, bytes and bits per
    weight on disk)."""
    from quantcal.recipes.build import build_variant, variant_meta

    out = Path(out)
    fmt = check_exportable(spec, out, dtype)
    variant = build_variant(source, simulated(spec) if fmt == COMPRESSED_TENSORS else spec, progress=say)
    if fmt == BITSANDBYTES:
        from quantcal.checkpoints.bnb_checkpoint import export_bnb

        return export_bnb(source, dict(spec.params), variant_meta(variant), out, dtype, say)
    if spec.family in ACTIVATION_FORMATS:
        from quantcal.checkpoints.activation_checkpoint import export_activation_quantized

        return export_activation_quantized(variant, out, dtype, say)
    from quantcal.checkpoints.packed_checkpoint import export_packed

    return export_packed(variant, out, dtype, say)
