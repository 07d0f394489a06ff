"""Runs inside llmcompressor's own environment (it pins transformers <= 5.17): GPTQ or AWQ on given token windows.

Called by ``llmcompressor_parity.py``; not a quantcal import. Reads the reference checkpoint (float32) and the
calibration windows (``.npy``, the same windows quantcal's run reads), runs ``oneshot`` with the settings matched to
quantcal's (group-wise asymmetric integer grid, no activation ordering, damping 0.01, blocks of 128; AWQ: n_grid 20,
no duo scaling, no clipping search, then round-to-nearest), and writes to ``--out``:

- ``model.safetensors`` + the reference's config and tokenizer files: every weight, block linears replaced by their
  dequantized values (``(code - zero) * scale``, compressed-tensors' own functions), so quantcal loads it as a
  plain float checkpoint;
- ``codes.safetensors``: each block linear's integer codes, scales and zero points (compressed-tensors' ranges);
- ``run.json``: seconds and versions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--method", choices=("gptq", "awq"), required=True)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM

    if not torch.accelerator.is_available():
        # llmcompressor 0.14.0.1's AWQ pins its cached activations unconditionally, which fails on a machine without
        # an accelerator ("Cannot access accelerator device"); pinning only speeds host-to-device copies.
        from llmcompressor.pipelines.cache import IntermediatesCache

        IntermediatesCache.pin_memory = lambda self, *a, **k: None  # type: ignore[method-assign]
    ids = np.load(args.calib)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)
    weights = {"num_bits": args.bits, "type": "int", "symmetric": False, "strategy": "group",
               "group_size": args.group_size, "actorder": None}
    groups = {"group_0": {"targets": ["Linear"], "weights": weights}}
    if args.method == "gptq":
        recipe = [GPTQModifier(config_groups=groups, ignore=["lm_head"], dampening_frac=args.damp, block_size=128,
                               actorder=None)]
    else:
        recipe = [AWQModifier(duo_scaling=False, n_grid=20, offload_device=None), QuantizationModifier(config_groups=groups, ignore=["lm_head"])]
    start = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=len(ids), max_seq_length=ids.shape[1])
    seconds = time.perf_counter() - start

    codes, state = {}, {}
    quant_suffixes = ("weight_scale", "weight_zero_point", "weight_g_idx", "input_scale", "input_zero_point",
                      "output_scale", "output_zero_point", "weight_global_scale")
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or not hasattr(module, "weight_scale") or ".layers." not in name:
            continue
        w, scale, zero = module.weight.data, module.weight_scale.data, module.weight_zero_point.data
        code = quantize(w, scale, zero, scheme.weights)
        codes[f"{name}.codes"] = code.to(torch.int16).contiguous()
        codes[f"{name}.scale"] = scale.float().contiguous()
        codes[f"{name}.zero"] = zero.to(torch.int16).contiguous()
        state[f"{name}.weight"] = dequantize(code, scale, zero, scheme.weights).float().contiguous()
    for key, tensor in model.state_dict().items():
        if key.endswith(quant_suffixes) or key in state:
            continue
        if key == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            continue
        state[key] = tensor.detach().float().contiguous()
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    save_file(codes, str(args.out / "codes.safetensors"))
    for f in args.checkpoint.iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            shutil.copy(f, args.out / f.name)
    (args.out / "run.json").write_text(json.dumps({
        "method": args.method, "seconds": seconds, "settings": {"weights": weights, "damp": args.damp},
        "versions": {p: version(p) for p in ("llmcompressor", "compressed-tensors", "transformers", "torch")}}, indent=1))


if __name__ == "__main__":
    main()
