"""Writing a store's per-item records to JSON lines, CSV or Parquet (one record per item per run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantcal.errors import QuantcalError
from quantcal.predictions import predictions
from quantcal.store import Store

FORMATS = ("jsonl", "csv", "parquet")


def item_records(store: Store, normalization: str = "none") -> list[dict[str, Any]]:
    """Per item: run, variant, task, per-choice log-likelihoods and counts, probabilities, prediction, confidence."""
    records: list[dict[str, Any]] = []
    for run in store.runs():
        scored = store.scored_items(run.run_id)
        if not scored:
            continue
        preds = predictions(scored, normalization)
        for i, it in enumerate(scored):
            k = len(it.logliks)
            records.append({
                "run_id": run.run_id, "variant": run.variant, "task": run.task, "item_id": it.item_id,
                "position": it.position, "item_hash": it.item_hash, "gold": it.gold, "golds": list(it.golds),
                "logliks": list(it.logliks), "n_tokens": list(it.n_tokens), "n_chars": list(it.n_chars),
                "n_bytes": list(it.n_bytes), "greedy": list(it.greedy),
                "normalization": normalization, "probs": preds.probs[i, :k].tolist(),
                "pred": int(preds.pred[i]), "confidence": float(preds.confidence[i]), "correct": bool(preds.correct[i]),
            })
    return records


def export_store(store: Store, out: Path, fmt: str, normalization: str = "none") -> int:
    if fmt not in FORMATS:
        raise QuantcalError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    records = item_records(store, normalization)
    if not records:
        raise QuantcalError(f"{store.path}: no scored items to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with out.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        return len(records)
    import pandas as pd

    frame = pd.DataFrame.from_records(records)
    if fmt == "csv":
        for column in ("golds", "logliks", "n_tokens", "n_chars", "n_bytes", "greedy", "probs"):
            frame[column] = frame[column].map(json.dumps)
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    return len(records)
