"""What running a shared prompt prefix once saves in generation: the same GSM8K-format prompts, each with the same
fixed few-shot examples (as lm-eval's gsm8k_cot and every ``first_n`` task build them), generated greedily with and
without prefix sharing (``generate_greedy(share_prefix=...)``), interleaved ``--rounds`` times in one process;
prints the median items/s of each and their ratio, checks the answers are identical, and writes JSON.

    python benchmarks/generation_prefix.py --limit 24 --shots 5 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "generation_prefix.json")
    args = parser.parse_args()

    import torch

    from quantcal.engines.generator import generate_greedy
    from quantcal.sources.models import load_model, resolve_source
    from quantcal.tasks.data_files import read_local_rows
    from quantcal.tasks.generation_tasks import GENERATION_TASKS

    torch.set_grad_enabled(False)
    task = GENERATION_TASKS["gsm8k"]
    rows = read_local_rows(HERE / "data" / "gsm8k_format.jsonl")
    shots, questions = rows[:args.shots], rows[args.shots:args.shots + args.limit]
    prefix = task.fewshot_delimiter.join(task.text(r.data) + task.target_delimiter + task.fewshot_target(r.data)
                                         for r in shots)
    loaded = load_model(resolve_source(args.model), "float32", "cpu")
    prompts = [loaded.tokenizer(prefix + task.fewshot_delimiter + task.text(r.data))["input_ids"] for r in questions]
    times: dict[str, list[float]] = {"shared": [], "whole": []}
    answers: dict[str, list] = {}
    for _ in range(args.rounds):
        for name, share in (("shared", True), ("whole", False)):
            start = time.perf_counter()
            out = generate_greedy(loaded.model, loaded.tokenizer, prompts, task.until, args.max_new_tokens,
                                  args.batch_size, share_prefix=share)
            times[name].append(time.perf_counter() - start)
            answers[name] = [g.tokens for g in out]
    same = sum(a == b for a, b in zip(answers["shared"], answers["whole"]))
    rate = {name: len(prompts) / statistics.median(t) for name, t in times.items()}
    result = {"model": args.model, "items": len(prompts), "shots": args.shots, "max_new_tokens": args.max_new_tokens,
              "batch_size": args.batch_size, "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts),
              "items_per_s": rate, "speedup": rate["shared"] / rate["whole"], "identical_answers": same,
              "runs_s": times, "machine": platform.processor() or platform.machine()}
    print(f"{len(prompts)} prompts of {result['prompt_tokens_mean']:.0f} tokens ({args.shots} fixed shots): "
          f"shared prefix {rate['shared']:.2f} items/s, whole prompts {rate['whole']:.2f} items/s "
          f"(x{result['speedup']:.2f}); identical answers {same}/{len(prompts)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
