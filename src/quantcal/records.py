"""One record per scored item, per run and length normalization: the single builder behind ``quantcal.load_items``,
``quantcal export`` and a report's ``items.parquet``.

Columns (in this order):

- ``run_id``, ``variant``, ``task``, ``recipe`` (the run's recipe key, or null), ``normalization``
- ``position`` (the item's 0-based place in the task's data: sort by this, not by ``item_id``), ``item_id``,
  ``item_hash`` (content hash: joins the same item across variants)
- ``gold`` (first true answer), ``golds`` (all), ``n_choices``, ``pred``, ``confidence`` (max probability),
  ``p_gold`` (probability of ``gold``), ``correct``
- ``probs`` (softmax over the choices of the length-normalised log-likelihoods, see :mod:`quantcal.predictions`),
  ``logliks``, ``n_tokens``, ``n_chars``, ``n_bytes``, ``greedy``: one entry per choice
- ``question`` (the full prompt as scored), ``choices`` (the choice texts)

Scalars are fixed-width columns (int64, float64, bool); per-choice values are list columns (Arrow lists in a
DataFrame and in Parquet, JSON arrays in CSV cells).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from quantcal.errors import QuantcalError
from quantcal.predictions import predictions
from quantcal.store import Store

FORMATS = ("jsonl", "csv", "parquet")
LIST_COLUMNS = ("golds", "probs", "logliks", "n_tokens", "n_chars", "n_bytes", "greedy", "choices")


def item_records(store: Store, normalizations: Sequence[str] = ("none",)) -> list[dict[str, Any]]:
    """Every scored item of every run in ``store``, once per normalization, as plain Python records."""
    records: list[dict[str, Any]] = []
    for run in store.runs():
        scored = store.scored_items(run.run_id)
        if not scored:
            continue
        texts = store.item_texts([it.item_hash for it in scored])
        for normalization in normalizations:
            preds = predictions(scored, normalization)
            pred, confidence, correct = preds.pred, preds.confidence, preds.correct
            p_gold = preds.probs[np.arange(len(scored)), preds.labels]
            for i, it in enumerate(scored):
                k = len(it.logliks)
                question, choices = texts.get(it.item_hash, ("", []))
                records.append({
                    "run_id": run.run_id, "variant": run.variant, "task": run.task, "recipe": run.config.get("recipe"),
                    "normalization": normalization, "position": it.position, "item_id": it.item_id,
                    "item_hash": it.item_hash, "gold": it.gold, "golds": list(it.golds), "n_choices": k,
                    "pred": int(pred[i]), "confidence": float(confidence[i]), "p_gold": float(p_gold[i]),
                    "correct": bool(correct[i]), "probs": preds.probs[i, :k].tolist(), "logliks": list(it.logliks),
                    "n_tokens": list(it.n_tokens), "n_chars": list(it.n_chars), "n_bytes": list(it.n_bytes),
                    "greedy": list(it.greedy), "question": question, "choices": list(choices),
                })
    return records


def _table(records: list[dict[str, Any]]) -> Any:
    """The records as an Arrow table with explicit types (nullable recipe, list columns typed)."""
    import pyarrow as pa

    types = {"run_id": pa.int64(), "variant": pa.string(), "task": pa.string(), "recipe": pa.string(),
             "normalization": pa.string(), "position": pa.int64(), "item_id": pa.string(), "item_hash": pa.string(),
             "gold": pa.int64(), "golds": pa.list_(pa.int64()), "n_choices": pa.int64(), "pred": pa.int64(),
             "confidence": pa.float64(), "p_gold": pa.float64(), "correct": pa.bool_(), "probs": pa.list_(pa.float64()),
             "logliks": pa.list_(pa.float64()), "n_tokens": pa.list_(pa.int64()), "n_chars": pa.list_(pa.int64()),
             "n_bytes": pa.list_(pa.int64()), "greedy": pa.list_(pa.bool_()), "question": pa.string(),
             "choices": pa.list_(pa.string())}
    schema = pa.schema([(name, kind) for name, kind in types.items()])
    return pa.Table.from_pylist(records, schema=schema)


def item_frame(store: Store, normalizations: Sequence[str] = ("none",)) -> Any:
    """The records as a pandas DataFrame: numpy dtypes for scalars, Arrow list dtypes for per-choice columns."""
    import pandas as pd
    import pyarrow as pa

    records = item_records(store, normalizations)
    if not records:
        raise QuantcalError(f"{store.path}: no scored items")
    return _table(records).to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)


def write_records(records: list[dict[str, Any]], out: Path, fmt: str) -> int:
    """Write records as JSON lines, CSV (list cells as JSON) or Parquet; returns how many were written."""
    if fmt not in FORMATS:
        raise QuantcalError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with out.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        import pandas as pd

        frame = pd.DataFrame.from_records([{k: json.dumps(v, ensure_ascii=False) if k in LIST_COLUMNS else v
                                            for k, v in r.items()} for r in records])
        frame.to_csv(out, index=False)
    else:
        import pyarrow.parquet as pq

        pq.write_table(_table(records), out)
    return len(records)


def export_store(store: Store, out: Path, fmt: str, normalization: str = "none") -> int:
    """``quantcal export``: every scored item of the store, in one normalization, to ``out``."""
    if fmt not in FORMATS:
        raise QuantcalError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    records = item_records(store, (normalization,))
    if not records:
        raise QuantcalError(f"{store.path}: no scored items to export")
    return write_records(records, out, fmt)
