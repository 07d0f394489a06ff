"""Folding a per-input-channel scale into the module that produces a linear's input, as a deployment does with
AWQ's and SmoothQuant's scales: the producer found by a forward pass (:func:`producers`), and a norm's new weight
that divides its output by ``s`` (:func:`fold_norm`: ``w / s``, or ``(1 + w) / s - 1`` for Gemma's ``1 + w``
norms, checked on a random input)."""

from __future__ import annotations

from typing import Any

import torch

from quantcal.errors import QuantcalError
from quantcal.recipes.awq import fold_producer


def fold_norm(norm: torch.nn.Module, s: torch.Tensor, name: str) -> torch.Tensor:
    """The norm's new weight so that its output is divided by ``s``; checked on a random input."""
    x = torch.randn(4, s.numel(), generator=torch.Generator().manual_seed(0))
    w = norm.weight.data.float()
    with torch.no_grad():
        target = norm(x).float() / s
        for candidate in (w / s, (1 + w) / s - 1):
            norm.weight.data = candidate.to(norm.weight.dtype)
            ok = torch.allclose(norm(x).float(), target, rtol=1e-4, atol=1e-5)
            norm.weight.data = w.to(norm.weight.dtype)
            if ok:
                return candidate
    raise QuantcalError(f"{name}: cannot fold an input scale (AWQ, SmoothQuant) into {type(norm).__name__}")


def producers(model: torch.nn.Module, names: list[str]) -> dict[str, str]:
    """For each linear in ``names``: the module whose output is its input (one forward on a short input)."""
    modules = dict(model.named_modules())
    made: dict[tuple[int, tuple], str] = {}
    read: dict[str, tuple[int, tuple]] = {}
    alive: list[torch.Tensor] = []
    handles = []
    for name, module in modules.items():
        if name and not isinstance(module, torch.nn.ModuleList):
            def out_hook(mod: torch.nn.Module, args: tuple, output: Any, name: str = name) -> None:
                if isinstance(output, torch.Tensor):
                    alive.append(output)
                    made.setdefault((output.data_ptr(), tuple(output.shape)), name)
            handles.append(module.register_forward_hook(out_hook))
    for name in names:
        def in_hook(mod: torch.nn.Module, args: tuple, name: str = name) -> None:
            alive.append(args[0])
            read.setdefault(name, (args[0].data_ptr(), tuple(args[0].shape)))
        handles.append(modules[name].register_forward_pre_hook(in_hook))
    try:
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3, 4]]), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name in names:
        producer = made.get(read.get(name, (None, ())))
        if producer is None or producer == name:
            producer = fold_producer(name)
        if producer is None or producer not in modules:
            raise QuantcalError(f"{name}: cannot find the module that produces its input, to fold its input scale into")
        out[name] = producer
    return out
