"""How long every metric with a 1000-resample bootstrap takes on n = 10,000 items, k = 4 choices.

    python benchmarks/metrics_speed.py [--n 10000] [--k 4] [--resamples 1000]

Prints per-metric seconds and the total, and writes benchmarks/results/metrics_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "metrics_speed.json")
    args = parser.parse_args()

    from quantcal.metrics import METRICS, as_inputs, bootstrap_all

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(args.n, args.k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (rng.random((args.n, 1)) > probs.cumsum(1)).sum(1)
    d = as_inputs(probs, labels)

    per_metric = {}
    for name in METRICS:
        start = time.perf_counter()
        bootstrap_all([name], d, n_resamples=args.resamples)
        per_metric[name] = time.perf_counter() - start
    start = time.perf_counter()
    intervals = bootstrap_all(None, d, n_resamples=args.resamples)
    total = time.perf_counter() - start

    for name, seconds in per_metric.items():
        iv = intervals[name]
        print(f"{name:<20} {seconds:7.3f} s   {iv.estimate:.4f} [{iv.low:.4f}, {iv.high:.4f}]")
    print(f"{'all metrics':<20} {total:7.3f} s   (n={args.n}, k={args.k}, {args.resamples} resamples, one shared draw)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "n": args.n, "k": args.k, "resamples": args.resamples, "seconds_total": total, "seconds_per_metric": per_metric,
    }, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
