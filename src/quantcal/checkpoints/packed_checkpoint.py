"""A built integer variant (RTN, GPTQ, AWQ) written as a checkpoint deployment engines load with their own kernels:
compressed-tensors' ``pack-quantized`` format, which llmcompressor writes and vLLM and transformers read.

Per quantized linear (compressed-tensors 0.20's layout, ``compressors/pack_quantized``):

- ``weight_packed``: the codes, shifted to the signed range (``q - 2^(b-1)``) and packed densely into int32 along
  the input dimension (``pack_to_int32``);
- ``weight_scale``: the group scales, float16, exactly the values the simulated variant used
  (:func:`quantcal.recipes.grid.storable`);
- ``weight_zero_point`` (asymmetric grids only): the zeros, shifted the same way and packed along the output
  dimension; a symmetric grid's zero is ``2^(b-1)`` and is not stored;
- ``weight_shape``.

``config.json`` gains a ``quantization_config`` (``quant_method: compressed-tensors``, one group scheme targeting
``Linear``, the output head ignored). The dequantized weight ``scale (q - zero)`` is the simulated variant's weight.
AWQ's per-input-channel scale ``s`` is folded as a deployment does: the layer stores ``Q(W s)``, and ``1/s`` goes into
the producer of its input, a norm's weight (``w / s``; ``(1 + w) / s - 1`` for Gemma's ``1 + w`` norms) or, for
``o_proj`` / ``down_proj``, the rows of ``v_proj`` / ``up_proj`` (their group scales divided by ``s`` per row, then
rounded to float16 again; the simulated AWQ variant applies the same rounding, :func:`quantcal.recipes.awq.awq_model`).

Loading: transformers reads symmetric checkpoints with its compressed modules (dequantized in float32 at each
forward: the simulated weights exactly); for asymmetric ones its compressed loader expects an unpacked zero point
(compressed-tensors 0.20.1 with transformers 5.24), so :func:`load_packed` (and ``quantcal eval`` on the folder)
passes ``dequantize=True`` and then re-dequantizes in float32 (:mod:`quantcal.sources.packed_load`). vLLM reads both.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from quantcal.errors import QuantcalError
from quantcal.checkpoints.formats import (COMPRESSED_TENSORS, DTYPES, ExportedModel, check_dtype, export_record,
                                         read_tensors, variant_record, write_quantized)
from quantcal.sources import packed_load
from quantcal.recipes import grid_record
from quantcal.recipes.folding import fold_norm as _fold_norm, producers as _producers
from quantcal.recipes.grid_record import LayerGrid

TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}


def _require_compressed_tensors() -> Any:
    try:
        import compressed_tensors  # noqa: F401
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    except ImportError as err:
        raise QuantcalError("export-model needs compressed-tensors: pip install 'quantcal[export]'") from err
    return pack_to_int32


def _scheme(grids: dict[str, LayerGrid]) -> tuple[int, int, bool]:
    schemes = {(g.bits, g.group_size, g.sym) for g in grids.values()}
    if len(schemes) != 1:
        raise QuantcalError(f"the layers use {len(schemes)} different grids; one checkpoint scheme needs one")
    return schemes.pop()


def quantization_config(bits: int, group_size: int, sym: bool, per_channel: bool) -> dict[str, Any]:
    """compressed-tensors' ``quantization_config`` for one integer weight-only scheme on every ``Linear``."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym,
                            strategy="channel" if per_channel else "group", group_size=None if per_channel else group_size)
    config = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                                ignore=["lm_head"], format="pack-quantized", quantization_status="compressed")
    return json.loads(config.model_dump_json(exclude_none=True)) | {"quant_method": "compressed-tensors"}


def _fold_awq(model_dir: Path, grids: dict[str, LayerGrid], state: dict[str, torch.Tensor]) -> dict[str, LayerGrid]:
    """Fold each scaled layer's ``1/s`` into its input's producer (module doc). Returns the grids as stored (no
    input scales; a quantized producer's scales divided by ``s`` per row) and updates ``state``'s float producers
    (norm weights; an unquantized linear's rows and bias)."""
    from transformers import AutoModelForCausalLM

    final = {n: replace(g, input_scale=None) for n, g in grids.items()}
    scaled = [n for n, g in grids.items() if g.input_scale is not None]
    if not scaled:
        return final
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    modules = dict(model.named_modules())
    by_producer: dict[str, torch.Tensor] = {}
    for name, producer in _producers(model, scaled).items():
        s = grids[name].input_scale
        if producer in by_producer and not torch.equal(by_producer[producer], s):
            raise QuantcalError(f"{producer} feeds layers with different AWQ scales; cannot fold them")
        by_producer[producer] = s
    for producer, s in by_producer.items():
        module = modules[producer]
        if producer in final:  # a quantized linear: its output rows are the consumer's input channels
            p = final[producer]
            final[producer] = replace(p, scale=grid_record.rows_rescaled(p.scale, s).to(p.scale.dtype))
        elif isinstance(module, torch.nn.Linear):
            state[f"{producer}.weight"] = state[f"{producer}.weight"] / s[:, None].to(state[f"{producer}.weight"].dtype)
        else:
            key = f"{producer}.weight"
            if key not in state:
                raise QuantcalError(f"{producer}: cannot fold AWQ's input scale into a {type(module).__name__} without a weight")
            state[key] = _fold_norm(module, s, producer).to(state[key].dtype)
        if f"{producer}.bias" in state:
            state[f"{producer}.bias"] = state[f"{producer}.bias"] / s.to(state[f"{producer}.bias"].dtype)
    return final


def export_packed(variant_dir: Union[str, Path], out: Union[str, Path], dtype: str = "float32",
                  say: Callable[[str], None] = lambda m: None, kv: Any = None) -> ExportedModel:
    """Write the built variant in ``variant_dir`` to ``out`` as a pack-quantized checkpoint (module doc).
    ``dtype`` is the dtype of the tensors that stay in float (embeddings, norms, output head); ``kv`` adds a KV-cache
    scheme (:mod:`quantcal.checkpoints.kv_checkpoint`)."""
    pack_to_int32 = _require_compressed_tensors()
    variant_dir, out = Path(variant_dir), Path(out)
    check_dtype(dtype)
    if out.exists() and any(out.iterdir()):
        raise QuantcalError(f"{out}: exists and is not empty; choose a new folder")
    meta = variant_record(variant_dir)
    grids = grid_record.load(variant_dir)
    if not grids:
        raise QuantcalError(f"{meta['recipe']}: no integer grid to pack. export-model writes RTN, GPTQ (desc_act=false) "
                            "and AWQ variants in simulated mode")
    bits, group_size, sym = _scheme(grids)
    state = read_tensors(variant_dir)
    missing = [n for n in grids if f"{n}.weight" not in state]
    if missing:
        raise QuantcalError(f"{variant_dir}: the checkpoint lacks {missing[0]}.weight (and {len(missing) - 1} more)")
    codes = {name: grid_record.codes(state.pop(f"{name}.weight"), layer, name) for name, layer in grids.items()}
    awq_folded = any(g.input_scale is not None for g in grids.values())
    if awq_folded:
        say("folding AWQ's input scales into the layers that produce their inputs")
    grids = _fold_awq(variant_dir, grids, state)
    offset = 2 ** (bits - 1)
    packed: dict[str, torch.Tensor] = {}
    quantized_bytes = quantized_weights = 0
    for name, layer in grids.items():
        q = codes[name].to(torch.int32) - offset
        rows, cols = q.shape
        entries = {"weight_packed": pack_to_int32(q.to(torch.int8), bits), "weight_scale": layer.scale.contiguous(),
                   "weight_shape": torch.tensor([rows, cols])}
        if not sym:
            zero = layer.zero.to(torch.int32) - offset
            entries["weight_zero_point"] = pack_to_int32(zero.to(torch.int8), bits, packed_dim=0)
        for key, tensor in entries.items():
            packed[f"{name}.{key}"] = tensor.contiguous()  # compressed-tensors 0.17 packs zeros as a strided view
            if key != "weight_shape":
                quantized_bytes += tensor.numel() * tensor.element_size()
        quantized_weights += rows * cols
    per_channel = all(g.scale.shape[1] == 1 for g in grids.values())
    record = {**meta, "export": export_record("compressed-tensors pack-quantized", dtype, len(grids), quantized_weights,
                                              quantized_bytes, scale_dtype="float16", awq_folded=awq_folded)}
    write_quantized(out, variant_dir, state, packed, quantization_config(bits, group_size, sym, per_channel), dtype,
                    record, kv)
    on_disk = record["export"]["bits_per_weight_on_disk"]
    say(f"{meta['recipe']}: {len(grids)} layers packed, {on_disk:.3f} bits per weight on disk, written to {out}")
    return ExportedModel(out, meta["recipe"], COMPRESSED_TENSORS, len(grids), on_disk, record)


def load_packed(path: Union[str, Path], dtype: Optional[str] = "float32") -> Any:
    """A checkpoint written by :func:`export_packed`, loaded in transformers (module doc: asymmetric grids are
    dequantized at load)."""
    from transformers import AutoModelForCausalLM

    _require_compressed_tensors()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=TORCH_DTYPES[dtype or "float32"],
                                                 **packed_load.load_kwargs(Path(path))).eval()
    packed_load.restore_float32(model, Path(path))
    return model
