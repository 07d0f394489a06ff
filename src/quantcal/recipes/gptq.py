"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").

Per linear layer with calibration inputs ``X``: ``H = 2/N X^T X`` (+ ``damp * mean(diag H) * I``), ``U`` the upper
Cholesky factor of ``H^-1``. Columns are quantized left to right (or by decreasing ``diag H`` with
``desc_act``); after quantizing column ``j`` the error ``e = (w_j - q_j) / U_jj`` is spread over the columns still
to come: ``W[:, j:] -= e U[j, j:]``. Updates are applied lazily, a block of columns at a time (the paper's lazy
batch updates), which is the same arithmetic in a cache-friendly order. Group scales (:mod:`quantcal.recipes.grid`)
are fitted when a group starts, on the group's weights *after* all earlier updates; blocks are a multiple of the
group size so a group never straddles a block. (The reference implementation fits a group on weights that miss
the in-block updates; quantcal keeps the algorithm's stated arithmetic, which a test checks against a plain
column-by-column implementation.) ``static_groups=true`` instead fits every group's scale on the weights before
any update, as AutoGPTQ's ``static_groups`` and llmcompressor's GPTQ (whose observer fixes all scales first) do.

Layers are processed block by block: each decoder block's inputs come from the already-quantized blocks before
it, as in the paper's sequential scheme; within a block all linears see the same (float) block input pass.

The solve runs in float64 (the paper's code and llmcompressor use float32). Because each column's rounding error
moves the later columns, the two precisions end a few codes apart on the same Hessian (99.99% identical on SmolLM2,
equal output error: ``benchmarks/gptq_precision.py``), and those codes change the inputs of the blocks after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

from quantcal.recipes import grid
from quantcal.recipes.layers import capture_layer_inputs, decoder_layers, input_gram, relative_output_error, run_block


@dataclass(frozen=True)
class GPTQResult:
    weight: torch.Tensor
    perm: torch.Tensor | None  # column order used (desc_act); groups are consecutive in this order
    scales: torch.Tensor | None = None  # (rows, groups), float64, in quantization order: the integer codes are
    zeros: torch.Tensor | None = None  # round(w / scale) + zero of each group's columns


def gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, sym: bool,
                damp: float = 0.01, desc_act: bool = False, block_size: int = 128,
                static_groups: bool = False) -> GPTQResult:
    import torch

    w = weight.detach().double().clone()
    h = hessian.detach().double().clone()
    cols = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True) if desc_act else None
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    g = cols if group_size <= 0 else group_size
    bs = max(g, (block_size // g) * g) if g < cols else block_size
    q = torch.zeros_like(w)
    scale = zero = None
    scales, zeros = [], []
    fixed = [grid.fit(w[:, j:j + g], bits, sym) for j in range(0, cols, g)] if static_groups else None
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:
                if fixed is not None:
                    scale, zero = fixed[col // g]
                else:
                    scale, zero = grid.fit(w1[:, i:i + g] if g < cols else w, bits, sym)
                scales.append(scale)
                zeros.append(zero)
            column = w1[:, i]
            qc = grid.quantize(column, scale, zero, bits)
            q[:, col] = qc
            e = (column - qc) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    if perm is not None:
        q = q[:, torch.argsort(perm)]
    return GPTQResult(q.to(weight.dtype), perm, torch.stack(scales, 1), torch.stack(zeros, 1))


def gptq_model(model: torch.nn.Module, calibration: torch.Tensor, bits: int, group_size: int, sym: bool, damp: float,
               desc_act: bool, progress: Callable[[int, int], None] | None = None,
               results: dict[str, GPTQResult] | None = None, static_groups: bool = False) -> dict[str, float]:
    """Quantize every linear in the decoder blocks in place (simulated: weights on the grid, stored in float).
    Returns each layer's relative output error on its calibration inputs; ``results``, when given, receives each
    layer's :class:`GPTQResult` (its group scales and zeros give the integer codes)."""
    import torch

    hidden, kwargs = capture_layer_inputs(model, calibration)
    layers = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)
    errors: dict[str, float] = {}
    for index, layer in enumerate(layers):
        grams = input_gram(layer, hidden, kwargs[index])
        modules = dict(layer.named_modules())
        for name, (gram, count) in grams.items():
            linear = modules[name]
            result = gptq_weight(linear.weight.data, 2 * gram / max(count, 1), bits, group_size, sym, damp, desc_act,
                                 static_groups=static_groups)
            errors[f"{prefix}.{index}.{name}"] = relative_output_error(linear.weight.data, result.weight, gram)
            if results is not None:
                results[f"{prefix}.{index}.{name}"] = result
            linear.weight.data = result.weight
        with torch.inference_mode():
            hidden = [run_block(layer, h, kwargs[index]) for h in hidden]
        if progress:
            progress(index + 1, len(layers))
    return errors
