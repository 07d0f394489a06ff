"""How fast the CLI answers the commands that compute nothing: ``--version``, ``--help``, every subcommand's
``--help``, ``tasks``, ``models``, ``recipes``, ``metrics --list``, and an argument error. Each is run ``--repeat``
times as a fresh process (the way a user types it); the median and the slowest are printed and written to JSON, with
``python -c "import quantcal"`` and ``python -c "import torch"`` measured in the same run as the yardsticks.

    python benchmarks/cli_startup.py [--repeat 5] [--out benchmarks/results/cli_startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUICK = [["--version"], ["--help"], ["tasks"], ["models"], ["recipes"], ["metrics", "--list"], ["cache", "--help"],
         ["eval", "--no-such-flag"], ["eval", "--limit", "many"]]
SUBCOMMANDS = ["eval", "quantize", "finetune", "recipes", "export", "metrics", "compare", "run", "report",
               "import-lm-eval", "tasks", "models", "sensitivity", "merge-sensitivity", "export-checkpoint",
               "export-model", "cache"]


def timed(argv: list[str], repeat: int) -> dict[str, float | int]:
    """Median and slowest wall time of ``argv`` as a fresh process, and its exit code."""
    times, code = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "COLUMNS": "100"})
        times.append(time.perf_counter() - start)
        code = done.returncode
    return {"median_s": statistics.median(times), "max_s": max(times), "exit_code": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cli_startup.json")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "quantcal.cli"]
    rows: dict[str, dict[str, float | int]] = {}
    for label, argv in ([("import quantcal", [sys.executable, "-c", "import quantcal"]),
                         ("import torch", [sys.executable, "-c", "import torch"])]
                        + [("quantcal " + " ".join(a), cli + a) for a in QUICK]
                        + [(f"quantcal {c} --help", cli + [c, "--help"]) for c in SUBCOMMANDS]):
        rows[label] = timed(argv, args.repeat)
        print(f"{label:42s} median {rows[label]['median_s']:.2f} s  max {rows[label]['max_s']:.2f} s  "
              f"exit {rows[label]['exit_code']}")
    commands = [r for k, r in rows.items() if k.startswith("quantcal")]
    summary = {"slowest_command_median_s": max(r["median_s"] for r in commands),
               "commands_under_1s": sum(r["median_s"] < 1.0 for r in commands), "commands": len(commands)}
    print(f"slowest command (median): {summary['slowest_command_median_s']:.2f} s; "
          f"{summary['commands_under_1s']} of {summary['commands']} under 1 s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                                    "cpus": os.cpu_count(), "load_average": os.getloadavg(), "repeat": args.repeat,
                                    "summary": summary, "timings": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
