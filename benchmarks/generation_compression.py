"""What compression does to the confidence of generated answers: the bundled model and its compressed variants
answer the same free-text questions; per variant, exact match and each confidence measure's calibration, and the
paired differences to the reference (quantcal.compare_generations).

    python benchmarks/generation_compression.py [--variants rtn4=rtn:bits=4,group_size=64,fp8=fp8] [--limit N]

Data: the two files of generation_parity.py (written for quantcal's benchmarks; GSM8K and TriviaQA schemas).
Writes ``benchmarks/results/generation_compression_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = {"gsm8k": HERE / "data" / "gsm8k_format.jsonl", "triviaqa": HERE / "data" / "triviaqa_format.jsonl"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--variants", default="rtn4=rtn:bits=4,group_size=64;fp8=fp8",
                        help="NAME=RECIPE pairs separated by ';'")
    parser.add_argument("--tasks", default="gsm8k,triviaqa")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--samples", type=int, default=3, help="sampled answers per item for conf_consistency (triviaqa)")
    parser.add_argument("--store", type=Path, default=Path("/tmp/quantcal-generation-compression.sqlite"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    import quantcal

    variants = {"reference": None} | dict(v.split("=", 1) for v in args.variants.split(";") if v)
    report: dict = {"model": args.model, "variants": variants, "tasks": {}}
    for task in args.tasks.split(","):
        samples = args.samples if task == "triviaqa" else 0  # gsm8k's long answers make k samples costly on CPU
        block: dict = {"variants": {}, "paired": {}}
        for name, recipe in variants.items():
            start = time.perf_counter()
            r = quantcal.evaluate_generation(args.model, task, recipe=recipe, name=name, data_file=FILES[task],
                                             limit=args.limit, store=args.store, p_true=True, samples=samples,
                                             temperature=0.7, dtype="float32", progress=None)
            block["variants"][name] = {"n": r.n, "exact_match": r.acc, "seconds": time.perf_counter() - start,
                                       "confidences": {c: {m: iv.to_json() for m, iv in ms.items()}
                                                       for c, ms in r.metrics.items()}}
            line = ", ".join(f"{c.removeprefix('conf_')} ECE {ms['ece'].estimate:.3f} AUROC {ms['auroc'].estimate:.3f}"
                             for c, ms in r.metrics.items())
            print(f"{task} · {name}: n={r.n}, exact match {r.acc:.3f}; {line}", flush=True)
            if recipe is not None:
                c = quantcal.compare_generations(args.store, "reference", name, task,
                                                 p_true=True, samples=samples, temperature=0.7)
                block["paired"][name] = c.to_json()
                sig = [f"{conf.removeprefix('conf_')} {m} {iv}" for conf, ms in c.differences.items()
                       for m, iv in ms.items() if iv.excludes_zero]
                print(f"  vs reference: {c.changed_answers} answers changed ({c.right_to_wrong} right->wrong, "
                      f"{c.wrong_to_right} wrong->right); intervals excluding 0: {'; '.join(sig) or 'none'}", flush=True)
        report["tasks"][task] = block
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"generation_compression_{args.model}.json"
    target.write_text(json.dumps(report, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
