"""How much quantizing one unit alone changes calibration: paired differences to the reference, per unit.

For unit ``u`` (every other weight in float) and each metric ``m`` of :data:`SENSITIVITY_METRICS`:
``Δm_u = m(p_u) - m(p_ref)`` on the same items, with a paired percentile (or basic, for binned errors) bootstrap
interval (items resampled jointly, :func:`quantcal.metrics.paired_bootstrap`), and the mean Jensen-Shannon distance
(base 2) between the two models' choice distributions. A unit's *harm* under metric ``m`` is ``Δm`` signed so that
larger is worse (``-Δ`` for metrics where higher is better, such as ``p_gold``). Pure functions: numpy in, numbers out
(and the reader of a run's ``sensitivity.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon

from quantcal.errors import QuantcalError
from quantcal.metrics import Interval, get_metric, paired_bootstrap

SENSITIVITY_METRICS: tuple[str, ...] = ("nll", "ece", "brier", "p_gold", "acc")
COMBINE: tuple[str, ...] = ("share", "mean")


def harm_sign(metric: str) -> float:
    """+1 where a larger metric is worse (NLL, ECE, Brier), -1 where it is better (accuracy, p(gold))."""
    return -1.0 if get_metric(metric).higher_is_better else 1.0


@dataclass(frozen=True)
class UnitSensitivity:
    """One unit quantized alone: each metric's paired change (unit − reference) on ``n`` items, mean JS distance."""

    unit: str
    n: int
    deltas: dict[str, Interval]
    mean_js: float

    def harm(self, metric: str = "nll") -> float:
        """``Δmetric`` signed so that larger means more damage."""
        if metric not in self.deltas:
            raise QuantcalError(f"no sensitivity measured for {metric!r}; measured: {', '.join(self.deltas)}")
        return harm_sign(metric) * self.deltas[metric].estimate

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean_js": self.mean_js, **{m: d.to_json() for m, d in self.deltas.items()}}


def unit_sensitivity(unit: str, ref_probs: np.ndarray, unit_probs: np.ndarray, labels: np.ndarray,
                     metrics: Sequence[str] = SENSITIVITY_METRICS, n_resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> UnitSensitivity:
    """The paired change of each metric when ``unit`` alone is quantized (``unit_probs``) against the reference."""
    ref, var = np.asarray(ref_probs, dtype=np.float64), np.asarray(unit_probs, dtype=np.float64)
    if ref.shape != var.shape or ref.shape[0] != np.asarray(labels).shape[0]:
        raise QuantcalError(f"reference {ref.shape}, unit {var.shape} and labels {np.shape(labels)} do not align")
    deltas = {m: paired_bootstrap(m, ref, var, labels, n_resamples, seed, level) for m in metrics}
    with np.errstate(invalid="ignore"):  # identical rows give a tiny negative under scipy's square root
        js = np.nan_to_num(jensenshannon(ref, var, base=2, axis=1), nan=0.0)
    return UnitSensitivity(unit, int(ref.shape[0]), deltas, float(js.mean()))


def combine_harms(harms: Sequence[Mapping[str, float]], full: Optional[Sequence[float]] = None,
                  combine: str = "share") -> dict[str, float]:
    """One harm per unit from several tasks' (``harms[t][unit]``, the same units in each task).

    ``mean``:  ``h_u = (1/T) Σ_t Δ_{u,t}``, the raw changes averaged; a task whose metric runs on a larger scale
    weighs more (under normalization none hellaswag's whole-answer NLL is ~6x PIQA's for SmolLM2, and RTN 3-bit's
    ΔNLL there 3.6x PIQA's: +4.39 against +1.23).
    ``share``: ``h_u = (1/T) Σ_t Δ_{u,t} / Δ_{full,t}``, each unit's change as a fraction of what the whole recipe
    did to that task (``full[t]``, signed as harm), so every task weighs the same whatever its scale. It needs
    ``Δ_{full,t} > 0`` (the recipe harmed the task on this metric) for every task; refused otherwise.
    With one task both give the task's own Δs (dividing by one positive number orders the units the same).
    """
    if combine not in COMBINE:
        raise QuantcalError(f"combine={combine!r}: choose one of {', '.join(COMBINE)}")
    if not harms:
        return {}
    scales = [1.0] * len(harms)
    if combine == "share" and len(harms) > 1:
        if full is None or len(full) != len(harms):
            raise QuantcalError("combine=share needs the whole recipe's harm on every task")
        if min(full) <= 0:
            raise QuantcalError(f"combine=share: the whole recipe did not harm every task on this metric (its Δs: "
                                f"{', '.join(f'{f:+.4g}' for f in full)}), so a unit's share of it means nothing; "
                                "rank by another metric or combine=mean")
        scales = list(full)
    return {name: float(np.mean([task[name] / scale for task, scale in zip(harms, scales)])) for name in harms[0]}


def rank_units(rows: Sequence[Sequence[UnitSensitivity]], metric: str = "nll",
               full: Optional[Sequence[float]] = None, combine: str = "share") -> list[tuple[str, float]]:
    """Units by decreasing harm, combined over tasks by :func:`combine_harms` (``rows[t]`` holds task ``t``'s
    units, the same in each; ``full[t]`` the whole recipe's harm on task ``t``)."""
    harms = [{r.unit: r.harm(metric) for r in task} for task in rows]
    return sorted(combine_harms(harms, full, combine).items(), key=lambda kv: -kv[1])


def ranking_from_json(data: dict[str, Any], metric: str = "nll", combine: str = "share") -> list[tuple[str, float]]:
    """:func:`rank_units` over every task of a ``sensitivity.json``."""
    tasks = list(data["tasks"].values())
    full = [harm_sign(metric) * t["full_recipe"][metric]["estimate"] for t in tasks]
    return rank_units([rows_from_json(t) for t in tasks], metric, full, combine)


def family_shares(rows: Sequence[UnitSensitivity], metric: str = "nll") -> dict[str, float]:
    """For ``linear`` units (``L{i}.attn`` / ``L{i}.mlp``): the summed positive harm of each family, as a share of
    the total (which of attention and MLP dominates)."""
    totals: dict[str, float] = {}
    for r in rows:
        _, _, fam = r.unit.partition(".")
        totals[fam or "block"] = totals.get(fam or "block", 0.0) + max(r.harm(metric), 0.0)
    whole = sum(totals.values())
    return {k: (v / whole if whole > 0 else 0.0) for k, v in totals.items()}


def rows_from_json(task_block: dict[str, Any]) -> list[UnitSensitivity]:
    """One task's per-unit records of a ``sensitivity.json``, back as :class:`UnitSensitivity`."""
    rows = []
    for name, entry in task_block["units"].items():
        deltas = {m: Interval(**entry[m]) for m in SENSITIVITY_METRICS if m in entry}
        rows.append(UnitSensitivity(name, entry["n"], deltas, entry["mean_js"]))
    return rows


def sensitivity_file(path: str | Path) -> Path:
    """``path`` itself, or ``path/sensitivity.json`` for a run's folder."""
    file = Path(path)
    return file / "sensitivity.json" if file.is_dir() else file


def read_sensitivity(path: str | Path) -> dict[str, Any]:
    """A sensitivity run's JSON (written by ``quantcal sensitivity``), or one error naming what is wrong."""
    file = sensitivity_file(path)
    if not file.is_file():
        raise QuantcalError(f"{path}: no sensitivity.json (run `quantcal sensitivity` first)")
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise QuantcalError(f"{file}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != "quantcal-sensitivity":
        raise QuantcalError(f"{file}: not a sensitivity run (written by `quantcal sensitivity`)")
    return data


#: What two runs must share to be merged into one ranking: the same model, the same build of the same recipe, the
#: same units and the same analysis settings (their intervals and harms are then comparable task by task).
MERGE_KEYS: tuple[str, ...] = ("version", "fingerprint", "recipe", "recipe_build", "unit", "normalization",
                               "resamples", "seed")


def merge_runs(runs: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One ranking from sensitivity runs of the same recipe on different tasks (``(label, data)`` each, ``data`` a
    run's ``sensitivity.json``): the tasks side by side, as if one run had scored them all.

    Each task keeps its own item count and item hashes (so a mixed recipe ranked on the merge refuses all of them);
    the run-level ``limit`` becomes each task's own. Refused, naming the first difference: runs of another model,
    recipe build, unit kind or analysis setting, different unit lists, or a task present in two runs.
    """
    if len(runs) < 2:
        raise QuantcalError("merging needs at least two sensitivity runs")
    first_label, first = runs[0]
    merged = {k: v for k, v in first.items() if k not in ("tasks", "limit", "seconds", "merged_from")}
    tasks: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for label, data in runs:
        for key in MERGE_KEYS:
            if data.get(key) != first.get(key):
                raise QuantcalError(f"{label} and {first_label} differ in {key} "
                                    f"({data.get(key)!r} vs {first.get(key)!r}); only runs of one build and setting merge")
        if [u["name"] for u in data["units"]] != [u["name"] for u in first["units"]]:
            raise QuantcalError(f"{label} and {first_label} measured different units")
        for name, block in data["tasks"].items():
            if name in seen:
                raise QuantcalError(f"task {name} is in both {seen[name]} and {label}; merge runs of different tasks")
            seen[name] = label
            tasks[name] = {"limit": block.get("limit", data.get("limit")), **block}
    merged.update({
        "tasks": tasks, "limit": None, "seconds": float(sum(d.get("seconds", 0.0) for _, d in runs)),
        "merged_from": [{"run": label, "tasks": list(d["tasks"])} for label, d in runs],
    })
    return merged
