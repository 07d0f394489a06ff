"""Runs inside llmcompressor's own environment (it pins transformers <= 5.17): one of compressed-tensors' preset
schemes (``FP8_DYNAMIC``, ``W8A8``, ``NVFP4``, ``NVFP4A16``, ``MXFP4``) applied by ``oneshot`` with llmcompressor's
``QuantizationModifier`` to every ``Linear`` but ``lm_head``, calibrated (where the scheme has static scales: NVFP4's
activation global scale) on the given token windows, and saved compressed as llmcompressor saves it for vLLM.

Called by ``llmcompressor_formats.py``; not a quantcal import. Writes to ``--out`` the compressed checkpoint
(``save_pretrained(save_compressed=True)``), the reference's tokenizer files and ``run.json`` (seconds, versions).
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
    parser.add_argument("--scheme", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    if not torch.accelerator.is_available():
        from llmcompressor.pipelines.cache import IntermediatesCache

        IntermediatesCache.pin_memory = lambda self, *a, **k: None  # type: ignore[method-assign]
    ids = np.load(args.calib)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)
    recipe = QuantizationModifier(targets="Linear", scheme=args.scheme, ignore=["lm_head"])
    start = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=len(ids), max_seq_length=ids.shape[1])
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, save_compressed=True)
    for f in args.checkpoint.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and not (args.out / f.name).exists():
            shutil.copy(f, args.out / f.name)
    (args.out / "run.json").write_text(json.dumps({
        "scheme": args.scheme, "seconds": seconds, "calibration_windows": list(ids.shape),
        "versions": {p: version(p) for p in ("llmcompressor", "compressed-tensors", "transformers", "torch")}}, indent=1))


if __name__ == "__main__":
    main()
