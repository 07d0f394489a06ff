"""A variant written in the quantized format its deployment engines load, whichever family built it.

- integer grids (RTN, GPTQ with ``desc_act=false``, AWQ): compressed-tensors ``pack-quantized``
  (:mod:`quantcal.checkpoints.packed_checkpoint`), which vLLM and transformers run with their own kernels. Such a recipe with
  ``mode=native`` *is* that checkpoint: :func:`native_checkpoint` builds it once into the cache, and a study or
  ``quantcal eval`` scores it through the engine's quantized modules (vLLM's kernels with ``backend`` vllm);
- weights and activations: ``fp8`` / ``w8a8`` as compressed-tensors ``float-quantized`` / ``int-quantized``
  (:mod:`quantcal.checkpoints.activation_checkpoint`), ``nvfp4`` / ``mxfp4`` as ``nvfp4-pack-quantized`` /
  ``mxfp4-pack-quantized`` (:mod:`quantcal.checkpoints.microscaling_checkpoint`);
- a ``kv:`` part, with any compressed-tensors format above or alone (the float weights): the config's
  ``kv_cache_scheme`` and each attention layer's scales (:mod:`quantcal.checkpoints.kv_checkpoint`);
- bitsandbytes (``bnb:nf4|fp4|int8``): transformers' bitsandbytes serialization (:mod:`quantcal.checkpoints.bnb_checkpoint`).

Every other recipe has no quantized checkpoint format here (HQQ, GGUF k-quants, quanto, mixed grids, GPTQ with
``desc_act``): :func:`deployable_format` says so, and :func:`export_variant` refuses it in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from quantcal.errors import QuantcalError
from quantcal.checkpoints.formats import (ACTIVATION_FORMATS, BITSANDBYTES, COMPRESSED_TENSORS, MICROSCALING_FORMATS,
                                          PACKABLE, ExportedModel, check_exportable, deployable_format, simulated)
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

    def write(target: Path) -> None:
        exported = export_packed(build_variant(source, simulated(spec), progress=say), target, "float32", say)
        record = {**exported.record, "recipe": spec.key, "params": spec.params, "mode": "native",
                  "checkpoint_size_mb": sum(f.stat().st_size for f in target.glob("*.safetensors")) / 2**20}
        (target / "quantcal-variant.json").write_text(json.dumps(record, indent=2, default=str))

    return _cached_checkpoint(variant_dir(source, spec), write, say)


def _cached_checkpoint(target: Path, write: Callable[[Path], None], say: Callable[[str], None]) -> Path:
    """``target``, a cache entry that ``write`` fills: found intact (every file as its manifest lists it) or
    written again (an incomplete or damaged entry, a symbolic link in its place), then given its manifest."""
    if target.is_symlink() or (target / "quantcal-variant.json").is_file():
        problem = "it is a symbolic link" if target.is_symlink() else manifest_problem(target)
        if problem is None:
            return target
        say(f"the cached checkpoint {target.name} is damaged ({problem}); writing it again")
    remove_entry(target)
    write(target)
    write_manifest(target)
    return target


def served_checkpoint(source: ModelSource, spec: RecipeSpec, say: Callable[[str], None] = lambda m: None) -> Path:
    """The cached compressed-tensors checkpoint a serving engine loads for a run-time format (``fp8``, ``w8a8``,
    ``nvfp4``, ``mxfp4``, any of them or an integer grid with a ``kv:`` part, or ``kv:`` alone): :func:`export_variant`
    written once into the cache beside the simulated variant (``<variant>-served``), float32 tensors beside the
    quantized ones, so vLLM runs the format with its own kernels and KV cache scales."""
    from quantcal.recipes.build import variant_dir

    target = variant_dir(source, spec)
    return _cached_checkpoint(target.with_name(target.name + "-served"),
                              lambda out: export_variant(source, spec, out, "float32", say), say)


def export_variant(source: ModelSource, spec: RecipeSpec, out: Path, dtype: str = "float32",
                   say: Callable[[str], None] = lambda m: None) -> ExportedModel:
    """Build (or find in the cache) ``spec``'s variant of ``source`` and write it to ``out`` in its deployable format;
    ``quantcal-variant.json`` there holds the variant's record and an ``export`` block (format, bytes and bits per
    weight on disk)."""
    from quantcal.recipes.build import build_variant, variant_meta

    out = Path(out)
    fmt = check_exportable(spec, out, dtype)
    if spec.family == "kv":
        return _export_kv_alone(source, spec, out, dtype, say)
    variant = build_variant(source, simulated(spec.weights) if fmt == COMPRESSED_TENSORS else spec.weights, progress=say)
    kv = None
    if spec.kv is not None:  # the cache's scales as the scorer fixes them for this variant
        from quantcal.checkpoints.kv_checkpoint import kv_export
        from quantcal.recipes.runtime import scheme_of

        say(f"{spec.kv.key}: the KV cache's scales")
        kv = kv_export(ModelSource(str(variant), "local", str(variant), None, f"variant:{variant.name}"),
                       dict(spec.kv.params), scheme_of(variant_meta(variant)))
    if fmt == BITSANDBYTES:
        from quantcal.checkpoints.bnb_checkpoint import export_bnb

        return export_bnb(source, dict(spec.params), variant_meta(variant), out, dtype, say)
    if spec.family in ACTIVATION_FORMATS:
        from quantcal.checkpoints.activation_checkpoint import export_activation_quantized

        return _named(export_activation_quantized(variant, out, dtype, say, kv), spec)
    if spec.family in MICROSCALING_FORMATS:
        from quantcal.checkpoints.microscaling_checkpoint import export_microscaling

        return _named(export_microscaling(variant, out, dtype, say, kv), spec)
    from quantcal.checkpoints.packed_checkpoint import export_packed

    return _named(export_packed(variant, out, dtype, say, kv), spec)


def _named(exported: ExportedModel, spec: RecipeSpec) -> ExportedModel:
    """The export under the whole recipe's key (weights and kv part), in its record too."""
    if exported.recipe == spec.key:
        return exported
    import dataclasses

    record = {**exported.record, "recipe": spec.key}
    (exported.out / "quantcal-variant.json").write_text(json.dumps(record, indent=2, default=str))
    return dataclasses.replace(exported, recipe=spec.key, record=record)


def _export_kv_alone(source: ModelSource, spec: RecipeSpec, out: Path, dtype: str,
                     say: Callable[[str], None]) -> ExportedModel:
    """The model's own float weights with a ``kv_cache_scheme`` (``kv:`` alone)."""
    from quantcal.checkpoints.formats import read_tensors, write_quantized
    from quantcal.checkpoints.kv_checkpoint import kv_export
    from quantcal.sources.models import dequantized_gguf_copy

    folder = dequantized_gguf_copy(source) if source.kind in ("bundled", "gguf") else Path(source.location)
    if not folder.is_dir() or not list(folder.glob("*.safetensors")):
        raise QuantcalError(f"{source.spec}: kv alone is exported from a local or bundled model with safetensors "
                            "weights; download the model first")
    say(f"{spec.key}: the KV cache's scales")
    kv = kv_export(source, dict(spec.params))
    quantization_config = {"quant_method": "compressed-tensors", "format": "dense", "config_groups": {},
                           "quantization_status": "compressed"}
    record = {"recipe": spec.key, "model": source.spec, "bits_per_weight": None,
              "export": {"format": "compressed-tensors dense + kv_cache_scheme", "dtype": dtype, "layers": 0}}
    write_quantized(out, folder, read_tensors(folder), {}, quantization_config, dtype, record, kv)
    say(f"{spec.key}: float weights with the KV cache's scheme, written to {out}")
    return ExportedModel(out, spec.key, COMPRESSED_TENSORS, 0, float("nan"), record)
