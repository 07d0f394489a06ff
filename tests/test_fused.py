"""The fused (compiled) quantizers: the same numbers as the eager function, and eager with one warning where
compiling fails."""

from __future__ import annotations

import warnings

import pytest
import torch

from quantcal.recipes.fused import Fused
from quantcal.recipes.number_formats import fake_mxfp4, fake_nvfp4


def test_a_compiled_quantizer_is_bit_identical_on_ties_and_saturation() -> None:
    """E2M1 ties (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) and values past 6 in every block, scaled by powers of two so
    the block scales land exactly: the compiled NVFP4 and MXFP4 quantizers give the eager ones' numbers bit for bit."""
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.25, -2.5, -5.0, 6.0, 0.0, 1.0, -6.0, 3.0])
    x = torch.cat([ties * 2.0 ** k for k in range(-3, 5)]).reshape(4, -1)
    noisy = torch.randn(37, 64, generator=torch.Generator().manual_seed(0)) * 3
    nvfp4, mxfp4 = Fused(fake_nvfp4), Fused(fake_mxfp4)
    for data in (x, noisy):
        amax = data.abs().amax()
        assert torch.equal(nvfp4(data, 16, amax), fake_nvfp4(data, 16, amax))
        assert torch.equal(mxfp4(data, 32, "nearest"), fake_mxfp4(data, 32, "nearest"))
    assert not nvfp4.eager and not mxfp4.eager


def test_a_quantizer_that_cannot_compile_runs_eagerly_after_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", refuse)
    fused = Fused(fake_mxfp4)
    x = torch.randn(4, 32)
    with pytest.warns(RuntimeWarning, match="runs unfused .*no C\\+\\+ compiler"):
        first = fused(x, 32, "nearest")
    assert fused.eager and torch.equal(first, fake_mxfp4(x, 32, "nearest"))
    with warnings.catch_warnings():  # no second try, no second warning
        warnings.simplefilter("error")
        assert torch.equal(fused(x, 32, "nearest"), fake_mxfp4(x, 32, "nearest"))
