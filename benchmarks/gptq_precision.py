"""How much of GPTQ's integer codes depend on float precision alone? quantcal's GPTQ run twice on the same Hessians.

quantcal solves GPTQ in float64 (``gptq_weight`` casts the weight and the Hessian); llmcompressor 0.14 accumulates its
Hessians and solves in float32 (``GPTQ_PRECISION = torch.float32``). GPTQ feeds each column's rounding error into the
columns after it, so one code that rounds the other way near a grid midpoint changes the inputs of every later
column: a float32 solve and a float64 solve of the *same* problem can end with different codes of equal quality.
This script measures that on the bundled SmolLM2: it captures the Hessians quantcal builds for the first decoder
blocks (from the windows of ``llmcompressor_parity.py``'s ``WORK/calib.npy``, or self-generated ones), solves each
layer in float64 (as shipped) and again with every tensor in float32 (the Hessian rounded to float32 first), with
``static_groups`` (llmcompressor's scale timing), and reports per layer the share of identical codes and the
relative output error ``||X (W_q - W)^T|| / ||X W^T||`` of each solve.

    python benchmarks/gptq_precision.py [--calib WORK/calib.npy] [--blocks 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def codes_of(result: Any, group_size: int) -> torch.Tensor:
    cols = result.weight.shape[1]
    scale = result.scales.double().repeat_interleave(group_size, dim=1)[:, :cols]
    zero = result.zeros.double().repeat_interleave(group_size, dim=1)[:, :cols]
    return torch.round(result.weight.double() / scale + zero).to(torch.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--calib", type=Path, default=None, help="windows (.npy of token ids); default: self-generated")
    parser.add_argument("--blocks", type=int, default=2, help="decoder blocks to capture")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    from quantcal.sources.models import load_model, resolve_source
    from quantcal.recipes import gptq
    from quantcal.recipes.calibration import calibration_ids
    from quantcal.recipes.layers import decoder_layers, relative_output_error

    source = resolve_source(args.model)
    lm = load_model(source, "float32")
    ids = (torch.from_numpy(np.load(args.calib)) if args.calib is not None else
           calibration_ids(lm.model, lm.tokenizer, "self", 16, 512, 0, fingerprint=source.fingerprint))
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    solve = gptq.gptq_weight

    def capture(weight: torch.Tensor, hessian: torch.Tensor, *a: Any, **k: Any) -> Any:
        captured.append((weight.detach().clone(), hessian.detach().clone()))
        return solve(weight, hessian, *a, **k)

    layers = decoder_layers(lm.model)
    del layers[args.blocks:]  # quantize only the first blocks (the model is not used after this)
    with mock.patch.object(gptq, "gptq_weight", capture):
        gptq.gptq_model(lm.model, ids, args.bits, args.group_size, False, 0.01, False, static_groups=True)

    rows = []
    for index, (weight, hessian) in enumerate(captured):
        f64 = solve(weight, hessian, args.bits, args.group_size, False, 0.01, static_groups=True)
        with mock.patch.object(torch.Tensor, "double", torch.Tensor.float):  # every cast inside lands on float32
            f32 = solve(weight, hessian.float(), args.bits, args.group_size, False, 0.01, static_groups=True)
        same = float((codes_of(f64, args.group_size) == codes_of(f32, args.group_size)).double().mean())
        rows.append({"layer": index, "shape": list(weight.shape), "identical_codes": same,
                     "error_float64": relative_output_error(weight, f64.weight, hessian),
                     "error_float32": relative_output_error(weight, f32.weight, hessian)})
        print(f"layer {index:2d} {tuple(weight.shape)}: identical codes {same:.4f}, output error float64 "
              f"{rows[-1]['error_float64']:.5f} float32 {rows[-1]['error_float32']:.5f}")
    shares = np.array([r["identical_codes"] for r in rows])
    ratio = np.array([r["error_float32"] / r["error_float64"] for r in rows])
    summary = {"identical_codes_mean": float(shares.mean()), "identical_codes_min": float(shares.min()),
               "error_ratio_float32_over_float64_median": float(np.median(ratio)),
               "error_ratio_range": [float(ratio.min()), float(ratio.max())], "layers": len(rows)}
    print(json.dumps(summary, indent=1))
    out = args.output or HERE / "results" / f"gptq_precision_{args.model}.json"
    out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                               "layers": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
