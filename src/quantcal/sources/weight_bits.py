"""Bits per weight of a model as it was loaded, before any recipe: what a report's size axis puts a reference at.

A GGUF file (a bundled model, or one the user names) is read for its block linears' own storage: Q4_1 stores 32
4-bit codes with a float16 scale and minimum per block, 5.0 bits per weight, not the 16 of the float copy it is
dequantized to. A checkpoint folder counts its declared dtype (16 for bfloat16/float16, 32 for float32). The count
is over the same weights the recipes' ``bits_per_weight`` counts: the 2-D tensors of the transformer blocks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Bits of a float dtype as checkpoints declare it in config.json.
FLOAT_BITS = {"float32": 32.0, "float": 32.0, "bfloat16": 16.0, "float16": 16.0, "half": 16.0}


def gguf_bits_per_weight(path: Path) -> float | None:
    """8 x bytes / elements over a GGUF file's block linears (tensors ``blk.*`` with two or more dimensions)."""
    import gguf

    n_bytes = n_elements = 0
    for tensor in gguf.GGUFReader(path).tensors:
        if tensor.name.startswith("blk.") and len(tensor.shape) >= 2:
            n_bytes += int(tensor.n_bytes)
            n_elements += int(tensor.n_elements)
    return 8.0 * n_bytes / n_elements if n_elements else None


def checkpoint_bits_per_weight(folder: Path) -> float | None:
    """A checkpoint folder's declared float width (``dtype`` / ``torch_dtype`` in its config.json), else None."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    dtype = config.get("dtype") or config.get("torch_dtype") or text_config.get("dtype") or text_config.get("torch_dtype")
    return FLOAT_BITS.get(str(dtype)) if dtype else None


def source_bits_per_weight(model: dict[str, Any]) -> float | None:
    """A run's model (its ``config["model"]``: ``kind`` and ``spec``) in bits per weight as stored; None when it
    cannot be told without loading it (a hub model not in the local cache, a file no longer there)."""
    from quantcal.sources.models import bundled_gguf_path
    from quantcal.errors import QuantcalError

    kind, spec = model.get("kind"), model.get("spec")
    if not spec:
        return None
    try:
        if kind == "bundled":
            return gguf_bits_per_weight(bundled_gguf_path(spec))
        if kind == "gguf":
            return gguf_bits_per_weight(Path(spec).expanduser()) if Path(spec).expanduser().is_file() else None
        if kind == "local":
            return checkpoint_bits_per_weight(Path(spec).expanduser())
        if kind == "hub":  # its config.json if the local hub cache has it (never a download)
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "config.json", revision=model.get("revision"))
            return checkpoint_bits_per_weight(Path(cached).parent) if isinstance(cached, str) else None
    except (QuantcalError, OSError, ValueError):
        return None
    return None
