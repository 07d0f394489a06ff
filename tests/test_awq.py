"""AWQ: the grid and both searches against plain loop implementations of the same equations, the search never
worse than round-to-nearest, input groups found from the forward pass, and a variant built end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantcal.errors import QuantcalError
from quantcal.sources.models import resolve_source
from quantcal.recipes import awq, parse_recipe


def plain_awq_grid(w: torch.Tensor, bits: int, g: int) -> torch.Tensor:
    """AWQ's zero-point quantizer, one group at a time."""
    out = torch.empty_like(w)
    maxq = 2 ** bits - 1
    for r in range(w.shape[0]):
        for c in range(0, w.shape[1], g):
            x = w[r, c:c + g]
            scale = torch.clamp(x.max() - x.min(), min=1e-5) / maxq  # in w's dtype: ties round as in the recipe
            scale = scale.half().to(w.dtype)  # as checkpoints store it (float16)
            zero = torch.clamp(-torch.round(x.min() / scale), 0, maxq)
            q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
            out[r, c:c + g] = (q - zero) * scale
    return out


def outlier_layer(seed: int, rows: int = 24, cols: int = 64, tokens: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and inputs whose first channels carry large activations (the case AWQ is for)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64)
    x[:, :4] *= 20
    return w, x


@pytest.mark.parametrize("bits,group", [(3, 16), (4, 32), (2, 64)])
def test_grid_matches_plain_loops_and_has_2_pow_bits_values(bits: int, group: int) -> None:
    w, _ = outlier_layer(bits)
    q = awq.quantize(w, bits, group)
    assert torch.allclose(q, plain_awq_grid(w, bits, group), atol=1e-12)
    assert max(row.unique().numel() for row in q.reshape(-1, group)) <= 2 ** bits


@pytest.mark.parametrize("seed", [0, 1])
def test_scale_search_equals_plain_loop_and_beats_rtn(seed: int) -> None:
    w, x = outlier_layer(seed)
    mean_abs = x.abs().mean(dim=0)
    found = awq.search_scale([w[:10], w[10:]], x, mean_abs, 3, 16, n_grid=10)
    plain = []
    for i in range(10):
        s = mean_abs ** (i / 10)
        s = s.clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        effective = plain_awq_grid(w * s, 3, 16) / s
        plain.append(float(((x @ w.T - x @ effective.T) ** 2).mean()))
    assert found.losses == pytest.approx(plain, rel=1e-5)  # the search runs in float32
    assert found.alpha == pytest.approx(plain.index(min(plain)) / 10)
    assert min(found.losses) < found.losses[0]  # alpha = 0 is plain RTN; the outliers make scaling pay


def test_clip_search_equals_plain_loop() -> None:
    w, x = (t.float() for t in outlier_layer(3, rows=6, cols=32, tokens=40))  # the search runs in float32
    bounds = awq.search_clip(w, x, 3, 16)
    for r in range(6):
        for c in range(2):
            part_w, part_x = w[r, c * 16:(c + 1) * 16], x[:, c * 16:(c + 1) * 16]
            reference = part_x @ part_w
            top = part_w.abs().max()
            errors = []
            for i in range(awq.CLIP_STEPS):
                m = top * (1 - i / 20)
                q = plain_awq_grid(torch.clamp(part_w, -m, m)[None], 3, 16)[0]
                errors.append(float(((part_x @ q - reference) ** 2).mean()))
            assert float(bounds[r, c]) == pytest.approx(float(top * (1 - errors.index(min(errors)) / 20)))


def test_group_keeps_grid_after_scaling_and_clipping() -> None:
    w, x = outlier_layer(4)
    results, alpha = awq.quantize_group({"mlp.gate_proj": w.float(), "mlp.up_proj": w.float() * 0.5}, x.float(),
                                        x.abs().mean(dim=0).float(), 4, 16, 20, True, True)
    assert 0 <= alpha < 1
    for result in results.values():
        assert max(row.unique().numel() for row in result.grid_weight.reshape(-1, 16)) <= 16
        assert torch.allclose(result.effective * result.scales, result.grid_weight, rtol=1e-5, atol=1e-6)


def test_awq_variant_on_tiny_llama(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.recipes.build import build_variant, variant_meta

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    source = resolve_source(str(tiny_llama))
    meta = variant_meta(build_variant(source, parse_recipe("awq:bits=3,group_size=16,nsamples=8,seqlen=64")))
    layers = meta["awq_layers"]
    assert len(layers) == 14 and meta["calibration"]["source"] == "self"
    # q/k/v read the attention norm's output and share one alpha; gate/up likewise; o_proj cannot be folded into
    # v_proj under grouped-query attention (16 != 32 channels); down_proj folds into up_proj
    for i in range(2):
        qkv = {layers[f"model.layers.{i}.self_attn.{p}_proj"]["alpha"] for p in "qkv"}
        assert len(qkv) == 1 and layers[f"model.layers.{i}.self_attn.q_proj"]["scaled"]
        assert layers[f"model.layers.{i}.mlp.gate_proj"]["alpha"] == layers[f"model.layers.{i}.mlp.up_proj"]["alpha"]
        assert not layers[f"model.layers.{i}.self_attn.o_proj"]["scaled"]
        assert layers[f"model.layers.{i}.self_attn.o_proj"]["alpha"] == 0
        assert layers[f"model.layers.{i}.mlp.down_proj"]["scaled"]
    assert all(0 < entry["error"] < 1 for entry in layers.values())
    with pytest.raises(QuantcalError, match="group_size=48 does not divide"):
        build_variant(source, parse_recipe("awq:bits=4,group_size=48,nsamples=2,seqlen=16"))
