"""Exported (deployable) variants against the simulated ones they come from, on real items.

For each recipe: ``quantcal.export_model`` writes the bundled model's variant as a compressed-tensors pack-quantized
checkpoint (integer recipes), float-/int-quantized checkpoint (``fp8``, ``w8a8``) or in transformers' bitsandbytes
serialization (``bnb``); both the simulated variant
(float safetensors) and the exported checkpoint (loaded by transformers from the packed codes and scales) score the
same items; the script reports the share of per-choice
log-likelihoods within 1e-3, the largest gap, both accuracies, and the on-disk bits per weight of the packed layers
next to the variant's recorded bits per weight.

    python benchmarks/packed_export.py --data ../shared/data --limit 100 --work /tmp/packed
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RECIPES = {
    "rtn-w4-g64-sym": "rtn:bits=4,group_size=64,sym=true",
    "rtn-w4-g64": "rtn:bits=4,group_size=64",
    "gptq-w4-g64": "gptq:bits=4,group_size=64,nsamples=16",
    "awq-w4-g64": "awq:bits=4,group_size=64,nsamples=16",
    "bnb-nf4": "bnb:nf4",
    "bnb-int8": "bnb:int8",  # LLM.int8()'s module rounds activations to float16: not the weights-only simulation
    # weights and activations: compressed-tensors float-/int-quantized (the loader quantizes the activations)
    "fp8": "fp8",
    "fp8-block128": "fp8:weights=block128",  # compressed-tensors block strategy, partial tiles padded
    "w8a8": "w8a8",
    "w8a8-sq": "w8a8:smoothquant=0.5,nsamples=16",
}
TASKS = ("piqa", "hellaswag", "openbookqa", "boolq")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--work", type=Path, default=Path("/tmp/quantcal-packed"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import quantcal
    from quantcal.cli.common import quiet_transformers

    quiet_transformers()
    tasks = args.tasks.split(",")
    files = {t: next((args.data / t).glob("validation*.jsonl"), None) or next((args.data / t).glob("test*.jsonl")) for t in tasks}
    rows = {}
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        target = args.work / name
        exported = (quantcal.export_model(args.model, recipe, target, say=print) if not (target / "config.json").is_file()
                    else None)
        record = json.loads((target / "quantcal-variant.json").read_text())
        variant = quantcal.quantize(args.model, recipe)
        row = {"recipe": recipe, "bits_per_weight": variant.bits_per_weight,
               "bits_per_weight_on_disk": record["export"]["bits_per_weight_on_disk"], "tasks": {}}
        for task in tasks:
            frames = {}
            for kind, model, spec in (("simulated", args.model, recipe), ("packed", str(target), None)):
                store = args.work / f"{name}-{kind}.sqlite"  # simulated: the recipe with its run-time part
                quantcal.evaluate(model, task, recipe=spec, data_file=files[task], limit=args.limit, store=store,
                                  name=kind, dtype="float32")
                items = quantcal.load_items(store)
                frames[kind] = items[items.task == task].sort_values("position")
            a = np.concatenate([np.asarray(x, float) for x in frames["simulated"].logliks])
            b = np.concatenate([np.asarray(x, float) for x in frames["packed"].logliks])
            gap = np.abs(a - b)
            row["tasks"][task] = {"items": len(frames["packed"]), "choices": int(gap.size),
                                  "share_within_1e-3": float(np.mean(gap <= 1e-3)), "max_gap": float(gap.max()),
                                  "acc_simulated": float(frames["simulated"].correct.mean()),
                                  "acc_packed": float(frames["packed"].correct.mean())}
            print(name, task, json.dumps(row["tasks"][task]))
        rows[name] = row
        del exported
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"packed_export_{args.model}.json"
    previous = json.loads(out.read_text()) if out.is_file() else {}
    if previous.get("limit") == args.limit:  # a run of some recipes adds to (or replaces) those rows only
        rows = {**previous.get("results", {}), **rows}
    out.write_text(json.dumps({"model": args.model, "limit": args.limit, "results": rows}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
