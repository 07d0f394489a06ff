"""What a deployment format does at run time: fake quantizers on the input of every decoder-block linear
(activations), installed on a loaded model from the variant's record.

A recipe's weight part happens at build time (a cached checkpoint); its activation part is the record's ``runtime``
block (:func:`activation_block`), which :func:`install` turns into forward pre-hooks, so whichever engine calls the
model's forward (the packed scorer, a plain forward, cross-item prefix sharing) computes with the same quantized
inputs. Every scheme here is **token-local** (a token's quantized input depends on that token's own values and on
constants: per-token scales, blocks along the hidden dimension, or static per-tensor scales fixed at build time),
so packing several choices or items into one row, or sharing a prefix, changes nothing.

Schemes (``format``/``per``): ``fp8``/``token`` (FP8_DYNAMIC), ``fp8``/``tensor_static`` (a per-layer scale from
the calibration windows' amax / 448), ``int8``/``token`` (W8A8), ``nvfp4``/``group`` (blocks of 16, FP8 block
scales, a static per-layer global scale from the calibration windows' amax, as compressed-tensors' NVFP4 input
activations), ``mxfp4``/``group`` (blocks of 32, E8M0 scales). The output head is never quantized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

from quantcal.errors import QuantcalError
from quantcal.recipes.fused import Fused
from quantcal.recipes.layers import block_linears
from quantcal.recipes.number_formats import E4M3_MAX, fake_fp8, fake_int8, fake_mxfp4, fake_nvfp4

SCHEMES = {("fp8", "token"), ("fp8", "tensor_static"), ("int8", "token"), ("nvfp4", "group"), ("mxfp4", "group")}
#: Schemes whose scales come from the calibration windows (a per-layer input amax).
STATIC = {("fp8", "tensor_static"), ("nvfp4", "group")}


@dataclass(frozen=True)
class ActivationScheme:
    format: str
    per: str
    amax: dict[str, float] | None = None  # static schemes: each layer's input amax over the calibration windows
    rounding: str = "nearest"  # mxfp4: the block maximum's rounding to a power of two (number_formats.e8m0_scale)
    #: SmoothQuant: per smoothed layer its input-channel vector ``s`` (base64 float32): the input is ``x / s``
    smooth: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if (self.format, self.per) not in SCHEMES:
            raise QuantcalError(f"activation quantization {self.format}/{self.per}: not a scheme quantcal runs")
        if (self.format, self.per) in STATIC and not self.amax:
            raise QuantcalError(f"activation quantization {self.format}/{self.per} needs calibrated scales")

    def quantizer(self, layer: str, fuse: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The fake quantizer of ``layer``'s input (a tensor whose last dimension is the layer's input features).
        Every scheme here quantizes each token's row on its own (per-token or per-block scales; static scales are
        fixed), so a large input is quantized a few hundred rows at a time (:func:`by_rows`): the same numbers.
        ``fuse``: wraps the elementwise function (:func:`install` compiles it into one kernel; bit-identical)."""
        plain = self._plain(layer, fuse or (lambda f: f))  # SmoothQuant's 1/s: in the norm (fold_smoothing)
        return lambda x: by_rows(plain, x)

    def _plain(self, layer: str, fuse: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda f: f
               ) -> Callable[[torch.Tensor], torch.Tensor]:
        import torch

        if (self.format, self.per) == ("fp8", "token"):
            fp8 = fuse(fake_fp8)
            return lambda x: fp8(x, -1)
        if (self.format, self.per) == ("int8", "token"):
            int8 = fuse(fake_int8)
            return lambda x: int8(x, -1)
        if self.format == "mxfp4":
            mxfp4 = fuse(fake_mxfp4)
            return lambda x: mxfp4(x, 32, self.rounding)
        assert self.amax is not None
        amax = torch.tensor(self.amax[layer], dtype=torch.float32)
        if self.format == "nvfp4":
            nvfp4 = fuse(fake_nvfp4)
            return lambda x: nvfp4(x, 16, amax)
        scale = (amax / E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny)  # fp8, static per tensor
        static = fuse(fake_fp8_static)
        return lambda x: static(x, scale)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "per": self.per, **({"amax": self.amax} if self.amax else {}),
                **({"rounding": self.rounding} if self.format == "mxfp4" else {}),
                **({"smooth": self.smooth} if self.smooth else {})}


#: Rows (tokens) quantized together by :func:`by_rows`.
ROWS = 256


def by_rows(quantize: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int = ROWS) -> torch.Tensor:
    """``quantize`` applied to ``rows`` rows of ``x`` at a time (``x`` seen as a matrix of its last dimension), so
    the temporaries of its elementwise passes stay small."""
    import torch

    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] <= rows:
        return quantize(x)
    return torch.cat([quantize(part) for part in flat.split(rows)]).reshape(x.shape)


def fake_fp8_static(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 with a fixed scale: ``e4m3(x / s) * s`` (values past ``448 s`` saturate)."""
    from quantcal.recipes.number_formats import cast_e4m3

    return (cast_e4m3(x.float() / scale) * scale).to(x.dtype)


def activation_block(scheme: ActivationScheme | None) -> dict[str, Any]:
    """The ``runtime`` block of a variant's record (empty when the recipe leaves activations in float)."""
    return {"runtime": {"activations": scheme.to_json()}} if scheme is not None else {}


def scheme_of(record: dict[str, Any]) -> ActivationScheme | None:
    """The activation scheme a variant's record asks for, if any."""
    block = record.get("runtime", {}).get("activations")
    if not block:
        return None
    return ActivationScheme(block["format"], block["per"], block.get("amax"), block.get("rounding", "nearest"),
                            block.get("smooth"))


def fold_smoothing(model: nn.Module, scheme: ActivationScheme) -> int:
    """SmoothQuant's ``1 / s`` folded into the norm that produces each smoothed group's input, as a deployment (and
    quantcal's export) does, so the simulated variant rounds exactly what the deployed one rounds; returns the
    number of norms changed."""
    import torch

    from quantcal.recipes.folding import fold_norm, producers
    from quantcal.recipes.smoothquant import decode

    if not scheme.smooth:
        return 0
    modules = dict(model.named_modules())
    folded: dict[str, torch.Tensor] = {}
    for name, producer in producers(model, list(scheme.smooth)).items():
        s = decode(scheme.smooth[name])
        if producer in folded:
            if not torch.equal(folded[producer], s):
                raise QuantcalError(f"{producer} feeds layers with different SmoothQuant scales")
            continue
        norm = modules[producer]
        if isinstance(norm, torch.nn.Linear) or getattr(norm, "weight", None) is None:
            raise QuantcalError(f"{name}: its input comes from {producer}, not a norm; cannot fold SmoothQuant's scale")
        norm.weight.data = fold_norm(norm, s, producer).to(norm.weight.dtype)
        folded[producer] = s
    return len(folded)


class _LastInput:
    """The input a hook quantized last, under which quantizer, and the result: linears that read one tensor (q, k
    and v; gate and up) with the same quantizer quantize it once. It holds the tensor itself, so ``is`` cannot match
    a new tensor at a reused address."""

    def __init__(self) -> None:
        self.x: Any = None
        self.key: Any = None
        self.out: Any = None


def install(model: nn.Module, scheme: ActivationScheme, fused: bool = True) -> list[Any]:
    """Forward pre-hooks quantizing every decoder-block linear's input (SmoothQuant's scales folded into their norms
    first); returns the hooks' handles. An input read by several linears whose quantizers are the same (dynamic
    schemes; static ones with equal calibrated scales, as a shared input's are) is quantized once. ``fused``: each
    quantizer compiled into one kernel (bit-identical; :mod:`quantcal.recipes.fused`), eager where that fails."""
    fold_smoothing(model, scheme)
    handles = []
    last = _LastInput()
    fusers: dict[Any, Fused] = {}  # one compiled function for every layer (a failure to compile is met once)
    fuse = (lambda f: fusers.setdefault(f, Fused(f))) if fused else None
    for name, linear in block_linears(model):
        quantize = scheme.quantizer(name, fuse)
        key = (scheme.format, scheme.per, scheme.rounding, scheme.amax[name] if scheme.amax else None)

        def hook(module: nn.Module, args: tuple, quantize: Callable = quantize, key: tuple = key) -> tuple:
            x = args[0]
            if x is not last.x or key != last.key:
                last.x, last.key, last.out = x, key, quantize(x)
            return (last.out, *args[1:])

        handles.append(linear.register_forward_pre_hook(hook))
    return handles


def input_amax(model: nn.Module, ids: torch.Tensor, batch_size: int = 4) -> dict[str, float]:
    """Each decoder-block linear's largest input magnitude over the calibration windows ``ids`` (float model)."""
    import torch

    amax: dict[str, float] = {}
    handles = []
    for name, linear in block_linears(model):
        def hook(module: nn.Module, args: tuple, name: str = name) -> None:
            amax[name] = max(amax.get(name, 0.0), float(args[0].detach().abs().amax()))

        handles.append(linear.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            for start in range(0, ids.shape[0], batch_size):
                model(ids[start:start + batch_size], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return amax


__all__ = ["ActivationScheme", "activation_block", "input_amax", "install", "scheme_of"]
