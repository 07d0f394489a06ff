"""Read lm-evaluation-harness ``--log_samples`` output into a store, so a finished lm-eval run gets calibration.

lm-eval 0.4.x writes ``samples_<task>_<date>.jsonl`` next to ``results_<date>.json``; for a multiple-choice task
each line holds ``doc_id``, ``target`` (the gold index, or the gold choice's text), ``arguments``
(``gen_args_<j>: {arg_0: context, arg_1: continuation}`` per choice) and ``resps``/``filtered_resps``
(``[log-likelihood, is_greedy]`` per choice). Each line becomes one item: its choices are the continuations
without the leading target delimiter, as quantcal's tasks store them, so ``acc_norm`` divides by the same
character counts as lm-eval. lm-eval does not log token counts, so the ``tokens`` normalization is unavailable
for imported runs (their token counts are stored as 0).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from quantcal.sources.cache import file_sha256
from quantcal.tasks.data_files import json_lines
from quantcal.errors import QuantcalError
from quantcal.tasks.items import Item
from quantcal.store.database import Store

SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[\d\-.]+)\.jsonl$")


@dataclass(frozen=True)
class Imported:
    task: str
    file: Path
    run_id: int
    n_items: int
    lm_eval_metrics: dict[str, float]


def samples_files(paths: list[Path]) -> list[Path]:
    """The samples files named, or found under named folders (the latest per task and folder)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            by_task: dict[tuple[Path, str], Path] = {}
            for f in sorted(path.rglob("samples_*.jsonl")):
                m = SAMPLES.match(f.name)
                if m:
                    by_task[(f.parent, m["task"])] = f  # sorted: the latest date wins
            found += sorted(by_task.values())
        elif path.is_file():
            if not SAMPLES.match(path.name):
                raise QuantcalError(f"{path}: not an lm-eval samples file (samples_<task>_<date>.jsonl)")
            found.append(path)
        else:
            raise QuantcalError(f"{path}: no such file or folder")
    if not found:
        raise QuantcalError(f"no samples_<task>_<date>.jsonl under {', '.join(map(str, paths))} (run lm-eval with --log_samples)")
    return found


def _choice_args(sample: dict[str, Any], where: str) -> list[tuple[str, str]]:
    args = sample.get("arguments")
    if isinstance(args, dict):
        keys = sorted(args, key=lambda k: int(k.rsplit("_", 1)[-1]))
        return [(str(args[k]["arg_0"]), str(args[k]["arg_1"])) for k in keys]
    if isinstance(args, list):  # older 0.4 releases: [[context, continuation], ...]
        return [(str(a[0]), str(a[1])) for a in args]
    raise QuantcalError(f"{where}: no 'arguments' of a log-likelihood task")


def _item(sample: dict[str, Any], where: str) -> tuple[Item, list[float], list[bool]]:
    pairs = _choice_args(sample, where)
    resps = sample.get("filtered_resps") or [r[0] for r in sample.get("resps", [])]
    if len(resps) != len(pairs) or len(pairs) < 2:
        raise QuantcalError(f"{where}: not a multiple-choice sample ({len(pairs)} choices, {len(resps)} responses)")
    logliks = []
    for j, r in enumerate(resps):
        value = r[0] if isinstance(r, (list, tuple)) and r else r
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise QuantcalError(f"{where}: the log-likelihood of choice {j} is {value!r}, not a number") from None
        if not math.isfinite(number):
            raise QuantcalError(f"{where}: the log-likelihood of choice {j} is {number}, not a finite number")
        logliks.append(number)
    greedy = [isinstance(r, (list, tuple)) and len(r) > 1 and str(r[1]) == "True" for r in resps]
    choices = [cont[1:] if cont.startswith(" ") else cont for _, cont in pairs]
    target = sample.get("target")
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target.strip() not in [c.strip() for c in choices]:
            raise QuantcalError(f"{where}: target {target!r} is none of the choices")
        gold = [c.strip() for c in choices].index(target.strip())
    else:
        try:
            gold = int(target)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise QuantcalError(f"{where}: target {target!r} is neither a choice nor an index") from None
    if not 0 <= gold < len(choices):
        raise QuantcalError(f"{where}: gold index {gold} out of range for {len(choices)} choices")
    item = Item(id=f"doc{_doc_id(sample, where)}", context=pairs[0][0], choices=tuple(choices), gold=gold,
                meta={"origin": where, "doc_hash": sample.get("doc_hash")})
    return item, logliks, greedy


def _doc_id(sample: dict[str, Any], where: str) -> int:
    value = sample.get("doc_id")
    if isinstance(value, bool) or not isinstance(value, int):
        raise QuantcalError(f"{where}: 'doc_id' is {value!r}; lm-eval writes an integer document id")
    return value


def read_samples(path: Path) -> Iterator[tuple[int, Item, list[float], list[bool]]]:
    """Every sample of an lm-eval samples file, validated; any malformed line is one error naming it."""
    seen: dict[int, str] = {}
    for number, sample in json_lines(path):
        where = f"{path.name}:{number}"
        try:
            item, logliks, greedy = _item(sample, where)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise QuantcalError(f"{where}: not an lm-eval log-likelihood sample ({type(exc).__name__}: {exc})") from None
        doc_id = _doc_id(sample, where)
        if doc_id in seen:
            raise QuantcalError(f"{where}: doc_id {doc_id} repeats {seen[doc_id]}")
        seen[doc_id] = where
        yield doc_id, item, logliks, greedy


def lm_eval_results(samples: Path, task: str) -> tuple[dict[str, float], dict[str, Any]]:
    """lm-eval's own metrics for ``task`` from the results file written with the samples file, if any."""
    m = SAMPLES.match(samples.name)
    results = samples.parent / f"results_{m['date']}.json" if m else None
    if results is None or not results.is_file():
        return {}, {}
    data = json.loads(results.read_text())
    metrics = {k.split(",")[0]: float(v) for k, v in data.get("results", {}).get(task, {}).items()
               if k.startswith(("acc,", "acc_norm,"))}
    info = {k: data.get(k) for k in ("model_name", "lm_eval_version", "transformers_version", "date") if k in data}
    return metrics, info


def import_samples(store: Store, path: Path, variant: str | None = None, task: str | None = None) -> Imported:
    m = SAMPLES.match(path.name)
    task_name = task or (m["task"] if m else path.stem)
    lm_metrics, info = lm_eval_results(path, m["task"] if m else task_name)
    model_name = str(info.get("model_name") or "lm-eval")
    name = variant or (Path(model_name).name if model_name.startswith(("/", ".")) else model_name)
    config = {"source": "lm-eval --log_samples", "samples_sha256": file_sha256(path)[:16], "lm_eval_task": m["task"] if m else None,
              **{k: v for k, v in info.items() if k != "date"}}
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    samples = list(read_samples(path))  # validate everything before the store is touched
    if not samples:
        raise QuantcalError(f"{path}: no samples")
    run_id = store.get_or_create_run(name, task_name, config_hash, config, {"lm_eval": str(info.get("lm_eval_version"))})
    done = store.done_item_ids(run_id)
    store.write_scores(run_id, [(position, item, logliks, [0] * len(logliks), greedy)
                                for position, item, logliks, greedy in samples if item.id not in done])  # one transaction
    store.set_status(run_id, "done")
    return Imported(task_name, path, run_id, len(store.done_item_ids(run_id)), lm_metrics)
