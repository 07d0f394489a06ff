"""Build recipes on a bundled model and score them on real data: build time, bits per weight, layer error,
accuracy and ECE next to the reference.

    python benchmarks/recipe_sanity.py --model smollm2-135m-instruct --data-dir ../shared/data \
        --tasks piqa --recipes rtn:bits=8,group_size=64 rtn:bits=4,group_size=64 ...

Writes benchmarks/results/recipe_sanity_<model>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

FILES = {"piqa": "piqa/validation.jsonl", "hellaswag": "hellaswag/validation.jsonl",
         "boolq": "boolq/validation.jsonl", "openbookqa": "openbookqa/test.jsonl"}
DEFAULT_RECIPES = ["rtn:bits=8,group_size=64", "rtn:bits=4,group_size=64", "rtn:bits=2,group_size=64",
                   "gptq:bits=4,group_size=64", "gguf:q8_0", "gguf:q4_0", "bnb:nf4", "bnb:int8",
                   "awq:bits=4,group_size=64", "hqq:bits=4,group_size=64", "quanto:qint8", "quanto:qint4",
                   "gguf:q4_k", "gguf:q6_k"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    parser.add_argument("--tasks", nargs="*", default=["piqa"], help="none: build the variants only")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES)
    parser.add_argument("--store", type=Path, default=Path("benchmarks/work/recipe_sanity.sqlite"))
    args = parser.parse_args()

    from quantcal.study.jobs import Job, ScoringOptions, run_job
    from quantcal.metrics import ece
    from quantcal.sources.models import resolve_source
    from quantcal.analysis.predictions import predictions, task_summary
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.build import build_variant, variant_meta
    from quantcal.store.database import open_store
    from quantcal.variants.definition import VariantDef, prepare
    from quantcal.tasks import get_task

    source = resolve_source(args.model)
    options = ScoringOptions()
    rows = []
    with open_store(args.store) as store:
        for recipe in [None, *args.recipes]:
            spec = parse_recipe(recipe) if recipe else None
            entry: dict = {"recipe": spec.key if spec else "reference"}
            if spec is not None:
                start = time.perf_counter()
                meta = variant_meta(build_variant(source, spec))
                entry.update(build_seconds=meta["build_seconds"], wall_seconds_first_call=time.perf_counter() - start,
                             bits_per_weight=meta["bits_per_weight"], mean_layer_error=meta["mean_layer_error"],
                             **{k: meta[k] for k in ("gguf_type_counts", "quanto_group_sizes") if k in meta})
            holder = prepare(VariantDef(args.model, recipe), source=source).holder
            name = f"{source.name}/{spec.slug}" if spec else source.name
            for task in args.tasks:
                job = Job(name, source, get_task(task), str(args.data_dir / FILES[task]), args.limit,
                          extra_config={"recipe": spec.key} if spec else {})
                outcome = run_job(store, job, options, holder)
                scored = store.scored_items(outcome.run_id)
                summary = task_summary(scored)
                preds = predictions(scored)
                entry[task] = {"n": len(scored), "acc": summary["acc"], "acc_norm": summary["acc_norm"],
                               "ece": ece(preds.probs, preds.labels), "scoring_seconds": outcome.seconds}
            rows.append(entry)
            print(json.dumps(entry), flush=True)
    out = Path(__file__).resolve().parent / "results" / f"recipe_sanity_{args.model}.json"
    out.write_text(json.dumps({"model": args.model, "tasks": args.tasks, "limit": args.limit, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
