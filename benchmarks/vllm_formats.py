"""The deployment formats on vLLM's own kernels (``--backend vllm``: the variant's compressed-tensors checkpoint,
``kv_cache_dtype=fp8`` for a ``kv:`` part) against quantcal's simulation of the same format (``--backend hf``), on
the same items and dtype, beside each backend's float reference: the per-choice log-likelihood gap between the two
implementations of a format, next to the gap between the two backends on the float model (what the engines
differ by without any format) and to each format's own effect (variant minus reference, per backend).

Run it in the environment that has vLLM (``scripts/setup_vllm.sh``)::

    /tmp/vllm-env/bin/python benchmarks/vllm_formats.py --data ../shared/data --limit 100 --dtype bfloat16 \\
        --recipes "kv:fp8;w8a8" --work /tmp/vllm-formats

A format vLLM cannot run on this machine (FP8 or FP4 weights on a CPU) is reported with vLLM's one-line reason.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

DEFAULT_RECIPES = "kv:fp8;fp8;fp8:weights=block128;w8a8;nvfp4:acts=none;nvfp4"


def gaps(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    gap = np.abs(a - b)
    return {"median": float(np.median(gap)), "p95": float(np.quantile(gap, 0.95)), "max": float(gap.max()),
            "share_within_1e-3": float(np.mean(gap <= 1e-3)), "mean_signed": float(np.mean(a - b))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES, help="';'-separated recipes")
    parser.add_argument("--task", default="piqa")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/quantcal-vllm-formats"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import quantcal
    from quantcal.cli.common import quiet_transformers

    quiet_transformers()
    data = next((args.data / args.task).glob("validation*.jsonl"))
    store = args.work / "formats.sqlite"
    recipes = [r.strip() for r in args.recipes.split(";") if r.strip()]
    failed: dict[str, str] = {}
    for recipe in [None, *recipes]:
        for backend in ("hf", "vllm"):
            name = f"{backend}:{recipe or 'reference'}"
            try:
                quantcal.evaluate(args.model, args.task, data_file=data, limit=args.limit, store=store, name=name,
                                  backend=backend, dtype=args.dtype, device=args.device, recipe=recipe,
                                  progress=None)
            except quantcal.QuantcalError as err:
                failed[name] = str(err)
                print(f"{name}: {err}", flush=True)
    items = quantcal.load_items(store)
    logliks, acc = {}, {}
    for name, rows in items.groupby("variant"):
        rows = rows.sort_values("position")
        logliks[name] = np.concatenate([np.asarray(x, float) for x in rows.logliks])
        acc[name] = float(rows.correct.mean())
    results: dict[str, dict] = {"engines_on_the_float_model": gaps(logliks["vllm:reference"], logliks["hf:reference"])}
    print(f"{'float model':>22}: vllm vs hf median {results['engines_on_the_float_model']['median']:.4f}")
    for recipe in recipes:
        hf, vllm = f"hf:{recipe}", f"vllm:{recipe}"
        if hf not in logliks or vllm not in logliks:
            continue
        row = {"vllm_vs_simulated": gaps(logliks[vllm], logliks[hf]),
               "effect_simulated": gaps(logliks[hf], logliks["hf:reference"]),
               "effect_vllm": gaps(logliks[vllm], logliks["vllm:reference"]),
               "accuracy": {"simulated": acc[hf], "vllm": acc[vllm]}}
        results[recipe] = row
        print(f"{recipe:>22}: vllm vs simulated median {row['vllm_vs_simulated']['median']:.4f} "
              f"max {row['vllm_vs_simulated']['max']:.3f}; effect median simulated "
              f"{row['effect_simulated']['median']:.4f}, vllm {row['effect_vllm']['median']:.4f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"vllm_formats_{args.model}_{args.task}_{args.device}_{args.dtype}.json"
    out.write_text(json.dumps({"model": args.model, "task": args.task, "limit": args.limit, "dtype": args.dtype,
                               "device": args.device, "machine": platform.processor() or platform.machine(),
                               "accuracy": acc, "refused": failed, "gaps": results}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
