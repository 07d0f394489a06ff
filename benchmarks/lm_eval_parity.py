"""Parity with lm-evaluation-harness: same model, same files, same items -> same log-likelihoods and accuracies.

Runs lm-eval 0.4.x (in its own virtual environment, given by --lm-eval-python) on local copies of the
benchmarks in hub schema, through task YAMLs that include lm-eval's own task definitions and only point
``dataset_path: json`` at the local file. quantcal scores the same items with the same checkpoint (the
dequantized safetensors copy of the bundled GGUF). Prints a side-by-side table and writes
``benchmarks/results/lm_eval_parity_<model>.json``.

    python benchmarks/lm_eval_parity.py --model smollm2-135m-instruct --data-dir ../shared/data \
        --lm-eval-python /path/to/lm-eval-venv/bin/python --limit hellaswag=1000,boolq=1000
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TASK_FILES = {
    "piqa": ("piqa/validation.jsonl", "piqa/piqa.yaml"),
    "boolq": ("boolq/validation.jsonl", "super_glue/boolq/default.yaml"),
    "openbookqa": ("openbookqa/test.jsonl", "openbookqa/openbookqa.yaml"),
    "hellaswag": ("hellaswag/validation.jsonl", "hellaswag/hellaswag.yaml"),
}


def lm_eval_tasks_dir(python: str) -> Path:
    out = subprocess.run([python, "-c", "import lm_eval, os; print(os.path.dirname(lm_eval.__file__))"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip()) / "tasks"


def write_task_yamls(folder: Path, files: dict[str, tuple[Path, str]], tasks_dir: Path,
                     fewshot_files: dict[str, Path] | None = None, names: dict[str, str] | None = None) -> None:
    """One ``local_<task>.yaml`` per task: lm-eval's own task file, reading ``files[task] = (data file, yaml)``.

    Few-shot examples come from ``fewshot_files[task]`` (the ``dev`` split) when given, else from the evaluation
    file itself (``fewshot_split: test``: lm-eval then leaves the item out of its own examples). ``names[task]``
    renames a task's YAML (``local_<name>``), e.g. to hold the same task at two few-shot settings."""
    for task, (data, yaml_rel) in files.items():
        dev = (fewshot_files or {}).get(task)
        splits = {"test": str(Path(data).resolve())} | ({"dev": str(Path(dev).resolve())} if dev else {})
        text = "\n".join([
            f"include: {tasks_dir / yaml_rel}",
            f"task: local_{(names or {}).get(task, task)}",
            "tag: []",
            "dataset_path: json",
            "dataset_name: null",
            f"dataset_kwargs: {{data_files: {json.dumps(splits)}}}",
            "training_split: null",
            "validation_split: null",
            "test_split: test",
            f"fewshot_split: {'dev' if dev else 'test'}",
            "",
        ])
        (folder / f"local_{(names or {}).get(task, task)}.yaml").write_text(text)


def run_lm_eval(python: str, checkpoint: Path, tasks: list[str], limits: dict[str, int | None], yaml_dir: Path,
                out_dir: Path, batch_size: int, extra: list[str] | None = None) -> dict[str, float]:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    seconds: dict[str, float] = {}
    for task in tasks:
        cmd = [python, "-m", "lm_eval", "--model", "hf",
               "--model_args", f"pretrained={checkpoint},dtype=float32",
               "--tasks", f"local_{task}", "--include_path", str(yaml_dir), "--batch_size", str(batch_size),
               "--device", "cpu", "--log_samples", "--output_path", str(out_dir / task)]
        if limits.get(task):
            cmd += ["--limit", str(limits[task])]
        cmd += extra or []
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds[task] = time.perf_counter() - start
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"lm-eval failed on {task}")
    return seconds


def read_lm_eval(out_dir: Path, task: str) -> tuple[dict[int, list[float]], dict[str, float]]:
    samples_file = glob.glob(str(out_dir / task / "**" / f"samples_local_{task}_*.jsonl"), recursive=True)[-1]
    results_file = glob.glob(str(out_dir / task / "**" / "results_*.json"), recursive=True)[-1]
    lls: dict[int, list[float]] = {}
    with open(samples_file) as handle:
        for line in handle:
            s = json.loads(line)
            lls[int(s["doc_id"])] = [float(r[0][0]) for r in s["resps"]]
    res = json.load(open(results_file))["results"][f"local_{task}"]
    metrics = {k.split(",")[0]: v for k, v in res.items() if k.startswith(("acc,", "acc_norm,"))}
    return lls, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--lm-eval-python", required=True, help="python of the virtual environment where lm-eval is installed")
    parser.add_argument("--tasks", default="piqa,boolq,openbookqa,hellaswag")
    parser.add_argument("--limit", default="", help="per task, e.g. hellaswag=1000,boolq=1000 (or one number for all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", type=Path, default=None, help="keep lm-eval outputs here")
    parser.add_argument("--output", type=Path, default=None, help="report path (default benchmarks/results/lm_eval_parity_<model>.json)")
    args = parser.parse_args()

    from quantcal.study.jobs import Job, ScoringOptions, run_job
    from quantcal.sources.models import dequantized_gguf_copy, resolve_source
    from quantcal.analysis.predictions import task_summary
    from quantcal.store.database import open_store
    from quantcal.tasks import get_task
    from quantcal.variants.definition import VariantDef, prepare

    tasks = [t for t in args.tasks.split(",") if t]
    limits: dict[str, int | None] = {t: None for t in tasks}
    if args.limit.isdigit():
        limits = {t: int(args.limit) for t in tasks}
    elif args.limit:
        for part in args.limit.split(","):
            k, v = part.split("=")
            limits[k] = int(v)
    work = args.work or Path(tempfile.mkdtemp(prefix="quantcal-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    source = resolve_source(args.model)
    checkpoint = dequantized_gguf_copy(source) if source.gguf_file else Path(source.location)
    yaml_dir = work / "yaml"
    yaml_dir.mkdir(exist_ok=True)
    write_task_yamls(yaml_dir, {t: (args.data_dir / TASK_FILES[t][0], TASK_FILES[t][1]) for t in tasks},
                     lm_eval_tasks_dir(args.lm_eval_python))

    lm_seconds = run_lm_eval(args.lm_eval_python, checkpoint, tasks, limits, yaml_dir, work / "lm_eval", args.batch_size)

    options = ScoringOptions(batch_size=args.batch_size)
    holder = prepare(VariantDef(args.model), source=source).holder
    report = {"model": args.model, "checkpoint": str(checkpoint), "batch_size": args.batch_size, "tasks": {}}
    rows = []
    with open_store(work / "quantcal.sqlite") as store:
        for task in tasks:
            data_file = str(args.data_dir / TASK_FILES[task][0])
            start = time.perf_counter()
            outcome = run_job(store, Job(args.model, source, get_task(task), data_file, limits[task]), options, holder)
            qc_seconds = time.perf_counter() - start
            scored = store.scored_items(outcome.run_id)
            ours = task_summary(scored, "mc")
            lm_lls, lm_metrics = read_lm_eval(work / "lm_eval", task)
            diffs = []
            for it in scored:
                theirs = lm_lls[it.position]
                diffs.extend(abs(a - b) for a, b in zip(it.logliks, theirs))
            diffs_arr = np.array(diffs)
            entry = {
                "n_items": len(scored), "n_choices": len(diffs),
                "quantcal": {"acc": ours["acc"], "acc_norm": ours["acc_norm"]},
                "lm_eval": lm_metrics,
                "loglik_abs_diff": {"max": float(diffs_arr.max()), "mean": float(diffs_arr.mean()),
                                    "share_within_1e-3": float((diffs_arr <= 1e-3).mean())},
                "seconds": {"quantcal_scoring": qc_seconds, "lm_eval_process": lm_seconds[task]},
            }
            report["tasks"][task] = entry
            rows.append((task, len(scored), ours["acc"], lm_metrics.get("acc"), ours["acc_norm"], lm_metrics.get("acc_norm"),
                         float((diffs_arr <= 1e-3).mean()), float(diffs_arr.max())))
    print(f"model {args.model}, batch size {args.batch_size}")
    print(f"{'task':<11} {'n':>5} {'acc qc':>8} {'acc lm':>8} {'norm qc':>8} {'norm lm':>8} {'ll<=1e-3':>9} {'max|dll|':>9}")
    for r in rows:
        cells = [f"{v:>8.4f}" if v is not None else f"{'—':>8}" for v in r[2:6]]
        print(f"{r[0]:<11} {r[1]:>5} {' '.join(cells)} {r[6]:>9.4f} {r[7]:>9.2e}")
    out = args.output or HERE / "results" / f"lm_eval_parity_{args.model.replace('/', '__')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
