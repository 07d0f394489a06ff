"""One record per scored item, per run and length normalization: the single builder behind ``quantcal.load_items``,
``quantcal export`` and a report's ``items.parquet``.

Columns (in this order):

- ``run_id``, ``variant``, ``task``, ``recipe`` (the run's recipe key, or null), ``normalization``
- ``position`` (the item's 0-based place in the task's data: sort by this, not by ``item_id``), ``item_id``,
  ``item_hash`` (content hash: joins the same item across variants)
- ``gold`` (first true answer), ``golds`` (all), ``n_choices``, ``pred``, ``confidence`` (max probability),
  ``p_gold`` (probability of ``gold``), ``correct``
- ``probs`` (softmax over the choices of the length-normalised log-likelihoods, see :mod:`quantcal.analysis.predictions`),
  ``logprobs`` (their logarithms, computed without underflow: ``-log p(gold)`` stays finite where ``p`` reads 0),
  ``logliks``, ``n_tokens``, ``n_chars``, ``n_bytes``, ``greedy``: one entry per choice
- ``question`` (the full prompt as scored), ``choices`` (the choice texts)
- ``error``: null for a scored item; for an item that could not be scored (exports only, ``include_errors``), the
  reason, with every score column null
- generated answers (free-text runs, one record each, ``normalization`` null; the choice columns above null):
  ``filter`` (the task's first filter, which ``filtered`` and ``correct`` follow), ``generation`` (the text, cut at
  the stop string), ``filtered`` (the answer), ``stopped`` (stop, eos or length), ``n_generated_tokens`` and the
  confidences ``conf_seq_prob``, ``conf_mean_prob``, ``conf_answer_prob``, ``conf_p_true``, ``conf_consistency``
  (:mod:`quantcal.analysis.generated`; the last two null where not measured); ``question`` is the prompt answered.
  These columns are null on multiple-choice records.

Scalars are fixed-width columns (int64, float64, bool); per-choice values are list columns (Arrow lists in a
DataFrame and in Parquet, JSON arrays in CSV cells).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from quantcal.errors import QuantcalError
from quantcal.faults import writing
from quantcal.analysis.generated import CONFIDENCES, EXTRA_CONFIDENCES, held_extras, score_generation
from quantcal.analysis.predictions import choice_scores, log_softmax_rows, predictions
from quantcal.store.database import Store

FORMATS = ("jsonl", "csv", "parquet")
GENERATION_COLUMNS = ("filter", "generation", "filtered", "stopped", "n_generated_tokens", *CONFIDENCES,
                      *EXTRA_CONFIDENCES)
COLUMNS = ("run_id", "variant", "task", "recipe", "normalization", "position", "item_id", "item_hash", "gold", "golds",
           "n_choices", "pred", "confidence", "p_gold", "correct", "probs", "logprobs", "logliks", "n_tokens", "n_chars",
           "n_bytes", "greedy", "question", "choices", "error", *GENERATION_COLUMNS)
LIST_COLUMNS = ("golds", "probs", "logprobs", "logliks", "n_tokens", "n_chars", "n_bytes", "greedy", "choices")


def item_records(store: Store, normalizations: Sequence[str] = ("none",), include_errors: bool = False,
                 items: Mapping[str, Collection[str]] | None = None,
                 generations: bool = True) -> list[dict[str, Any]]:
    """Every scored item of every current run in ``store`` (:meth:`Store.current_runs`: a run superseded by a later
    one of the same variant and task is left out), once per normalization, as plain Python records; with
    ``include_errors`` also each item that could not be scored, with its reason. ``items``: per task, only those
    item ids (a study's plan); a task not in it keeps all its items. ``generations``: also every generated answer of
    the free-text runs, scored (one record each, whatever the normalizations)."""
    records: list[dict[str, Any]] = []
    for run in store.current_runs():
        if run.config.get("kind") == "generate":
            if generations:
                records += generation_records(store, run, items.get(run.task) if items else None)
            continue
        scored = store.scored_items(run.run_id)
        if items and run.task in items:
            wanted = set(items[run.task])
            scored = [it for it in scored if it.item_id in wanted]
        errors = store.errors(run.run_id) if include_errors else []
        texts = store.item_texts([it.item_hash for it in scored]) if scored else {}
        for normalization in normalizations:
            records += [{"run_id": run.run_id, "variant": run.variant, "task": run.task,
                         "recipe": run.config.get("recipe"), "normalization": normalization, "item_id": item_id,
                         "error": message} for item_id, message in errors]
            if not scored:
                continue
            preds = predictions(scored, normalization)
            pred, confidence, correct = preds.pred, preds.confidence, preds.correct
            p_gold = preds.probs[np.arange(len(scored)), preds.labels]
            logprobs = log_softmax_rows(choice_scores(scored, normalization))
            for i, it in enumerate(scored):
                k = len(it.logliks)
                question, choices = texts.get(it.item_hash, ("", []))
                records.append({
                    "run_id": run.run_id, "variant": run.variant, "task": run.task, "recipe": run.config.get("recipe"),
                    "normalization": normalization, "position": it.position, "item_id": it.item_id,
                    "item_hash": it.item_hash, "gold": it.gold, "golds": list(it.golds), "n_choices": k,
                    "pred": int(pred[i]), "confidence": float(confidence[i]), "p_gold": float(p_gold[i]),
                    "correct": bool(correct[i]), "probs": preds.probs[i, :k].tolist(),
                    "logprobs": logprobs[i, :k].tolist(), "logliks": list(it.logliks),
                    "n_tokens": list(it.n_tokens), "n_chars": list(it.n_chars), "n_bytes": list(it.n_bytes),
                    "greedy": list(it.greedy), "question": question, "choices": list(choices), "error": None,
                })
    return records


def generation_records(store: Store, run: Any, item_ids: Collection[str] | None = None) -> list[dict[str, Any]]:
    """A free-text run's generated answers (of ``item_ids``, when given) as records (module doc): scored again from
    the stored text under the run's recorded task, with the P(True) and sampled answers the store holds."""
    from quantcal.tasks.free_text import scoring_task

    wanted = set(item_ids) if item_ids is not None else None
    stored = [r for r in store.generations(run.run_id) if wanted is None or r["item_id"] in wanted]
    if not stored:
        return []
    task, extras = scoring_task(run.config), held_extras(store, run.run_id)
    out = []
    for r in stored:
        scored = score_generation(task, r, None, extras.get(r["item_id"]))
        out.append({"run_id": run.run_id, "variant": run.variant, "task": run.task, "recipe": run.config.get("recipe"),
                    "normalization": None, "position": r["position"], "item_id": r["item_id"],
                    "item_hash": r["item_hash"], "correct": scored["correct"], "question": r["prompt"],
                    "error": None, **{c: scored.get(c) for c in GENERATION_COLUMNS}})
    return out


def _table(records: list[dict[str, Any]]) -> Any:
    """The records as an Arrow table with explicit types (nullable recipe, list columns typed)."""
    import pyarrow as pa

    types = {"run_id": pa.int64(), "variant": pa.string(), "task": pa.string(), "recipe": pa.string(),
             "normalization": pa.string(), "position": pa.int64(), "item_id": pa.string(), "item_hash": pa.string(),
             "gold": pa.int64(), "golds": pa.list_(pa.int64()), "n_choices": pa.int64(), "pred": pa.int64(),
             "confidence": pa.float64(), "p_gold": pa.float64(), "correct": pa.bool_(), "probs": pa.list_(pa.float64()), "logprobs": pa.list_(pa.float64()),
             "logliks": pa.list_(pa.float64()), "n_tokens": pa.list_(pa.int64()), "n_chars": pa.list_(pa.int64()),
             "n_bytes": pa.list_(pa.int64()), "greedy": pa.list_(pa.bool_()), "question": pa.string(),
             "choices": pa.list_(pa.string()), "error": pa.string(), "filter": pa.string(), "generation": pa.string(),
             "filtered": pa.string(), "stopped": pa.string(), "n_generated_tokens": pa.int64(),
             **{c: pa.float64() for c in (*CONFIDENCES, *EXTRA_CONFIDENCES)}}
    assert tuple(types) == COLUMNS
    schema = pa.schema([(name, kind) for name, kind in types.items()])
    return pa.Table.from_pylist([{name: r.get(name) for name in COLUMNS} for r in records], schema=schema)


def item_frame(store: Store, normalizations: Sequence[str] = ("none",)) -> Any:
    """The records as a pandas DataFrame: numpy dtypes for scalars, Arrow list dtypes for per-choice columns."""
    import pandas as pd
    import pyarrow as pa

    records = item_records(store, normalizations)
    if not records:
        raise QuantcalError(f"{store.path}: no scored items")
    frame = _table(records).to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)
    return frame.drop(columns=["error"])  # every row here was scored


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR first) gets a
    leading apostrophe, as OWASP recommends for CSV exports; numbers and other text are unchanged."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def write_records(records: list[dict[str, Any]], out: Path, fmt: str) -> int:
    """Write records as JSON lines, CSV (list cells as JSON, formula-safe text) or Parquet, through a temporary
    file (a failure leaves no partial file); returns how many were written."""
    if fmt not in FORMATS:
        raise QuantcalError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out)
    records = [{name: r.get(name) for name in COLUMNS} for r in records]  # every record has every column, in order
    scratch = out.with_name(f".{out.name}.partial")
    with writing(out):
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "jsonl":
                with scratch.open("w", encoding="utf-8") as handle:
                    for record in records:
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            elif fmt == "csv":
                import pandas as pd

                frame = pd.DataFrame.from_records([{k: json.dumps(v, ensure_ascii=False) if k in LIST_COLUMNS
                                                    else spreadsheet_safe(v) for k, v in r.items()} for r in records])
                frame.to_csv(scratch, index=False)
            else:
                import pyarrow.parquet as pq

                pq.write_table(_table(records), scratch)
            scratch.replace(out)
        finally:
            scratch.unlink(missing_ok=True)
    return len(records)


def export_store(store: Store, out: Path, fmt: str, normalization: str = "none") -> int:
    """``quantcal export``: every item of the store, in one normalization, to ``out`` (items that could not be
    scored too, with their ``error``)."""
    if fmt not in FORMATS:
        raise QuantcalError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    records = item_records(store, (normalization,), include_errors=True)
    if not records:
        raise QuantcalError(f"{store.path}: no scored items to export")
    return write_records(records, out, fmt)
