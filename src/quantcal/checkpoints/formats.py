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
#: 4-bit microscaling formats written as compressed-tensors nvfp4- / mxfp4-pack-quantized checkpoints.
MICROSCALING_FORMATS = ("nvfp4", "mxfp4")


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
    if spec.family == "kv":  # the float model with a kv_cache_scheme (checkpoints.kv_checkpoint)
        return COMPRESSED_TENSORS
    if spec.family in PACKABLE:
        return None if params.get("desc_act") else COMPRESSED_TENSORS
    if spec.family in ACTIVATION_FORMATS:  # float-quantized / int-quantized (checkpoints.activation_checkpoint)
        return COMPRESSED_TENSORS
    if spec.family in MICROSCALING_FORMATS:  # nvfp4- / mxfp4-pack-quantized (checkpoints.microscaling_checkpoint)
        return COMPRESSED_TENSORS
    if spec.kv is not None:  # a kv part is a compressed-tensors kv_cache_scheme: not beside bitsandbytes
        return None
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
                            "and w8a8 (float-/int-quantized), nvfp4 and mxfp4 (nvfp4-/mxfp4-pack-quantized), each with a "
                            "kv: part or kv: alone (kv_cache_scheme), bnb:nf4|fp4 (blocksize 64) and bnb:int8 "
                            "(bitsandbytes, without a kv part)")
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


#: Files of a built variant that a checkpoint writer replaces rather than copies.
SKIP_FILES = {"quantcal-variant.json", "config.json", "model.safetensors.index.json"}


def read_tensors(folder: Path) -> dict[str, Any]:
    """Every tensor of the ``*.safetensors`` files in ``folder`` (a built variant or a float model)."""
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def variant_record(variant_dir: Path) -> dict[str, Any]:
    """A built variant's record (``quantcal-variant.json``); one line if the folder is not a variant. Read before its
    tensors (:func:`read_tensors`), so that a refusal costs no weight I/O."""
    import json

    meta_file = variant_dir / "quantcal-variant.json"
    if not meta_file.is_file():
        raise QuantcalError(f"{variant_dir}: not a built variant (no quantcal-variant.json)")
    return json.loads(meta_file.read_text())


def export_record(fmt: str, dtype: str, layers: int, weights: int, quantized_bytes: int,
                  **extra: Any) -> dict[str, Any]:
    """The ``export`` block of an exported variant's record: its format, float dtype and the quantized linears'
    size on disk (``bits_per_weight_on_disk`` = 8 x bytes / weights)."""
    return {"format": fmt, "dtype": dtype, "layers": layers, "quantized_weights": weights,
            "quantized_bytes": quantized_bytes, "bits_per_weight_on_disk": 8 * quantized_bytes / weights, **extra}


def write_quantized(out: Path, folder: Path, state: dict[str, Any], quantized: dict[str, Any],
                    quantization_config: dict[str, Any], dtype: str, record: dict[str, Any], kv: Any = None) -> None:
    """Write a compressed-tensors checkpoint: ``state``'s float tensors in ``dtype`` beside the ``quantized`` ones,
    ``folder``'s config with ``quantization_config`` (and the KV cache's scheme when ``kv`` is given, which also
    adds its scales to the tensors and its note to ``record["export"]``), whole or not at all."""
    import json

    import torch

    from quantcal.checkpoints.kv_checkpoint import add_kv

    target = getattr(torch, dtype)
    tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in state.items()} | quantized
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = quantization_config
    config["dtype"] = dtype
    add_kv(kv, tensors, config["quantization_config"], record["export"])
    write_checkpoint(out, folder, tensors, config, record)


def write_checkpoint(out: Path, variant_dir: Path, tensors: dict[str, Any], config: dict[str, Any],
                     record: dict[str, Any]) -> None:
    """An exported checkpoint, whole or not at all: its tensors, config, the variant's other files (tokenizer...)
    and the record with its ``export`` block."""
    import json
    import shutil

    from safetensors.torch import save_file

    from quantcal.sources.cache import atomic_dir

    with atomic_dir(out) as scratch:
        save_file(tensors, str(scratch / "model.safetensors"), metadata={"format": "pt"})
        (scratch / "config.json").write_text(json.dumps(config, indent=2))
        for f in variant_dir.iterdir():
            if f.is_file() and f.suffix != ".safetensors" and f.name not in SKIP_FILES:
                shutil.copy2(f, scratch / f.name)
        (scratch / "quantcal-variant.json").write_text(json.dumps(record, indent=2, default=str))
