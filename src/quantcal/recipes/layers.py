"""Finding the layers a recipe quantizes, and the activation statistics of their inputs.

Quantized: every ``nn.Linear`` inside the decoder blocks (attention and MLP projections). Embeddings, norms and
the output head stay in float, as GPTQ, AWQ and bitsandbytes do by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch
    from torch import nn

from quantcal.errors import QuantcalError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks (``model.model.layers`` for Llama/Gemma/Mistral-style models)."""
    from torch import nn

    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "model.language_model.layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj):
            return obj
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise QuantcalError(f"cannot find the decoder layers of {type(model).__name__}")
    return max(lists, key=len)


def block_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """``(qualified name, module)`` of every linear layer inside the decoder blocks."""
    from torch import nn

    layers = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)
    for i, layer in enumerate(layers):
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                yield f"{prefix}.{i}.{name}", module


class _Stop(Exception):
    pass


def capture_layer_inputs(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> tuple[list[torch.Tensor], list[dict]]:
    """Hidden states entering the first decoder block for every calibration batch, and the keyword arguments
    each block receives (attention mask, rotary embeddings...; one dict per block, from a single forward)."""
    import torch

    layers = decoder_layers(model)
    per_layer_kwargs: list[dict] = [{} for _ in layers]
    hidden: list[torch.Tensor] = []

    def keep_kwargs(i: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if not per_layer_kwargs[i]:
                per_layer_kwargs[i] = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "use_cache")}
        return hook

    def first(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden.append((args[0] if args else kwargs["hidden_states"]).detach())
        raise _Stop

    handles = [layer.register_forward_pre_hook(keep_kwargs(i), with_kwargs=True) for i, layer in enumerate(layers)]
    with torch.inference_mode():
        model(ids[:batch_size], use_cache=False)  # one full pass: every block's keyword arguments
        for h in handles:
            h.remove()
        handle = layers[0].register_forward_pre_hook(first, with_kwargs=True)
        try:
            for start in range(0, ids.shape[0], batch_size):
                try:
                    model(ids[start:start + batch_size], use_cache=False)
                except _Stop:
                    pass
        finally:
            handle.remove()
    return hidden, per_layer_kwargs


def run_block(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def input_gram(layer: nn.Module, hidden: list[torch.Tensor], kwargs: dict) -> dict[str, tuple[torch.Tensor, int]]:
    """For each linear in ``layer``: ``X^T X`` of its inputs over all calibration tokens (float64), and the token count."""
    from torch import nn
    import torch

    stats: dict[str, list] = {}
    handles = []
    for name, module in layer.named_modules():
        if isinstance(module, nn.Linear):
            stats[name] = [torch.zeros(module.in_features, module.in_features, dtype=torch.float64), 0]

            def hook(mod: nn.Module, args: tuple, output: Any, name: str = name) -> None:
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                stats[name][0] += x.T @ x
                stats[name][1] += x.shape[0]
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for h in hidden:
                run_block(layer, h, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {k: (v[0], v[1]) for k, v in stats.items()}


def mean_bits(sizes: list[tuple[int, float]]) -> float:
    """Bits per weight over layers of ``(weight count, bits per weight)``, weighted by size."""
    return sum(n * b for n, b in sizes) / sum(n for n, _ in sizes)


def relative_output_error(w: torch.Tensor, w_q: torch.Tensor, gram: torch.Tensor) -> float:
    """``||X (W_q - W)^T||_F / ||X W^T||_F`` from the Gram matrix ``X^T X`` (no second pass over the data)."""
    import torch

    d = (w_q.double() - w.double())
    num = torch.einsum("ij,jk,ik->", d, gram, d)
    den = torch.einsum("ij,jk,ik->", w.double(), gram, w.double())
    return float(torch.sqrt(torch.clamp(num, min=0) / den)) if den > 0 else 0.0
