"""A ``kv:`` part written into a compressed-tensors checkpoint: the ``kv_cache_scheme`` of its quantization config and
each attention layer's ``k_scale`` / ``v_scale``, as llmcompressor writes a calibrated KV cache and vLLM reads it
(``kv_cache_dtype=fp8`` takes the checkpoint's scales).

The scales are the ones quantcal's scorer uses for the variant: the model loads from the built variant's folder
with its activation quantizers, and :func:`quantcal.recipes.kv_cache.install` fixes them (1.0, another fixed number,
or calibrated on the variant's own windows, exactly as when the variant is scored); each is written in float32, one
per layer (``per=tensor``: shape ``(1,)``) or per KV head (``per=head``: compressed-tensors' ``attn_head`` strategy,
shape ``(heads, 1, 1)``). compressed-tensors quantizes keys after the rotary embedding, as the cache stores them, and
rounds as quantcal does (E4M3 saturating; INT8 ``round`` then clamp to [-128, 127]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class KvExport:
    args: Any  # compressed-tensors QuantizationArgs: the config's kv_cache_scheme
    tensors: dict[str, torch.Tensor]  # "{attention}.k_scale" / ".v_scale"
    record: dict[str, Any]


def kv_export(source: Any, kv_params: dict[str, Any], activations: Any = None) -> KvExport:
    """The kv part for the model ``source`` (a :class:`quantcal.sources.models.ModelSource` of float weights: a built
    variant's folder, named as the scorer names it, or the reference; ``activations`` its run-time activation scheme,
    if any) under the ``kv:`` recipe's ``kv_params`` (module doc)."""
    from compressed_tensors.quantization import QuantizationArgs

    from quantcal.recipes.kv_cache import attention_layers, install
    from quantcal.recipes.runtime import install as install_activations
    from quantcal.sources.models import load_model

    loaded = load_model(source, "float32", "cpu")
    if activations is not None:
        install_activations(loaded.model, activations)
    summary = install(loaded.model, dict(kv_params), loaded.tokenizer, source.fingerprint)
    per_head = kv_params["per"] == "head"
    args = QuantizationArgs(num_bits=8, type="float" if kv_params["type"] == "fp8" else "int", symmetric=True,
                            dynamic=False, strategy="attn_head" if per_head else "tensor")
    names = {id(m): n for n, m in loaded.model.named_modules()}
    tensors: dict[str, torch.Tensor] = {}
    for layer in attention_layers(loaded.model):
        name = names[id(layer)]
        for key, scale in (("k_scale", layer.quantcal_kv.key_scale), ("v_scale", layer.quantcal_kv.value_scale)):
            value = torch.as_tensor(scale, dtype=torch.float32)
            tensors[f"{name}.{key}"] = (value.reshape(-1, 1, 1) if per_head else value.reshape(1)).clone()
    return KvExport(args, tensors, {"kv_cache": summary["kv_cache"]})


def add_kv(kv: KvExport | None, tensors: dict[str, torch.Tensor], quantization_config: dict[str, Any],
           export: dict[str, Any]) -> None:
    """Put ``kv`` (if any) into a checkpoint being written: its scales among the tensors, its scheme in the
    ``quantization_config`` and what it installed in the record's ``export`` block."""
    import json

    if kv is None:
        return
    tensors.update(kv.tensors)
    quantization_config["kv_cache_scheme"] = json.loads(kv.args.model_dump_json(exclude_none=True))
    export.update(kv.record)
