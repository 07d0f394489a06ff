"""How far float rounding alone moves a model with a quantized KV cache: the same variant scored twice by quantcal's
HF backend, batch 1 and batch 64 (the matmuls' shapes differ, so their float32 rounding does, by ~1e-6), per-choice
|Δ log-likelihood| on the float model and under ``kv:fp8`` with each rounding. A cache rounded to a grid turns
those differences into whole-code flips wherever a value lies near a grid boundary, and the flips compound layer
after layer: the floor under any comparison of two implementations of the same quantized cache.

    python benchmarks/kv_float_sensitivity.py --data ../shared/data --limit 30
    python benchmarks/kv_float_sensitivity.py --dtype bfloat16 --recipes "w8a8"   # the activation grid likewise

Writes ``benchmarks/results/kv_float_sensitivity[_DTYPE].json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

RECIPES = "kv:fp8;kv:fp8,rounding=toward_zero"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--recipes", default=RECIPES, help="';'-separated recipes (the float model is always scored)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    recipes = [None, *(r.strip() for r in args.recipes.split(";") if r.strip())]

    import quantcal

    report: dict = {"model": args.model, "task": "piqa", "limit": args.limit, "dtype": args.dtype, "gaps": {}}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "s.sqlite"
        for recipe in recipes:
            for batch in (1, 64):
                quantcal.evaluate(args.model, "piqa", data_file=args.data / "piqa" / "validation.jsonl",
                                  limit=args.limit, store=store, name=f"{recipe or 'reference'}|{batch}",
                                  recipe=recipe, dtype=args.dtype, batch_size=batch, progress=None)
        items = quantcal.load_items(store)
    logliks = {name: np.concatenate([np.asarray(x, float) for x in rows.sort_values("position").logliks])
               for name, rows in items.groupby("variant")}
    for recipe in recipes:
        name = recipe or "reference"
        gap = np.abs(logliks[f"{name}|1"] - logliks[f"{name}|64"])
        report["gaps"][name] = {"median": float(np.median(gap)), "p95": float(np.quantile(gap, 0.95)),
                                "max": float(gap.max())}
        print(f"{name:>28}: batch 1 vs batch 64, per-choice |Δ log-lik| median {np.median(gap):.2e}, "
              f"max {gap.max():.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / ("kv_float_sensitivity.json" if args.dtype == "float32" else f"kv_float_sensitivity_{args.dtype}.json")
    target.write_text(json.dumps(report, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
