"""SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for LLMs"):
activation outliers migrated into the weights before W8A8 quantization.

Linears that read the same input (in Llama- and Gemma-style blocks: q/k/v after the attention norm, gate/up after
the MLP norm) share one smoothing vector over their input channels,

    s_j = max|X_j|^alpha / max|W_:j|^(1 - alpha)

with ``max|X_j|`` over the calibration tokens and ``max|W_:j|`` over the output rows of every linear in the group
(``s_j = max|X_j|`` where the weights of channel j are all zero, as llm-compressor's SmoothQuantModifier). The
layer then computes ``Q_a(X / s) Q_w(W diag(s))^T``: the same product in float, with the outliers of X divided out
before its per-token quantizer. ``1 / s`` is folded into the norm that produces X when the variant is loaded
(:func:`quantcal.recipes.runtime.fold_smoothing`: ``w / s``, or ``(1 + w) / s - 1`` for Gemma's norms), as
llm-compressor and quantcal's export leave a deployed model: dividing at the linear instead is the same arithmetic
in exact numbers but not in float, and per-token INT8 activations amplify the difference (up to 3 nats per choice on
SmolLM2 between the two forms). Linears that read an input of their own (o_proj, down_proj) are not smoothed: their
producer is not a norm the scale could fold into.
Groups are found by identity: the linears called with the very same input tensor in a forward pass.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

from quantcal.recipes.layers import block_linears


def input_groups_and_amax(model: nn.Module, ids: torch.Tensor, batch_size: int = 4) -> tuple[list[list[str]], dict[str, torch.Tensor]]:
    """The groups of decoder-block linears that read one input (found on the first batch), and each linear's
    per-input-channel ``max |x|`` over all calibration tokens ``ids``."""
    import torch

    amax: dict[str, torch.Tensor] = {}
    readers: list[tuple[torch.Tensor, list[str]]] = []  # each input tensor (kept alive: ids are reused) and readers
    first = [True]
    handles = []
    for name, linear in block_linears(model):
        def hook(module: nn.Module, args: tuple, name: str = name) -> None:
            x = args[0]
            if first[0]:
                group = next((names for tensor, names in readers if tensor is x), None)
                if group is None:
                    readers.append((x, [name]))
                else:
                    group.append(name)
            x = x.detach()
            channel = x.abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
            amax[name] = torch.maximum(amax[name], channel) if name in amax else channel
        handles.append(linear.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            for start in range(0, ids.shape[0], batch_size):
                model(ids[start:start + batch_size], use_cache=False)
                first[0] = False
    finally:
        for handle in handles:
            handle.remove()
    return [names for _, names in readers if len(names) > 1], amax


def smoothing_scales(model: nn.Module, ids: torch.Tensor, alpha: float) -> dict[str, torch.Tensor]:
    """Each smoothed linear's vector ``s`` (one per group, shared by its members), from the float model."""
    import torch

    groups, amax = input_groups_and_amax(model, ids)
    modules = dict(block_linears(model))
    out: dict[str, torch.Tensor] = {}
    for names in groups:
        act = amax[names[0]].clamp_min(1e-5)
        weight = torch.stack([modules[n].weight.detach().abs().amax(dim=0).float() for n in names]).amax(dim=0)
        s = act.pow(alpha) / weight.pow(1 - alpha)
        s = torch.where(weight > 0, s, act).clamp_min(1e-5)
        for n in names:
            out[n] = s
    return out


def encode(scales: dict[str, torch.Tensor]) -> dict[str, str]:
    """Smoothing vectors for the variant's JSON record: float32 bytes, base64."""
    import numpy as np

    return {name: base64.b64encode(s.detach().cpu().numpy().astype(np.float32).tobytes()).decode() for name, s in scales.items()}


def decode(blob: str) -> torch.Tensor:
    import numpy as np
    import torch

    return torch.from_numpy(np.frombuffer(base64.b64decode(blob), dtype=np.float32).copy())
