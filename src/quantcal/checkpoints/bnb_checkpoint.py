"""A bitsandbytes variant (``bnb:nf4`` / ``fp4`` / ``int8``) written as transformers' bitsandbytes serialization: the
checkpoint a deployment loads with ``from_pretrained`` and runs on bitsandbytes' own ``Linear4bit`` /
``Linear8bitLt`` modules.

The reference is loaded through ``BitsAndBytesConfig`` (:func:`quantcal.recipes.bnb.load_native`: the decoder-block
linears quantized by bitsandbytes, the output head float) and saved with ``save_pretrained``. Per 4-bit linear the
file holds the packed codes (``weight``, uint8, two per byte), the block absmax (``weight.absmax``, float32; with
``double_quant`` the absmax is itself 8-bit with its own constants), the code book (``weight.quant_map``) and the
quant state; per int8 linear the codes (``weight``, int8) and the row scale (``SCB``, float32). ``config.json``
carries the ``quantization_config`` transformers needs to rebuild the modules.

The simulated variant (bitsandbytes' quantize-dequantize round trip) and the exported checkpoint are the same grid:
loaded back in float32 compute (quantcal keeps bitsandbytes off its CPU bfloat16 path,
:func:`quantcal.sources.packed_load.keep_compute_dtype`), they give the simulated variant's log-likelihoods
(``tests/test_model_export.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from quantcal.sources.cache import atomic_dir
from quantcal.errors import QuantcalError
from quantcal.checkpoints.formats import BITSANDBYTES, ExportedModel
from quantcal.sources.models import ModelSource
from quantcal.recipes.bnb import load_native

#: The module types bitsandbytes puts in place of a quantized linear.
BNB_MODULES = ("Linear4bit", "Linear8bitLt")


def quantized_bytes(state: dict[str, Any], linears: list[str]) -> int:
    """Bytes on disk of the quantized linears ``linears`` in a saved bitsandbytes ``state``: each linear's codes,
    absmax / row scales, code book and quant state (not its bias)."""
    prefixes = tuple(f"{name}." for name in linears)
    return sum(t.numel() * t.element_size() for key, t in state.items()
               if key.startswith(prefixes) and not key.endswith(".bias"))


def export_bnb(source: ModelSource, params: dict[str, Any], record: dict[str, Any], out: Path,
               dtype: str = "float32", say: Callable[[str], None] = lambda m: None) -> ExportedModel:
    """Write ``source`` quantized by bitsandbytes with ``params`` to ``out`` (module doc), with ``record`` (the
    variant's) as ``quantcal-variant.json`` plus an ``export`` block."""
    from safetensors.torch import load_file

    say("loading the reference through bitsandbytes")
    loaded = load_native(source, params, dtype=dtype)
    linears = {name: m for name, m in loaded.model.named_modules() if type(m).__name__ in BNB_MODULES}
    if not linears:
        raise QuantcalError("bitsandbytes quantized no layer of this model; nothing to export")
    weights = sum(int(m.in_features) * int(m.out_features) for m in linears.values())
    with atomic_dir(out) as scratch:
        loaded.model.save_pretrained(scratch, safe_serialization=True)
        loaded.tokenizer.save_pretrained(scratch)
        state: dict[str, Any] = {}
        for f in sorted(scratch.glob("*.safetensors")):
            state.update(load_file(str(f)))
        size = quantized_bytes(state, list(linears))
        on_disk = 8 * size / weights
        full = {**record, "export": {
            "format": "bitsandbytes (transformers serialization)", "dtype": dtype, "layers": len(linears),
            "quantized_weights": weights, "quantized_bytes": size, "bits_per_weight_on_disk": on_disk,
            "bitsandbytes_type": params["type"], "double_quant": params.get("double_quant", False),
        }}
        (scratch / "quantcal-variant.json").write_text(json.dumps(full, indent=2, default=str))
    say(f"{record.get('recipe', 'bnb')}: {len(linears)} layers in bitsandbytes' format, {on_disk:.3f} bits per weight "
        f"on disk, written to {out}")
    return ExportedModel(out, str(record.get("recipe", "bnb")), BITSANDBYTES, len(linears), on_disk, full)
