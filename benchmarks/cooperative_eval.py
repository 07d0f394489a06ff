"""Several processes on one job: do they share the work, score each item once, and survive a killed worker?

Runs ``quantcal eval`` on the first N items of a task (default: piqa 400, the bundled SmolLM2), each process with one
torch thread (OMP_NUM_THREADS=1), three ways on fresh stores:

1. one process alone;
2. two processes started together on the same store;
3. two processes, one killed (SIGKILL) once a tenth of the items are stored.

Reports wall time (process start to last exit), the speed-up of 2 over 1, item and row counts (each item once), and
the largest log-likelihood difference to the single-process store. Writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/cooperative_eval.py --data-file ../shared/data/piqa/validation.jsonl --task piqa
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command(args: argparse.Namespace, store: Path) -> list[str]:
    return [sys.executable, "-m", "quantcal.cli", "eval", "--model", args.model, "--task", args.task, "--data-file",
            str(args.data_file), "--limit", str(args.limit), "--store", str(store), "--name", "v",
            "--batch-size", str(args.batch_size)]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def rows(store: Path) -> tuple[int, int, dict[tuple[str, int], float]]:
    with sqlite3.connect(store) as db:
        scores = {(i, c): ll for i, c, ll in db.execute("SELECT item_id, choice, loglik FROM scores")}
        return db.execute("SELECT COUNT(*) FROM items").fetchone()[0], len(scores), scores


def run(args: argparse.Namespace, store: Path, workers: int, kill_after: int | None = None) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(command(args, store), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    if kill_after is not None:
        while procs[0].poll() is None:
            time.sleep(0.2)
            try:
                if store.exists() and rows(store)[0] >= kill_after:
                    break
            except sqlite3.Error:
                continue
        os.kill(procs[0].pid, signal.SIGKILL)
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - start
    survivors = codes[1:] if kill_after is not None else codes
    if any(survivors):
        raise SystemExit(f"a worker failed: {[p.stderr.read()[-2000:] for p in procs]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="piqa")
    parser.add_argument("--data-file", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/piqa/validation.jsonl")
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "cooperative_eval_smollm2.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run(args, work / "warm.sqlite", 1)  # builds the model cache, so no timed run pays for it
        single = run(args, work / "one.sqlite", 1)
        pair = run(args, work / "two.sqlite", 2)
        killed = run(args, work / "killed.sqlite", 2, kill_after=args.limit // 10)
        n1, r1, s1 = rows(work / "one.sqlite")
        n2, r2, s2 = rows(work / "two.sqlite")
        n3, r3, s3 = rows(work / "killed.sqlite")
    result = {
        "model": args.model, "task": args.task, "items": args.limit, "batch_size": args.batch_size,
        "threads_per_process": 1, "cpus": os.cpu_count(),
        "seconds": {"one_process": round(single, 2), "two_processes": round(pair, 2),
                    "two_processes_one_killed": round(killed, 2)},
        "speedup_two_vs_one": round(single / pair, 3),
        "items_and_rows": {"one_process": [n1, r1], "two_processes": [n2, r2], "one_killed": [n3, r3]},
        "max_abs_loglik_diff_vs_one_process": {
            "two_processes": max(abs(s2[k] - v) for k, v in s1.items()),
            "one_killed": max(abs(s3[k] - v) for k, v in s1.items())},
    }
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
