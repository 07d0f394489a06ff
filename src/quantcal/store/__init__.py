"""The SQLite store (runs, items, per-choice scores; :mod:`quantcal.store.database`) and what reads other tools'
output into it (:mod:`quantcal.store.lm_eval_import`)."""

from quantcal.store.database import ScoredItem, Store, open_store

__all__ = ["ScoredItem", "Store", "open_store"]
