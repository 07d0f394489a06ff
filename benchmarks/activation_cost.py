"""What simulating a deployment format's run-time part costs on CPU: the same items scored by the packed scorer with
the float reference and with each format (activation quantizers on every block linear, or a KV-cache rounding),
in one process, interleaved ``--rounds`` times; prints each format's median time and its ratio to the reference's,
and writes JSON.

    python benchmarks/activation_cost.py --data-file ../shared/data/piqa/validation.jsonl --limit 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

DEFAULT_RECIPES = ["fp8", "w8a8", "nvfp4:nsamples=16", "mxfp4", "kv:fp8", "kv:int8,scale=calibrated,per=head"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="piqa")
    parser.add_argument("--data-file", required=True)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recipes", default=";".join(DEFAULT_RECIPES), help="';'-separated recipes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "activation_cost.json")
    args = parser.parse_args()

    import torch

    from quantcal.engines.encoding import Encoder
    from quantcal.engines.hf_scorer import iter_flat, score_items
    from quantcal.sources.models import resolve_source
    from quantcal.tasks import get_task, load_items
    from quantcal.variants.definition import VariantDef, load_variant_model

    torch.set_grad_enabled(False)
    recipes = [r.strip() for r in args.recipes.split(";") if r.strip()]
    source = resolve_source(args.model)
    models = {"reference": load_variant_model(VariantDef(args.model), source)}
    for recipe in recipes:
        models[recipe] = load_variant_model(VariantDef(args.model, recipe), source)
    items = load_items(get_task(args.task), args.data_file, args.limit)
    window = getattr(models["reference"].model.config, "max_position_embeddings", None) or 2048
    encoded = [Encoder(models["reference"].tokenizer, window).encode_item(i, it, " ") for i, it in enumerate(items)]
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, lm in models.items():
            start = time.perf_counter()
            for _ in iter_flat(score_items(lm.model, encoded, batch_size=64)):
                pass
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["reference"])
    rows = {name: {"median_s": statistics.median(t), "ratio": statistics.median(t) / base, "runs_s": t}
            for name, t in times.items()}
    for name, row in rows.items():
        print(f"{name:40s} {row['median_s']:7.2f} s  x{row['ratio']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                                    "cpus": os.cpu_count(), "load_average": os.getloadavg(), "model": args.model,
                                    "task": args.task, "items": len(items), "rounds": args.rounds, "rows": rows},
                                   indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
