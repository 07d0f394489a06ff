"""Parity with lm-evaluation-harness for the setups users run: few-shot, chat templates, lm-eval's own tasks.

Each case is scored by quantcal and by lm-eval 0.4.x (its own environment, ``--lm-eval-python``) on the same local
files and checkpoint (the dequantized safetensors copy of the bundled GGUF, float32, CPU); lm-eval reads the files
through task YAMLs that include its own task definitions (``fewshot_split: test``: examples from the evaluation file
minus the item). Cases:

- ``builtin:TASK@K``: quantcal's built-in task, K-shot;
- ``lm-eval:TASK@K``: the same through ``quantcal eval --task lm-eval:local_TASK --lm-eval-include DIR`` (the items
  rendered by lm-eval's Task objects inside quantcal), against the same lm-eval run;
- ``chat:TASK@K``: the built-in task under the model's chat template (lm-eval ``--apply_chat_template``, whose
  few-shot examples are separate turns by default, as quantcal's);
- ``lm-eval:winogrande``: a multiple-input task, over ``tests/data/winogrande_100.jsonl`` (rows written for the tests
  in the ``allenai/winogrande`` schema).

With ``--work DIR`` an interrupted run resumes: lm-eval runs that finished there are read back, not run again.

Prints, per case, the share of per-choice log-likelihoods within 1e-3, the largest difference and both accuracies;
writes ``benchmarks/results/prompt_parity_<model>.json``.

    python benchmarks/prompt_parity.py --lm-eval-python /path/to/lm-eval-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lm_eval_parity import TASK_FILES, lm_eval_tasks_dir, read_lm_eval, run_lm_eval, write_task_yamls  # noqa: E402

DEFAULT_CASES = ("builtin:piqa@5,builtin:openbookqa@5,builtin:hellaswag@5,builtin:boolq@5,"
                 "lm-eval:piqa@5,lm-eval:openbookqa@5,lm-eval:hellaswag@5,lm-eval:boolq@5,"
                 "chat:openbookqa@0,chat:openbookqa@5,lm-eval:winogrande@0")
DEFAULT_LIMITS = "hellaswag=500,boolq=300,chat:openbookqa=200"
WINOGRANDE = ("winogrande", HERE.parent / "tests" / "data" / "winogrande_100.jsonl", "winogrande/default.yaml")


@dataclass(frozen=True)
class Case:
    kind: str  # builtin, lm-eval or chat
    task: str
    shots: int

    @classmethod
    def parse(cls, text: str) -> "Case":
        kind, rest = text.split(":")
        task, _, shots = rest.partition("@")
        return cls(kind, task, int(shots or 0))

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.task}@{self.shots}"

    @property
    def lm_eval_run(self) -> tuple[str, int, bool]:
        """The lm-eval run this case is compared with (built-in and lm-eval: cases share one)."""
        return (self.task, self.shots, self.kind == "chat")


def limit_for(limits: dict[str, int], kind: str, task: str) -> int | None:
    """A case's item limit: ``KIND:TASK=N`` (e.g. ``chat:openbookqa=200``) before ``TASK=N``; None: every item."""
    return limits.get(f"{kind}:{task}", limits.get(task))


def covers(cached: int | None, wanted: int | None) -> bool:
    """Whether an lm-eval run over ``cached`` items (None: all) holds the first ``wanted`` items."""
    return cached is None or (wanted is not None and cached >= wanted)


def subset_metrics(frame, lls: dict) -> dict:  # noqa: ANN001
    """lm-eval's acc and acc_norm over quantcal's items only: argmax of its log-likelihoods, and of them divided by
    the choices' character counts (lm-eval's ``process_results``)."""
    acc, norm = [], []
    for _, row in frame.iterrows():
        theirs = np.array(lls[int(row["position"])])
        acc.append(int(np.argmax(theirs)) == int(row["gold"]))
        norm.append(int(np.argmax(theirs / np.array(row["n_chars"], dtype=float))) == int(row["gold"]))
    return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(norm)), "on": "quantcal's items"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--lm-eval-python", required=True)
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--limit", default=DEFAULT_LIMITS, help="per task, e.g. hellaswag=500,boolq=300; KIND:TASK=N for "
                                                                 "one kind of case (chat:openbookqa=200)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    from quantcal import api
    from quantcal.sources.models import dequantized_gguf_copy, resolve_source

    cases = [Case.parse(c) for c in args.cases.split(",") if c]
    limits = {k: int(v) for k, v in (p.split("=") for p in args.limit.split(",") if p)}
    work = args.work or Path(tempfile.mkdtemp(prefix="quantcal-prompt-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    source = resolve_source(args.model)
    checkpoint = dequantized_gguf_copy(source) if source.gguf_file else Path(source.location)
    files = {t: (args.data_dir / TASK_FILES[t][0], TASK_FILES[t][1]) for t in {c.task for c in cases} if t in TASK_FILES}
    files[WINOGRANDE[0]] = (WINOGRANDE[1], WINOGRANDE[2])
    yaml_dir = work / "yaml"
    yaml_dir.mkdir(exist_ok=True)
    write_task_yamls(yaml_dir, files, lm_eval_tasks_dir(args.lm_eval_python))

    lm_runs: dict[tuple[str, int, bool], tuple[dict, dict, float]] = {}
    for run in dict.fromkeys(c.lm_eval_run for c in cases):
        task, shots, chat = run
        tag = f"{task}_{shots}shot{'_chat' if chat else ''}"
        extra = (["--num_fewshot", str(shots)] if shots else []) + (["--apply_chat_template"] if chat else [])
        done = work / "lm_eval" / tag / "seconds.json"
        limit = limit_for(limits, "chat" if chat else "builtin", task)
        if done.is_file() and covers(json.loads(done.read_text()).get("limit"), limit):
            seconds = json.loads(done.read_text())["seconds"]  # an earlier run with the same --work covers these items
        else:
            shutil.rmtree(work / "lm_eval" / tag, ignore_errors=True)  # none, or over fewer items: run again
            print(f"lm-eval {tag} ...", flush=True)
            seconds = run_lm_eval(args.lm_eval_python, checkpoint, [task], {task: limit}, yaml_dir,
                                  work / "lm_eval" / tag, args.batch_size, extra)[task]
            done.write_text(json.dumps({"seconds": seconds, "limit": limit}))
        lls, metrics = read_lm_eval(work / "lm_eval" / tag, task)
        lm_runs[run] = (lls, metrics, seconds)

    report: dict = {"model": args.model, "checkpoint": str(checkpoint), "batch_size": args.batch_size, "cases": {}}
    for case in cases:
        print(f"quantcal {case.name} ...", flush=True)
        common = dict(store=work / "quantcal.sqlite", limit=limit_for(limits, case.kind, case.task), num_fewshot=case.shots,
                      batch_size=args.batch_size, name=case.kind)
        start = time.perf_counter()
        if case.kind == "lm-eval":
            result = api.evaluate(args.model, f"lm-eval:local_{case.task}", lm_eval_include=yaml_dir, **common)
        else:
            result = api.evaluate(args.model, case.task, data_file=files[case.task][0],
                                  apply_chat_template=case.kind == "chat", **common)
        seconds = time.perf_counter() - start
        (task_result,) = result.tasks.values()
        frame = result.items()
        lls, metrics, lm_seconds = lm_runs[case.lm_eval_run]
        diffs = []
        for _, row in frame.iterrows():
            theirs = lls[int(row["position"])]
            diffs.extend(abs(a - b) for a, b in zip(row["logliks"], theirs))
        d = np.array(diffs)
        if len(lls) != len(frame):  # lm-eval ran more items (a cached full run): its metrics on these items, from
            metrics = subset_metrics(frame, lls)  # its own log-likelihoods, computed as lm-eval computes them
        entry = {"n_items": task_result.n, "n_choices": int(d.size),
                 "quantcal": {"acc": task_result.acc, "acc_norm": task_result.acc_norm}, "lm_eval": metrics,
                 "loglik_abs_diff": {"max": float(d.max()), "mean": float(d.mean()),
                                     "share_within_1e-3": float((d <= 1e-3).mean())},
                 "same_accuracy": all(abs(v - metrics[k]) < 1e-9 for k, v in
                                      (("acc", task_result.acc), ("acc_norm", task_result.acc_norm))
                                      if k in metrics and v is not None),
                 "seconds": {"quantcal": seconds, "lm_eval_process": lm_seconds}}
        report["cases"][case.name] = entry
        print(json.dumps({case.name: {k: entry[k] for k in ("n_items", "quantcal", "lm_eval", "loglik_abs_diff",
                                                             "same_accuracy")}}), flush=True)
    print(f"\nmodel {args.model}, batch size {args.batch_size}")
    print(f"{'case':<24} {'n':>5} {'acc qc':>7} {'acc lm':>7} {'norm qc':>7} {'norm lm':>7} {'<=1e-3':>7} {'max|dll|':>9}")
    for name, e in report["cases"].items():
        cells = [e["quantcal"]["acc"], e["lm_eval"].get("acc"), e["quantcal"]["acc_norm"], e["lm_eval"].get("acc_norm")]
        text = " ".join(f"{v:>7.4f}" if v is not None else f"{'—':>7}" for v in cells)
        print(f"{name:<24} {e['n_items']:>5} {text} {e['loglik_abs_diff']['share_within_1e-3']:>7.4f} "
              f"{e['loglik_abs_diff']['max']:>9.2e}")
    out = args.output or HERE / "results" / f"prompt_parity_{args.model.replace('/', '__')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
