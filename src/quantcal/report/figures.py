"""The report's figures, drawn from the collected numbers (never from the store): PNG and SVG per figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Figure:
    key: str
    title: str
    png: Path
    svg: Path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, folder: Path, key: str, title: str) -> Figure:
    """Save PNG and SVG through temporary names, so a failure (a full disk) leaves no truncated figure."""
    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{key}.png", folder / f"{key}.svg"
    try:
        for target, options in ((png, {"dpi": 110}), (svg, {})):
            scratch = target.with_name(f".{target.name}.partial")
            try:
                fig.savefig(scratch, format=target.suffix[1:], bbox_inches="tight", **options)
                scratch.replace(target)
            finally:
                scratch.unlink(missing_ok=True)
    finally:
        _pyplot().close(fig)
    return Figure(key, title, png, svg)


def reliability(block: dict[str, Any], reference: str, task: str, folder: Path, key: str) -> Figure:
    """Accuracy vs mean confidence per bin, all variants overlaid (reference bold), marker area ~ bin count."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for name, v in block["variants"].items():
        r = v["reliability"]
        counts = np.asarray(r["counts"], dtype=float)
        size = 12 + 200 * counts / max(counts.max(), 1.0)
        bold = name == reference
        line, = ax.plot(r["confidence"], r["accuracy"], lw=2.6 if bold else 1.3, marker=None,
                        label=f"{name} (ECE {v['metrics'].get('ece', {}).get('estimate', float('nan')):.3f})")
        ax.scatter(r["confidence"], r["accuracy"], s=size, color=line.get_color(), alpha=0.55, edgecolor="none")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy",
           title=f"{task}: reliability (15 equal-width bins; marker area = items)")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, folder, key, f"Reliability diagram, {task}")


def confidence_histograms(block: dict[str, Any], task: str, folder: Path, key: str) -> Figure:
    """Per variant, histograms of confidence for correct and wrong answers."""
    plt = _pyplot()
    names = list(block["variants"])
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 0.6, 2.8), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        h = block["variants"][name]["confidence_histogram"]
        edges = np.asarray(h["edges"])
        mid, width = (edges[1:] + edges[:-1]) / 2, np.diff(edges)
        ax.bar(mid, h["correct"], width=width, color="tab:green", alpha=0.6, label="correct")
        ax.bar(mid, h["wrong"], width=width, color="tab:red", alpha=0.6, label="wrong")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("confidence", fontsize=8)
    axes[0][0].set_ylabel("items")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{task}: confidence of correct and wrong answers", fontsize=9)
    return _save(fig, folder, key, f"Confidence histograms, {task}")


def shift_by_confidence(block: dict[str, Any], task: str, folder: Path, key: str) -> Figure | None:
    """Mean |Δp(gold)| and mean JS distance per reference-confidence bin, one line per variant (Study B)."""
    if not block["paired"]:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, p in block["paired"].items():
        rows = p["analysis"]["stratified"]["bins"]
        x = [(r["ref_confidence_low"] + r["ref_confidence_high"]) / 2 for r in rows]
        left.plot(x, [r["mean_abs_delta_p_gold"] for r in rows], marker="o", label=name)
        right.plot(x, [r["mean_js_distance"] for r in rows], marker="o", label=name)
    left.set(xlabel="reference confidence (bin midpoint)", ylabel="mean |Δ p(gold)|")
    right.set(xlabel="reference confidence (bin midpoint)", ylabel="mean Jensen-Shannon distance")
    left.legend(fontsize=7)
    fig.suptitle(f"{task}: how far each variant moves, by the reference's confidence", fontsize=9)
    return _save(fig, folder, key, f"Change by reference confidence, {task}")


def task_figures(block: dict[str, Any], reference: str, task: str, folder: Path) -> list[Figure]:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in task)
    figures = [reliability(block, reference, task, folder, f"{safe}_reliability"),
               confidence_histograms(block, task, folder, f"{safe}_confidence")]
    shift = shift_by_confidence(block, task, folder, f"{safe}_shift")
    return figures + ([shift] if shift else [])
