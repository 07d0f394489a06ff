"""The deployment number formats, bit-exact: each cast against its value table (every tie and the saturation),
and each scaled fake-quantizer against compressed-tensors' own (an independent implementation, dev-only)."""

from __future__ import annotations

import pytest
import torch

from quantcal.recipes.number_formats import (E2M1_VALUES, cast_e2m1, cast_e4m3, cast_e4m3_toward_zero, e8m0_scale,
                                             fake_fp8, fake_int8, fake_mxfp4, fake_nvfp4)
from quantcal.errors import QuantcalError


def e4m3_table() -> torch.Tensor:
    """Every finite non-negative E4M3 value, ascending, from the 8-bit patterns themselves."""
    values = torch.arange(128, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    return values[torch.isfinite(values)].unique()


def nearest_even(x: torch.Tensor, table: torch.Tensor, top: float) -> torch.Tensor:
    """Brute force: the nearest table value by magnitude (saturating at ``top``), a tie to the even code."""
    magnitude = x.abs().clamp(max=top)
    distance = (magnitude[:, None] - table[None, :]).abs()
    best = distance.min(dim=1, keepdim=True).values
    candidates = distance == best
    codes = torch.arange(len(table))
    even = candidates & (codes[None, :] % 2 == 0)
    chosen = torch.where(even.any(dim=1), even.float().argmax(dim=1), candidates.float().argmax(dim=1))
    return table[chosen] * torch.sign(x)


def probes(table: torch.Tensor, top: float) -> torch.Tensor:
    """Each value, each midpoint (the ties), points just either side, values past the top, zeros, random."""
    mids = (table[1:] + table[:-1]) / 2
    near = torch.cat([mids * (1 + 1e-6), mids * (1 - 1e-6)])
    far = torch.tensor([top * 1.01, top * 10, 1e6])
    torch.manual_seed(0)
    random = torch.randn(2000) * top / 3
    body = torch.cat([table, mids, near, far, random])
    return torch.cat([body, -body])


def test_e4m3_against_its_table_ties_to_even_and_saturating() -> None:
    table = e4m3_table()
    assert table.max().item() == 448.0 and len(table) == 127  # 0 and 126 positive finite values
    x = probes(table, 448.0)
    assert torch.equal(cast_e4m3(x), nearest_even(x, table, 448.0))


def test_e4m3_toward_zero_against_its_table() -> None:
    """vLLM's CPU KV-cache rule: the largest table magnitude not above |x| (saturating at 448; below the smallest
    subnormal, zero), with x's sign; every value, midpoint and point beside them."""
    table = e4m3_table()
    x = probes(table, 448.0)
    magnitude = x.abs().clamp(max=448.0)
    below = torch.where(table[None, :] <= magnitude[:, None], table[None, :], torch.tensor(-1.0)).max(dim=1).values
    assert torch.equal(cast_e4m3_toward_zero(x), below * torch.sign(x))
    assert cast_e4m3_toward_zero(torch.tensor([0.6646, 4.3, 0.0015, -1000.0])).tolist() == [0.625, 4.0, 0.0, -448.0]


def test_e2m1_against_its_table_ties_to_even_and_saturating() -> None:
    table = torch.tensor(E2M1_VALUES)
    x = probes(table, 6.0)
    assert torch.equal(cast_e2m1(x), nearest_even(x, table, 6.0))
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0])
    assert cast_e2m1(ties).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0]


def test_e8m0_scales_floor_and_nearest() -> None:
    amax = torch.tensor([6.0, 7.0, 7.5, 8.0, 0.75, 0.875, 1.0])
    # floor (OCP): 2^(floor(log2 amax) - 2); nearest also bumps mantissas >= 1.75 (7.0 = 1.75 * 4, 0.875 = 1.75 / 2)
    assert e8m0_scale(amax, rounding="floor").tolist() == [1.0, 1.0, 1.0, 2.0, 0.125, 0.125, 0.25]
    assert e8m0_scale(amax, rounding="nearest").tolist() == [1.0, 2.0, 2.0, 2.0, 0.125, 0.25, 0.25]
    with pytest.raises(QuantcalError, match="rounding"):
        e8m0_scale(amax, rounding="up")


def test_blocks_that_do_not_divide_are_refused() -> None:
    with pytest.raises(QuantcalError, match="block of 16 does not divide"):
        fake_nvfp4(torch.ones(4, 24))


ct = pytest.importorskip("compressed_tensors")


def ct_fake(x: torch.Tensor, scheme: str, role: str = "weights") -> torch.Tensor:
    """compressed-tensors' own fake quantization of ``x`` under a preset scheme's weight or activation args."""
    from compressed_tensors.quantization import QuantizationStrategy
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    args = PRESET_SCHEMES[scheme][role]
    strategy = args.strategy
    if strategy in (QuantizationStrategy.CHANNEL, QuantizationStrategy.TOKEN):
        lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    elif strategy == QuantizationStrategy.TENSOR:
        lo, hi = x.amin().reshape(1), x.amax().reshape(1)
    else:  # GROUP / TENSOR_GROUP: per block of group_size along the last dimension
        blocks = x.reshape(x.shape[0], -1, args.group_size)
        lo, hi = blocks.amin(dim=2), blocks.amax(dim=2)
    global_scale = None
    if strategy == QuantizationStrategy.TENSOR_GROUP:
        global_scale = generate_gparam(x.amin(), x.amax())
    scale, zero = calculate_qparams(lo, hi, args, global_scale=global_scale)
    return fake_quantize(x, scale, zero, args, global_scale=global_scale)


@pytest.fixture(scope="module")
def weights() -> torch.Tensor:
    torch.manual_seed(1)
    w = torch.randn(48, 128) * 0.05
    w[3, 7] = 1.5  # an outlier row
    w[5] = 0.0  # an all-zero row
    w[9, :16] = 0.0  # an all-zero block
    w[11, :32] = torch.linspace(-0.0001, 0.0001, 32)  # a tiny block
    return w


def test_fp8_per_channel_and_per_token_match_compressed_tensors(weights: torch.Tensor) -> None:
    assert torch.equal(fake_fp8(weights, dim=-1), ct_fake(weights, "FP8_DYNAMIC", "weights"))
    assert torch.equal(fake_fp8(weights, dim=-1), ct_fake(weights, "FP8_DYNAMIC", "input_activations"))


def test_int8_per_channel_matches_compressed_tensors(weights: torch.Tensor) -> None:
    assert torch.equal(fake_int8(weights, dim=-1), ct_fake(weights, "W8A8", "weights"))
    assert torch.equal(fake_int8(weights, dim=-1), ct_fake(weights, "W8A8", "input_activations"))


def test_nvfp4_matches_compressed_tensors(weights: torch.Tensor) -> None:
    assert torch.equal(fake_nvfp4(weights), ct_fake(weights, "NVFP4", "weights"))


def test_mxfp4_matches_compressed_tensors(weights: torch.Tensor) -> None:
    assert torch.equal(fake_mxfp4(weights), ct_fake(weights, "MXFP4", "weights"))
    assert not torch.equal(fake_mxfp4(weights, rounding="floor"), fake_mxfp4(weights))  # the two roundings differ
