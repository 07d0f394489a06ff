"""AWQ (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration").

Weights are quantized group-wise with AWQ's zero-point grid (per group of ``g`` input columns:
``scale = (max - min) / (2^b - 1)``, ``zero = clamp(-round(min / scale), 0, 2^b - 1)``,
``Q(w) = scale (clamp(round(w / scale) + zero, 0, 2^b - 1) - zero)``), after two searches on calibration inputs:

1. **Activation-aware scaling.** Linears that read the same input ``X`` (q/k/v after the attention norm, gate/up
   after the MLP norm) share one per-input-channel scale ``s = a^alpha / sqrt(max(a^alpha) min(a^alpha))`` with
   ``a = mean |X|`` over the calibration tokens; ``alpha`` is chosen on the grid ``0, 1/n, ..., (n-1)/n`` to
   minimise ``sum ||X W^T - (X diag(s)^-1) Q(W diag(s))^T||^2`` over the group's linears (the paper's objective,
   Eq. 4). ``alpha = 0`` is plain round-to-nearest, so the search can only lower this loss.
2. **Weight clipping** (AutoAWQ's ``auto_clip``): per output row and group, the range ``[-m, m]`` with
   ``m = max|w| (1 - i/20)``, ``i < 10``, that minimises the group's partial output error on the scaled inputs;
   skipped for query/key projections, as AutoAWQ does.

A deployment folds ``1/s`` into the operation that produces ``X`` (the preceding norm; ``up_proj``'s rows for
``down_proj``; ``v_proj``'s rows for ``o_proj`` when their shapes match) and stores ``Q(W s)``. A linear whose
input cannot be folded that way gets ``s = 1`` (clipping only). Simulated mode stores the effective weight
``Q(W s) / s``, which computes the same function; the searches use a fixed subsample of calibration tokens
(:data:`LOSS_TOKENS`), the scale statistic ``a`` uses all of them. The loss is measured on the linears' outputs
(the paper's formulation) rather than on the enclosing module's output (AutoAWQ's implementation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes import grid, grid_record
from quantcal.recipes.grid_record import LayerGrid, rows_rescaled
from quantcal.recipes.layers import block_linears, capture_layer_inputs, decoder_layers, relative_output_error, run_block

LOSS_TOKENS = 4096
CLIP_TOKENS = 512
CLIP_STEPS = 10
NO_CLIP = ("q_proj", "k_proj", "query", "key", "wqkv")
FOLD_INTO = {"o_proj": "v_proj", "down_proj": "up_proj", "fc2": "fc1"}


def check_groups(name: str, in_features: int, group_size: int) -> None:
    if group_size > 0 and in_features % group_size:
        divisors = [g for g in (32, 64, 128, 256) if in_features % g == 0]
        raise QuantcalError(f"awq: group_size={group_size} does not divide {name}'s {in_features} input columns; "
                            f"use one of {divisors or [-1]} (or -1 for per-channel)")


def check_model(model: nn.Module, group_size: int) -> None:
    """Refuse, before any calibration work, a group size that does not divide some layer's inputs."""
    for name, module in block_linears(model):
        check_groups(name, module.in_features, group_size)


def quantize_with_grid(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AWQ's zero-point grid, group-wise along the input dimension (``group_size`` must divide the columns): the
    dequantized weight and the (rows, groups) scales (float16 values, :func:`quantcal.recipes.grid.storable`) and
    zeros."""
    import torch

    rows, cols = w.shape
    g = cols if group_size <= 0 else group_size
    x = w.reshape(-1, g)
    maxq = 2 ** bits - 1
    hi, lo = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
    scale = grid.storable((hi - lo).clamp(min=1e-5) / maxq)
    zero = torch.clamp(-torch.round(lo / scale), 0, maxq)
    q = (torch.clamp(torch.round(x / scale) + zero, 0, maxq) - zero) * scale
    return q.reshape(rows, cols), scale.reshape(rows, cols // g), zero.reshape(rows, cols // g)


def quantize(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """:func:`quantize_with_grid`'s dequantized weight."""
    return quantize_with_grid(w, bits, group_size)[0]


def activation_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    s = mean_abs.pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@dataclass(frozen=True)
class ScaleSearch:
    alpha: float
    scales: torch.Tensor
    losses: list[float]  # one per alpha on the grid


def search_scale(weights: list[torch.Tensor], x: torch.Tensor, mean_abs: torch.Tensor, bits: int, group_size: int,
                 n_grid: int = 20) -> ScaleSearch:
    """The shared input-channel scale of linears ``weights`` (each ``(out, in)``) reading inputs ``x`` ``(tokens, in)``."""
    import torch

    w = torch.cat(weights).float()
    x = x.float()
    reference = x @ w.T
    losses = []
    best = (float("inf"), 0.0, torch.ones_like(mean_abs))
    for i in range(n_grid):
        alpha = i / n_grid
        s = activation_scales(mean_abs.float(), alpha)
        effective = quantize(w * s, bits, group_size) / s
        loss = float(torch.square(reference - x @ effective.T).mean())
        losses.append(loss)
        if loss < best[0]:
            best = (loss, alpha, s)
    return ScaleSearch(best[1], best[2], losses)


def search_clip(w: torch.Tensor, x: torch.Tensor, bits: int, group_size: int, steps: int = CLIP_STEPS) -> torch.Tensor:
    """Per (row, group) clipping bound ``m`` of ``w`` ``(out, in)`` minimising the group's partial output error on
    inputs ``x`` ``(tokens, in)``; returns ``m`` as ``(out, groups)``."""
    import torch

    rows, cols = w.shape
    g = cols if group_size <= 0 else group_size
    wg = w.float().reshape(rows, 1, cols // g, g)
    xg = x.float().reshape(1, -1, cols // g, g)
    top = wg.abs().amax(dim=-1, keepdim=True)
    best_max = top.clone()
    best_err = torch.full_like(top, float("inf"))
    chunk = max(1, 2**22 // max(1, xg.shape[1] * cols))
    for start in range(0, rows, chunk):
        w_part = wg[start:start + chunk]
        reference = (xg * w_part).sum(dim=-1)
        for i in range(steps):
            m = top[start:start + chunk] * (1 - i / 20)
            clipped = torch.clamp(w_part, -m, m)
            q = quantize(clipped.reshape(-1, cols), bits, group_size).reshape(clipped.shape)
            err = torch.square((xg * q).sum(dim=-1) - reference).mean(dim=1, keepdim=True).unsqueeze(-1)
            better = err < best_err[start:start + chunk]
            best_err[start:start + chunk] = torch.where(better, err, best_err[start:start + chunk])
            best_max[start:start + chunk] = torch.where(better, m, best_max[start:start + chunk])
    return best_max.reshape(rows, cols // g)


def clip(w: torch.Tensor, bounds: torch.Tensor, group_size: int) -> torch.Tensor:
    import torch

    rows, cols = w.shape
    g = cols if group_size <= 0 else group_size
    m = bounds.reshape(rows, cols // g, 1)
    return torch.clamp(w.reshape(rows, cols // g, g), -m, m).reshape(rows, cols)


@dataclass(frozen=True)
class AWQLayer:
    grid_weight: torch.Tensor  # Q(clip(W s)): at most 2^bits values per group
    scales: torch.Tensor  # s, folded into the producer of the input in a deployment
    effective: torch.Tensor  # Q(clip(W s)) / s: what simulated mode stores
    float_effective: torch.Tensor  # clip(W s) / s: the block's weight while later blocks are calibrated
    group_scale: torch.Tensor  # (rows, groups) scales and zeros of Q
    group_zero: torch.Tensor


def quantize_group(weights: dict[str, torch.Tensor], x: torch.Tensor, mean_abs: torch.Tensor, bits: int,
                   group_size: int, n_grid: int, do_clip: bool, scale: bool) -> tuple[dict[str, AWQLayer], float]:
    """AWQ for linears sharing one input: scale search (if ``scale``), clipping, quantization."""
    import torch

    alpha = 0.0
    s = torch.ones(x.shape[1])
    if scale:
        found = search_scale(list(weights.values()), x, mean_abs, bits, group_size, n_grid)
        alpha, s = found.alpha, found.scales
    x_scaled = x.float() / s
    step = max(1, x.shape[0] // CLIP_TOKENS)
    clip_inputs = x_scaled[::step][:CLIP_TOKENS]
    out = {}
    for name, w in weights.items():
        w_scaled = w.float() * s
        if do_clip and not any(tag in name.lower() for tag in NO_CLIP):
            w_scaled = clip(w_scaled, search_clip(w_scaled, clip_inputs, bits, group_size), group_size)
        grid_weight, group_scale, group_zero = quantize_with_grid(w_scaled, bits, group_size)
        out[name] = AWQLayer(grid_weight, s, (grid_weight / s).to(w.dtype), (w_scaled / s).to(w.dtype),
                             group_scale, group_zero)
    return out, alpha


def input_groups(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> list[list[str]]:
    """Linears of ``layer`` grouped by the input tensor they read (same storage in one forward)."""
    from torch import nn
    import torch

    seen: dict[tuple, list[str]] = {}
    alive: list[torch.Tensor] = []  # held so that no later input can reuse a freed input's storage address
    handles = []
    for name, module in layer.named_modules():
        if isinstance(module, nn.Linear):
            def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
                alive.append(args[0])
                seen.setdefault((args[0].data_ptr(), tuple(args[0].shape)), []).append(name)
            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            run_block(layer, hidden, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return list(seen.values())


def fold_producer(name: str) -> str | None:
    """The linear of the same block whose output rows can absorb ``1/s`` of ``name``'s input (:data:`FOLD_INTO`)."""
    parent, _, leaf = name.rpartition(".")
    producer = FOLD_INTO.get(leaf)
    return None if producer is None else f"{parent}.{producer}" if parent else producer


def foldable(group: list[str], modules: dict[str, nn.Module]) -> bool:
    """Whether ``1/s`` can be folded into the producer of the group's input (see module docstring)."""
    from torch import nn

    if len(group) > 1:
        return True
    name = group[0]
    producer = fold_producer(name)
    if producer is None:
        return False
    other = modules.get(producer)
    return isinstance(other, nn.Linear) and other.out_features == modules[name].in_features


class _Inputs:
    """Per group of linears: ``mean |x|`` over every calibration token and a strided subsample of rows."""

    def __init__(self, stride: int) -> None:
        self.stride = stride
        self.abs_sum: torch.Tensor | None = None
        self.count = 0
        self.rows: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        total = x.abs().sum(dim=0)
        self.abs_sum = total if self.abs_sum is None else self.abs_sum + total
        self.count += x.shape[0]
        self.rows.append(x[::self.stride].clone())

    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.count, 1)

    def sample(self) -> torch.Tensor:
        import torch

        return torch.cat(self.rows)


def as_deployed(final: dict[str, torch.Tensor], results: dict[str, tuple[AWQLayer, bool]], bits: int,
                group_size: int) -> dict[str, torch.Tensor]:
    """The block's stored weights as a deployment computes them: where a scaled layer's ``1/s`` folds into a quantized
    producer's output rows (``o_proj`` <- ``v_proj``, ``down_proj`` <- ``up_proj``), the producer's float16 group
    scales are divided by ``s`` and rounded to float16 again (:func:`quantcal.recipes.grid_record.rows_rescaled`);
    the simulated producer is ``diag(s)`` times that, so simulated and exported variants compute the same function."""
    out = dict(final)
    for name, (result, scaled) in results.items():
        producer = fold_producer(name)
        if not scaled or producer not in results:
            continue
        p, p_scaled = results[producer]
        layer = LayerGrid.of(p.group_scale, p.group_zero, bits, group_size, p.grid_weight.shape[1], False)
        q = grid_record.codes(p.grid_weight, layer, producer)
        rescaled = replace(layer, scale=rows_rescaled(layer.scale, result.scales))
        deployed = grid_record.dequantize(q, rescaled) * result.scales.float()[:, None]
        out[producer] = (deployed / p.scales if p_scaled else deployed).to(final[producer].dtype)
    return out


def awq_model(model: nn.Module, calibration: torch.Tensor, bits: int, group_size: int, n_grid: int = 20,
              do_clip: bool = True, progress: Callable[[int, int], None] | None = None,
              grids: dict[str, LayerGrid] | None = None) -> dict[str, dict]:
    """Quantize every linear in the decoder blocks in place (simulated). Returns per layer: the chosen ``alpha``,
    whether it was scaled, and the relative output error on the subsampled calibration inputs; ``grids``, when
    given, receives each layer's grid (with ``s`` as its input scale when the layer was scaled)."""
    import torch

    check_model(model, group_size)
    hidden, kwargs = capture_layer_inputs(model, calibration)
    layers = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)
    tokens = sum(h.shape[0] * h.shape[1] for h in hidden)
    stride = max(1, tokens // LOSS_TOKENS)
    report: dict[str, dict] = {}
    for index, layer in enumerate(layers):
        modules = dict(layer.named_modules())
        groups = input_groups(layer, hidden[0], kwargs[index])
        collected = {tuple(g): _Inputs(stride) for g in groups}
        handles = []
        for group, inputs in collected.items():
            def hook(mod: nn.Module, args: tuple, inputs: _Inputs = inputs) -> None:
                inputs.add(args[0])
            handles.append(modules[group[0]].register_forward_pre_hook(hook))
        try:
            with torch.inference_mode():
                for h in hidden:
                    run_block(layer, h, kwargs[index])
        finally:
            for handle in handles:
                handle.remove()
        final: dict[str, torch.Tensor] = {}
        grids_here: dict[str, tuple[AWQLayer, bool]] = {}
        for group, inputs in collected.items():
            x = inputs.sample()
            scaled = foldable(list(group), modules)
            weights = {name: modules[name].weight.data for name in group}
            results, alpha = quantize_group(weights, x, inputs.mean_abs(), bits, group_size, n_grid, do_clip, scaled)
            gram = x.double().T @ x.double()
            for name, result in results.items():
                report[f"{prefix}.{index}.{name}"] = {
                    "alpha": alpha, "scaled": scaled,
                    "error": relative_output_error(weights[name], result.effective, gram)}
                modules[name].weight.data = result.float_effective
                final[name] = result.effective
                grids_here[name] = (result, scaled)
                if grids is not None:
                    grids[f"{prefix}.{index}.{name}"] = LayerGrid.of(
                        result.group_scale, result.group_zero, bits, group_size, result.effective.shape[1], False,
                        result.scales if scaled else None)
        with torch.inference_mode():
            hidden = [run_block(layer, h, kwargs[index]) for h in hidden]
        for name, weight in as_deployed(final, grids_here, bits, group_size).items():
            modules[name].weight.data = weight
        if progress:
            progress(index + 1, len(layers))
    return report
