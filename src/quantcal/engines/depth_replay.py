"""Reuse the reference's hidden states below the first changed block: a sensitivity run at about half the cost.

When one unit of decoder block ``b`` is quantized and every other weight is the reference's, blocks ``0..b-1`` see
the same inputs and hold the same weights as in the reference, so the hidden state entering block ``b`` is the
reference's, bit for bit. :class:`DepthReplay` records, in one reference pass over the items, the hidden states
entering a set of *checkpoint* blocks; a unit's pass then starts at the deepest checkpoint ``s <= b``: blocks below
``s`` return their input untouched and block ``s`` receives the recorded state. Units spread evenly over the depth
skip about half the blocks on average.

What makes it exact rather than approximate:

- A recorded state is looked up by the content of the forward call that produced it (token ids, positions and
  attention masks, hashed), never by call order, so a resumed or re-batched run simply finds fewer matches and
  computes those passes in full.
- Only calls without a key/value cache are replayed: a call that fills a cache (a shared prefix, the first step of
  a two-step scoring) runs every block, so every later call that reads the cache finds it complete.
- A call with any argument beyond those hashed is never replayed.

The recorded states live in host memory up to ``max_bytes``; past it, every other checkpoint is dropped (the
deepest-first spacing doubles) and recording goes on with the rest, so memory stays bounded whatever the split.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch import nn

from quantcal.recipes.layers import decoder_layers

#: Forward keywords a replayable call may carry: the hashed inputs, and flags that do not change hidden states.
_HASHED = ("input_ids", "position_ids", "attention_mask")
_HARMLESS = ("use_cache", "logits_to_keep", "return_dict", "cache", "past_key_values")


@dataclass
class ReplayStats:
    """What a replay did: forward calls that started at a checkpoint, calls run in full, recorded bytes."""

    hits: int = 0
    misses: int = 0
    recorded_bytes: int = 0
    checkpoints: list[int] = field(default_factory=list)


def call_key(args: tuple, kwargs: dict[str, Any]) -> Optional[bytes]:
    """A digest of what decides the hidden states of a forward call, or ``None`` when the call may not be replayed
    (positional arguments, unknown keywords, or a key/value cache in use)."""
    if args or any(k not in _HASHED + _HARMLESS for k in kwargs) or kwargs.get("input_ids") is None:
        return None
    if kwargs.get("use_cache") or kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
        return None
    digest = hashlib.blake2b(digest_size=20)
    for name in _HASHED:
        value = kwargs.get(name)
        for label, tensor in (sorted(value.items()) if isinstance(value, dict) else [(name, value)]):
            digest.update(label.encode())
            if tensor is None:
                digest.update(b"none")
                continue
            t = tensor.detach().contiguous().cpu()
            digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


class DepthReplay:
    """Record the reference's block inputs once (:meth:`recording`), then start each unit's passes at the deepest
    checkpoint below its block (:meth:`replaying`); see the module doc. ``model`` is the reference itself."""

    def __init__(self, model: nn.Module, max_bytes: int) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self.max_bytes = max_bytes
        self.checkpoints: list[int] = list(range(1, len(self.layers)))  # block 0 has nothing below it to skip
        self.states: dict[int, dict[bytes, torch.Tensor]] = {s: {} for s in self.checkpoints}
        self.recorded = False
        self.stats = ReplayStats()

    def start_for(self, block: int) -> int:
        """The block a unit of ``block`` starts at: the deepest checkpoint at or below it (0: no replay)."""
        return max((s for s in self.checkpoints if s <= block), default=0)

    @contextmanager
    def recording(self) -> Iterator["DepthReplay"]:
        """Run the reference's passes inside: each replayable call's checkpoint inputs are kept."""
        key: list[Optional[bytes]] = [None]
        handles = [self.model.register_forward_pre_hook(lambda m, a, kw: key.__setitem__(0, call_key(a, kw)),
                                                        with_kwargs=True)]

        def keep(s: int):  # noqa: ANN202
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                if key[0] is None or s not in self.states:
                    return
                hidden = args[0] if args else kwargs["hidden_states"]
                self.states[s][key[0]] = hidden.detach().to("cpu", copy=True)
                self.stats.recorded_bytes += hidden.numel() * hidden.element_size()
                self._thin()
            return hook

        handles += [self.layers[s].register_forward_pre_hook(keep(s), with_kwargs=True) for s in self.checkpoints]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
        self.recorded = True
        self.stats.checkpoints = list(self.checkpoints)

    def _thin(self) -> None:
        while self.checkpoints and self.stats.recorded_bytes > self.max_bytes:
            dropped = self.checkpoints[0::2]
            self.checkpoints = self.checkpoints[1::2]
            for s in dropped:
                for t in self.states.pop(s).values():
                    self.stats.recorded_bytes -= t.numel() * t.element_size()

    @contextmanager
    def replaying(self, block: int) -> Iterator["DepthReplay"]:
        """Passes inside start at the checkpoint for a change in ``block`` when their call was recorded."""
        start = self.start_for(block) if self.recorded else 0
        if start == 0:
            yield self
            return
        states = self.states[start]
        device = next(self.model.parameters()).device
        active: list[Optional[torch.Tensor]] = [None]

        def begin(module: nn.Module, args: tuple, kwargs: dict) -> None:
            key = call_key(args, kwargs)
            hidden = states.get(key) if key is not None else None
            active[0] = hidden.to(device) if hidden is not None else None
            if hidden is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1

        def end(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            active[0] = None

        def enter(module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
            if active[0] is None:
                return None
            if args:
                return (active[0],) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": active[0]}

        def skippable(layer: nn.Module) -> Any:
            inner = layer.forward

            def forward(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
                return hidden_states if active[0] is not None else inner(hidden_states, *args, **kwargs)
            return forward

        below = [self.layers[j] for j in range(start)]
        saved = [layer.__dict__.get("forward") for layer in below]
        handles = [self.model.register_forward_pre_hook(begin, with_kwargs=True),
                   self.model.register_forward_hook(end, with_kwargs=True),
                   self.layers[start].register_forward_pre_hook(enter, with_kwargs=True)]
        for layer in below:
            layer.forward = skippable(layer)
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            for layer, own in zip(below, saved):
                del layer.forward
                if own is not None:
                    layer.forward = own
            active[0] = None


__all__ = ["DepthReplay", "ReplayStats", "call_key"]
