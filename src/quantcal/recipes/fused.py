"""A fake quantizer as one fused kernel: ``torch.compile`` of the same function, with the eager function as the
fallback.

A simulated activation format is a chain of elementwise passes over each linear's input (a block maximum, a scale
cast to FP8 or a power of two, a division, E2M1 rounding, a multiplication): eager torch walks the activations
about ten times, which on a small model costs as much as the matmul it feeds. Compiled, the chain is one loop
(inductor's C++ on a CPU, Triton on a GPU) computing the same IEEE operations in the same order: the results are
bit-identical (``tests/test_deployment_formats.py`` compares the variants with quantizers written by hand, eager).

Compiling costs seconds once per process and function (inductor caches its kernels on disk for later
processes); a torch or machine that cannot compile (no C++ compiler, an unsupported backend) falls back to the
eager function, with one warning.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable


class Fused:
    """``fn`` compiled on first call (shapes dynamic: the number of rows varies), eager if compiling fails."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._compiled: Callable[..., Any] | None = None
        self.eager = False  # set once compiling has failed: every later call runs fn itself

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.eager:
            try:
                if self._compiled is None:
                    import torch

                    self._compiled = torch.compile(self.fn, dynamic=True)
                return self._compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any compiler failure: the same numbers, computed eagerly
                self.eager = True
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                warnings.warn(f"quantizer {getattr(self.fn, '__name__', self.fn)} runs unfused (torch.compile "
                              f"failed: {first[:200]})", RuntimeWarning, stacklevel=2)
        return self.fn(*args, **kwargs)
