"""A sensitivity run with depth replay against the same run without it: same items, same store layout, timed apart.

    python benchmarks/depth_replay.py --model smollm2-135m-instruct --recipe rtn:bits=3,group_size=64 \
        --task piqa=../shared/data/piqa/validation.jsonl --limit 80 --unit block

Each run goes to its own fresh folder, one after the other (never side by side). The recipe is built before either
is timed (the variant cache), so the times are scoring only: the reference, the full recipe and every unit, plus,
with replay, the one recording pass. Every stored per-choice log-likelihood and greedy flag of the two runs must be
equal bit for bit (checked here; the script exits 1 otherwise), so the ratio is the price of the same numbers.
Writes ``results/depth_replay_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _scores(folder: Path) -> dict:
    with sqlite3.connect(folder / "sensitivity.sqlite") as db:
        rows = db.execute("SELECT r.variant, s.item_id, s.choice, s.loglik, s.greedy FROM scores s "
                          "JOIN runs r ON r.run_id = s.run_id").fetchall()
    return {(v, i, c): (ll, g) for v, i, c, ll, g in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--recipe", default="rtn:bits=3,group_size=64")
    parser.add_argument("--task", required=True, help="NAME=FILE (or a comma list)")
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--unit", default="block")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    import torch

    from quantcal import api
    from quantcal.sources.models import resolve_source
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.build import build_variant

    build_variant(resolve_source(args.model), parse_recipe(args.recipe))
    seconds, data = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for replay in (False, True):
            folder = Path(tmp) / ("replay" if replay else "plain")
            start = time.perf_counter()
            result = api.run_sensitivity(args.model, args.recipe, args.task, limit=args.limit, unit=args.unit,
                                         out=folder, resamples=200, replay=replay)
            seconds[replay] = time.perf_counter() - start
            data[replay] = result.data
            print(f"replay={replay}: {seconds[replay]:.1f} s", flush=True)
        plain, replayed = _scores(Path(tmp) / "plain"), _scores(Path(tmp) / "replay")
    differing = sum(plain[k] != replayed.get(k) for k in plain)
    report = {
        "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "model": args.model, "recipe": args.recipe,
        "task": args.task, "limit": args.limit, "unit": args.unit, "units": len(data[True]["units"]),
        "seconds_plain": seconds[False], "seconds_replay": seconds[True],
        "speedup": seconds[False] / seconds[True], "replay": data[True]["replay"],
        "scores_compared": len(plain), "scores_differing": differing, "same_keys": plain.keys() == replayed.keys(),
    }
    print(json.dumps(report, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"depth_replay_{args.model}.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0 if differing == 0 and report["same_keys"] else 1


if __name__ == "__main__":
    sys.exit(main())
