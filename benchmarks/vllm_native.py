"""An integer variant scored through vLLM's quantized kernel (``mode=native``, ``--backend vllm``) against the same
variant simulated in float32 and in bfloat16, on real items.

vLLM's CPU build runs compressed-tensors int4 checkpoints in bfloat16 only, so the kernel cannot be compared with
the float32 simulation to 1e-3; what this measures is whether its gap is bfloat16 rounding (as large as the
simulated weights' own bfloat16 gap) or something else. Run it in the environment that has vLLM:

    /work/vllm-env/bin/python benchmarks/vllm_native.py --data ../shared/data --limit 100 --work /tmp/vllm-native
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

RUNS = {  # name: (recipe suffix, backend, dtype)
    "hf-simulated-float32": ("", "hf", "float32"),
    "hf-native-float32": (",mode=native", "hf", "float32"),
    "hf-simulated-bfloat16": ("", "hf", "bfloat16"),
    "vllm-simulated-bfloat16": ("", "vllm", "bfloat16"),
    "vllm-native-bfloat16": (",mode=native", "vllm", "bfloat16"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--recipe", default="rtn:bits=4,group_size=64,sym=true")
    parser.add_argument("--task", default="piqa")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("/tmp/quantcal-vllm-native"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import quantcal
    from quantcal.cli.common import quiet_transformers

    quiet_transformers()
    data = next((args.data / args.task).glob("validation*.jsonl"))
    logliks, acc = {}, {}
    for name, (suffix, backend, dtype) in RUNS.items():
        store = args.work / f"{name}.sqlite"
        quantcal.evaluate(args.model, args.task, data_file=data, limit=args.limit, store=store, backend=backend,
                          dtype=dtype, recipe=args.recipe + suffix)
        items = quantcal.load_items(store).sort_values("position")
        logliks[name] = np.concatenate([np.asarray(x, float) for x in items.logliks])
        acc[name] = float(items.correct.mean())
        print(f"{name}: acc {acc[name]:.3f}", flush=True)
    pairs = {}
    for a, b in itertools.combinations(RUNS, 2):
        gap = np.abs(logliks[a] - logliks[b])
        pairs[f"{a} vs {b}"] = {"median": float(np.median(gap)), "p95": float(np.quantile(gap, 0.95)),
                                "max": float(gap.max()), "share_within_1e-3": float(np.mean(gap <= 1e-3))}
        print(f"{a:>24} vs {b:<24} median {np.median(gap):.3f} p95 {np.quantile(gap, .95):.3f} max {gap.max():.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    slug = args.recipe.replace(":", "-").replace(",", "-").replace("=", "")
    out = args.out / f"vllm_native_{args.model}_{args.task}_{slug}_cpu.json"
    out.write_text(json.dumps({"model": args.model, "recipe": args.recipe, "task": args.task, "limit": args.limit,
                               "choices": int(logliks["hf-simulated-float32"].size), "accuracy": acc,
                               "per_choice_loglik_gaps": pairs}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
