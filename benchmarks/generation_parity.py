"""quantcal's generated answers against lm-evaluation-harness's ``generate_until`` on the same local files and
checkpoint, in one run: identical greedy generations (share, and each difference shown), the same exact match per
item, and items per second of each (lm-eval: only its ``generate_until`` is timed; quantcal: generating and storing),
with peak memory.

    python benchmarks/generation_parity.py --limit 30 [--tasks gsm8k,triviaqa] [--lm-eval-python PY]

Data: ``benchmarks/data/gsm8k_format.jsonl`` (templated word problems in GSM8K's main schema, with ``#### N``
answers) and ``benchmarks/data/triviaqa_format.jsonl`` (40 hand-written questions in TriviaQA rc.nocontext's schema
with aliases), written for this benchmark. lm-eval reads them through task YAMLs that copy its own gsm8k / triviaqa
YAMLs with ``dataset_path: json`` (few-shot examples from the same file, the item left out, as quantcal does).
Writes ``benchmarks/results/generation_parity_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak_memory import peak_mb  # benchmarks/peak_memory.py

HERE = Path(__file__).resolve().parent
FILES = {"gsm8k": HERE / "data" / "gsm8k_format.jsonl", "triviaqa": HERE / "data" / "triviaqa_format.jsonl"}



def task_yaml(task: str, data: Path) -> str:
    """lm-eval's own YAML of ``task`` with its data read from ``data`` (few-shot from the same split)."""
    import lm_eval

    source = Path(lm_eval.__file__).parent / "tasks" / task / ("gsm8k.yaml" if task == "gsm8k" else "default.yaml")
    lines = []
    for line in source.read_text().splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("dataset_path", "dataset_name", "training_split", "validation_split", "test_split", "fewshot_split",
                   "tag", "task") or line.startswith("  - math_word_problems"):
            continue
        lines.append(line)
    head = [f"task: local_{task}", "dataset_path: json", f"dataset_kwargs:\n  data_files:\n    test: {data}",
            "test_split: test", "fewshot_split: test"]
    return "\n".join(head + lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tasks", default="gsm8k,triviaqa")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16, help="quantcal's batch (its default: 16)")
    parser.add_argument("--lm-eval-batch-size", default="1", help="lm-eval's batch size (its default: 1)")
    parser.add_argument("--lm-eval-python", default=sys.executable)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    import quantcal
    from quantcal.sources.models import dequantized_gguf_copy, resolve_source

    source = resolve_source(args.model)
    checkpoint = dequantized_gguf_copy(source) if source.kind in ("bundled", "gguf") else Path(source.location)
    report: dict = {"model": args.model, "limit": args.limit, "tasks": {}}
    for task in args.tasks.split(","):
        fewshot = 5 if task == "gsm8k" else 0
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "yamls").mkdir()
            (tmp / "yamls" / f"local_{task}.yaml").write_text(task_yaml(task, FILES[task]))
            spec = {"checkpoint": str(checkpoint), "task": f"local_{task}", "yaml_dir": str(tmp / "yamls"),
                    "limit": args.limit, "num_fewshot": fewshot, "batch_size": args.lm_eval_batch_size, "dtype": "float32"}
            (tmp / "spec.json").write_text(json.dumps(spec))
            subprocess.run([args.lm_eval_python, str(HERE / "lm_eval_generate_worker.py"), str(tmp / "spec.json"),
                            str(tmp / "out.json")], check=True)
            theirs = json.loads((tmp / "out.json").read_text())
            start = time.perf_counter()
            ours = quantcal.evaluate_generation(args.model, task, data_file=FILES[task], limit=args.limit,
                                                num_fewshot=fewshot, batch_size=args.batch_size,
                                                store=tmp / "q.sqlite", progress=None, dtype="float32")
            seconds = time.perf_counter() - start
            items = ours.items()
        same = [a == b for a, b in zip(items.generation, theirs["generations"])]
        their_filter = next(iter(f for f in theirs["exact_match"] if f in ours.filter), None) or sorted(theirs["exact_match"])[0]
        their_em = theirs["exact_match"][their_filter]
        em_same = [bool(a) == bool(b) for a, b in zip(items.correct, their_em)]
        report["tasks"][task] = {
            "items": len(same), "num_fewshot": fewshot, "identical_generations": sum(same) / len(same),
            "differences": [{"item": int(i), "quantcal": items.generation[i], "lm_eval": theirs["generations"][i]}
                            for i, s in enumerate(same) if not s],
            "exact_match_quantcal": ours.acc, "exact_match_lm_eval": sum(their_em) / len(their_em),
            "filter": ours.filter, "same_exact_match_per_item": sum(em_same) / len(em_same),
            "quantcal_items_per_s": len(same) / ours.seconds if ours.seconds else None,
            "quantcal_seconds_generating": ours.seconds, "quantcal_seconds_total": seconds,
            "lm_eval_items_per_s": theirs["requests"] / theirs["seconds"], "lm_eval_seconds": theirs["seconds"],
            "speed_ratio": (len(same) / ours.seconds) / (theirs["requests"] / theirs["seconds"]) if ours.seconds else None,
            "peak_rss_mb_lm_eval": theirs["peak_rss_mb"],
            "confidences": {c: {m: iv.to_json() for m, iv in ms.items()} for c, ms in ours.metrics.items()},
        }
        r = report["tasks"][task]
        print(f"{task}: {r['items']} items, identical generations {r['identical_generations']:.1%}, same exact match "
              f"{r['same_exact_match_per_item']:.1%} (quantcal {r['exact_match_quantcal']:.3f}, lm-eval "
              f"{r['exact_match_lm_eval']:.3f}); items/s quantcal {r['quantcal_items_per_s']:.2f} vs lm-eval "
              f"{r['lm_eval_items_per_s']:.2f} (x{r['speed_ratio']:.2f})")
    report["peak_rss_mb_quantcal"] = peak_mb()
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"generation_parity_{args.model}.json"
    target.write_text(json.dumps(report, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
