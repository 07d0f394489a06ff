"""Building a variant (reference model + recipe) once, and finding it again.

A built variant is a safetensors checkpoint in ``$QUANTCAL_CACHE/variants/<key>/`` with
``quantcal-variant.json``: the recipe, the source fingerprint, the calibration hash, library versions, build
time, bits per weight, sizes, and each quantized layer's relative output error. The key hashes the source
fingerprint, the canonical recipe (all parameters, calibration source included) and the versions of torch and
quantcal's recipe code, so a second build is a cache hit and any changed parameter is a miss.

Integer recipes (RTN, GPTQ, AWQ) also keep ``quantcal-grid/grid.safetensors`` (:mod:`quantcal.recipes.grid_record`: each
layer's float16 scales and zeros), from which ``quantcal export-model`` writes a packed checkpoint.

A ``mode=native`` variant stores only that JSON (its statistics come from the simulated round trip, the same
grid); loading it quantizes the reference with the library's own modules.

Layer error (reported for every recipe): on a fixed probe of 8 windows of 256 tokens sampled from the reference
model (seed 0), each block linear's ``||X (W_q - W)^T||_F / ||X W^T||_F`` with ``X`` the reference model's
inputs to that layer. GPTQ also reports its own errors on its calibration data.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from quantcal.sources.cache import atomic_dir, cache_root, entry_lock, remove_entry
from quantcal.sources.manifest import manifest_problem, write_manifest
from quantcal.errors import QuantcalError
from quantcal.sources.models import ModelSource, load_model
from quantcal.recipes import FAMILIES, recipe_identity
from quantcal.recipes import grid_record
from quantcal.recipes.calibration import calibration_ids
from quantcal.recipes.grid_record import LayerGrid
from quantcal.recipes.layers import block_linears
from quantcal.recipes.spec import RecipeSpec
from quantcal.versions import package_versions

RECIPE_CODE_VERSION = 4  # 2: float16 group scales (the exported grid); 3: grid record in quantcal-grid/; 4: AWQ folds as deployed
PROBE = {"nsamples": 8, "seqlen": 256, "seed": 0}


def variant_key(source: ModelSource, spec: RecipeSpec) -> str:
    library = FAMILIES[spec.family].library
    versions = package_versions(("torch", "gguf", "bitsandbytes")
                                + (() if library in ("quantcal", "gguf", "bitsandbytes") else (library,)))
    identity = recipe_identity(spec)
    blob = json.dumps([source.fingerprint, spec.key, RECIPE_CODE_VERSION, versions] + ([identity] if identity else []),
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def variant_dir(source: ModelSource, spec: RecipeSpec) -> Path:
    return cache_root() / "variants" / variant_key(source, spec)


def build_variant(source: ModelSource, spec: RecipeSpec, out: Path | None = None,
                  progress: Callable[[str], None] | None = None, full_check: bool = False) -> Path:
    """The variant's checkpoint directory, built now unless the cache already has it intact: every file as its
    manifest lists it (:mod:`quantcal.sources.manifest`; sizes and small files' hashes, the weights' hashes too with
    ``full_check``). A damaged cache entry (an edited config, a truncated weights file, a symbolic link in its place)
    is built again; a damaged ``out`` folder is refused. A cache entry is built under its lock
    (:func:`quantcal.sources.cache.entry_lock`): a process that finds another one building it waits and then loads
    what that one built."""
    spec = spec.weights  # a KV-cache format (WEIGHTS+kv:...) is applied at load time: only the weights are built
    target = Path(out) if out else variant_dir(source, spec)
    say = progress or (lambda message: None)
    if out:
        return _build(source, spec, target, out, say, full_check)
    with entry_lock(target, waiting=lambda: say(f"waiting for another process that is building {spec.key}")):
        return _build(source, spec, target, out, say, full_check)


def _build(source: ModelSource, spec: RecipeSpec, target: Path, out: Path | None, say: Callable[[str], None],
           full_check: bool = False) -> Path:
    if target.is_symlink() or (target / "quantcal-variant.json").is_file():
        problem = entry_problem(target, full_check)
        if problem is None:
            return target
        if out:
            raise QuantcalError(f"{target}: a damaged variant ({problem}); remove it or choose another folder")
        say(f"the cached variant {target.name} is damaged ({problem}); building it again")
        remove_entry(target)
    reference = load_model(source, dtype="float32")
    model, tokenizer = reference.model, reference.tokenizer
    originals = {name: m.weight.data.clone() for name, m in block_linears(model)}
    say(f"building {spec.key}")
    start = time.perf_counter()
    family = FAMILIES[spec.family]
    grids: dict[str, LayerGrid] = {}
    stats = family.apply(model, dict(spec.params), tokenizer=tokenizer, fingerprint=source.fingerprint, source=source,
                         progress=lambda i, n: say(f"{spec.family}: block {i}/{n}"), grids=grids)
    seconds = time.perf_counter() - start
    quantized = {name: m.weight.data for name, m in block_linears(model)}
    errors = probe_layer_errors(model, tokenizer, originals, quantized, source)
    meta = {
        "recipe": spec.key, "family": spec.family, "params": spec.params, "mode": spec.params.get("mode", "simulated"),
        "source": source.to_json(),
        "versions": package_versions(tuple(dict.fromkeys(("quantcal", "torch", "transformers", "gguf", "bitsandbytes", family.library)))),
        "build_seconds": seconds, "bits_per_weight": stats.pop("bits_per_weight"),
        "quantized_layers": len(quantized), "quantized_params": int(sum(w.numel() for w in quantized.values())),
        "total_params": int(sum(p.numel() for p in model.parameters())),
        "layer_error": errors, "mean_layer_error": sum(errors.values()) / len(errors), **stats,
    }
    meta["packed_size_mb"] = (meta["quantized_params"] * meta["bits_per_weight"]
                              + (meta["total_params"] - meta["quantized_params"]) * 16) / 8 / 2**20
    with atomic_dir(target) as scratch:
        if meta["mode"] == "simulated":  # a native variant is rebuilt from the reference by its library at load time
            model.save_pretrained(scratch, safe_serialization=True)
            tokenizer.save_pretrained(scratch)
            if grids:
                grid_record.save(grids, scratch)
            meta["checkpoint_size_mb"] = sum(f.stat().st_size for f in scratch.glob("*.safetensors")) / 2**20
        (scratch / "quantcal-variant.json").write_text(json.dumps(meta, indent=2, default=str))
        write_manifest(scratch)
    return target


def probe_layer_errors(model: torch.nn.Module, tokenizer: Any, originals: dict[str, torch.Tensor],
                       quantized: dict[str, torch.Tensor], source: ModelSource) -> dict[str, float]:
    """Relative output error of each quantized linear on the reference model's own activations."""
    modules = dict(block_linears(model))
    for name, w in originals.items():
        modules[name].weight.data = w
    ids = probe_ids(model, tokenizer, source)
    sums = {name: [0.0, 0.0] for name in modules}
    handles = []
    for name, module in modules.items():
        delta = (quantized[name] - originals[name]).T.float()
        weight_t = originals[name].T.float()

        def hook(mod: torch.nn.Module, args: tuple, output: Any, name: str = name, delta: torch.Tensor = delta,
                 weight_t: torch.Tensor = weight_t) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            sums[name][0] += float(torch.square(x @ delta).sum())
            sums[name][1] += float(torch.square(x @ weight_t).sum())
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for start in range(0, ids.shape[0], 4):
                model(ids[start:start + 4], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        for name, w in quantized.items():
            modules[name].weight.data = w
    return {name: (num / den) ** 0.5 if den > 0 else 0.0 for name, (num, den) in sums.items()}


def probe_ids(model: torch.nn.Module, tokenizer: Any, source: ModelSource) -> torch.Tensor:
    """The fixed error probe: self-generated windows, cached per model."""
    return calibration_ids(model, tokenizer, "self", PROBE["nsamples"], PROBE["seqlen"], PROBE["seed"],
                           fingerprint=source.fingerprint)


def entry_problem(path: Path, full_check: bool = False) -> str | None:
    """What is wrong with a built variant folder (a symbolic link in a cache entry's place, a file that differs from
    its manifest, its record unreadable, weights missing or truncated), or None."""
    if path.is_symlink():
        return "it is a symbolic link"
    problem = manifest_problem(path, full_check)
    if problem is not None:
        return problem
    try:
        meta = json.loads((path / "quantcal-variant.json").read_text())
    except (OSError, ValueError) as exc:
        return f"record unreadable: {exc}"
    if meta.get("mode") == "native":
        return None  # no weights: built at load from the reference
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return "no weights file"
    for f in files:
        try:  # safetensors: 8-byte header length, JSON header, then the tensors' bytes at the offsets it gives
            with f.open("rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                if size > f.stat().st_size:
                    return f"{f.name} is truncated (its header alone is {size} bytes)"
                header = json.loads(handle.read(size))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            return f"{f.name}: unreadable header ({exc})"
        if f.stat().st_size != 8 + size + end:
            return f"{f.name} is truncated ({f.stat().st_size} of {8 + size + end} bytes)"
    return None


def checkpoint_tensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors called ``names`` from a built variant's safetensors files (read one by one, not the whole model)."""
    from safetensors import safe_open

    wanted, found = set(names), {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in wanted & set(handle.keys()):
                found[key] = handle.get_tensor(key)
    missing = wanted - set(found)
    if missing:
        raise QuantcalError(f"{path}: the checkpoint has no tensor {sorted(missing)[0]}")
    return found


def cached_variant_meta(model: dict[str, Any], recipe: str) -> dict[str, Any] | None:
    """The record of a variant already built from ``model`` (a source's JSON, as runs store it) with ``recipe``,
    or None when the cache does not hold it (or the recipe no longer parses, e.g. a ranking file moved)."""
    from quantcal.recipes import parse_recipe

    try:
        spec = parse_recipe(recipe)
        source = ModelSource(model.get("spec", ""), model.get("kind", "local"), model.get("location") or "",
                             model.get("gguf_file"), model.get("fingerprint", ""))
        path = variant_dir(source, spec) / "quantcal-variant.json"
        return json.loads(path.read_text()) if path.is_file() else None
    except (QuantcalError, OSError, ValueError):
        return None


def nominal_bits_per_weight(recipe: str) -> float | None:
    """Bits per weight of a grouped recipe from its parameters alone, exact when the group size divides every
    layer's inputs (as AWQ requires and most models' widths allow); None for recipes that need the model."""
    from quantcal.recipes import parse_recipe

    try:
        spec = parse_recipe(recipe)
    except QuantcalError:
        return None
    bits, group = FAMILIES[spec.family].layer_bits, spec.params.get("group_size")
    if bits is None or not isinstance(group, int) or group <= 0:
        return None
    return bits(dict(spec.params), group * 64)


def variant_meta(path: Path) -> dict[str, Any]:
    meta_path = Path(path) / "quantcal-variant.json"
    if not meta_path.is_file():
        raise QuantcalError(f"{path}: not a quantcal variant (no quantcal-variant.json)")
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise QuantcalError(f"{meta_path}: unreadable variant record ({exc})") from None
