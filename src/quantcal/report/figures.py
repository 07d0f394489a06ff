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


#: Variant colours: matplotlib's tab10 without its green and red, which the report keeps for "better" and "worse"
#: (and the histograms for correct and wrong answers).
VARIANT_PALETTE = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def colours(names: list[str]) -> dict[str, Any]:
    """One colour per variant, the same in every figure: black for the first (the reference), then
    :data:`VARIANT_PALETTE` in order."""
    return {name: ("black" if i == 0 else VARIANT_PALETTE[(i - 1) % len(VARIANT_PALETTE)]) for i, name in enumerate(names)}


def covered(curve: dict[str, Any]) -> dict[str, np.ndarray]:
    """A smoothed reliability curve cut to the confidences its items span (no curve drawn where there is no item)."""
    mesh = np.asarray(curve["mesh"])
    low, high = curve.get("range", (0.0, 1.0))
    keep = (mesh >= low - 1e-9) & (mesh <= high + 1e-9)
    if keep.sum() < 2:  # every item at (nearly) one confidence: the two mesh points around it
        nearest = np.argsort(np.abs(mesh - (low + high) / 2))[:2]
        keep = np.zeros_like(keep)
        keep[nearest] = True
    return {key: np.asarray(curve[key])[keep] for key in ("mesh", "mu", "lower", "upper")}


def reliability(block: dict[str, Any], reference: str, task: str, folder: Path, key: str) -> Figure:
    """One panel per variant on shared axes: its binned points with gap bars to the diagonal, relplot's smoothed
    curve with its band, the reference's curve in grey for comparison, and a count histogram underneath."""
    plt = _pyplot()
    names = list(block["variants"])
    colour = colours(names)
    cols = min(len(names), 4)
    rows = -(-len(names) // cols)
    fig = plt.figure(figsize=(3.0 * cols + 0.4, 3.5 * rows))
    outer = fig.add_gridspec(rows, cols, hspace=0.45, wspace=0.12)
    ref_smooth = block["variants"].get(reference, {}).get("smooth_reliability")
    for i, name in enumerate(names):
        v = block["variants"][name]
        cell = outer[i // cols, i % cols].subgridspec(2, 1, height_ratios=[4, 1], hspace=0.08)
        ax = fig.add_subplot(cell[0])
        hist = fig.add_subplot(cell[1], sharex=ax)
        ax.plot([0, 1], [0, 1], color="0.75", lw=1, ls="--")
        if ref_smooth and name != reference:
            ref_curve = covered(ref_smooth)
            ax.plot(ref_curve["mesh"], ref_curve["mu"], color="0.55", lw=1.2, label=f"{reference} (smoothed)")
        sm = covered(v["smooth_reliability"]) if v.get("smooth_reliability") else None
        if sm:
            ax.fill_between(sm["mesh"], sm["lower"], sm["upper"], color=colour[name], alpha=0.15, lw=0)
            ax.plot(sm["mesh"], sm["mu"], color=colour[name], lw=1.8, label="smoothed (relplot)")
        r = v["reliability"]
        ax.vlines(r["confidence"], r["confidence"], r["accuracy"], color=colour[name], lw=1.2, alpha=0.7)
        ax.plot(r["confidence"], r["accuracy"], "o", color=colour[name], ms=4, label=f"{r.get('binning', 'width')} bins")
        ece = v["metrics"].get("ece", {}).get("estimate")
        ax.set_title(f"{name}" + (f"  ECE {ece:.3f}" if ece is not None else ""), fontsize=8, color=colour[name])
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.tick_params(labelsize=7, labelbottom=False)
        if i % cols == 0:
            ax.set_ylabel("accuracy", fontsize=8)
        else:
            ax.tick_params(labelleft=False)
        edges = np.asarray(v["confidence_histogram"]["edges"])
        counts = np.asarray(v["confidence_histogram"]["correct"]) + np.asarray(v["confidence_histogram"]["wrong"])
        hist.bar((edges[1:] + edges[:-1]) / 2, counts, width=np.diff(edges), color=colour[name], alpha=0.5)
        hist.tick_params(labelsize=6)
        hist.set_xlabel("confidence", fontsize=7)
        if i == 0:
            hist.set_ylabel("items", fontsize=7)
            ax.legend(fontsize=6, loc="upper left", frameon=False)
    fig.suptitle(f"{task}: reliability per variant (gap bars to the diagonal; band: relplot bootstrap)", fontsize=9)
    return _save(fig, folder, key, f"Reliability per variant, {task}")


def confidence_histograms(block: dict[str, Any], task: str, folder: Path, key: str) -> Figure:
    """Per variant, histograms of confidence for correct and wrong answers."""
    plt = _pyplot()
    names = list(block["variants"])
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 0.6, 3.0), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        h = block["variants"][name]["confidence_histogram"]
        edges = np.asarray(h["edges"])
        mid, width = (edges[1:] + edges[:-1]) / 2, np.diff(edges)
        ax.bar(mid, h["correct"], width=width, color="tab:green", alpha=0.6, label="correct")
        ax.bar(mid, h["wrong"], width=width, color="tab:red", alpha=0.6, label="wrong")
        ax.set_title(name, fontsize=8, color=colours(names)[name])
        ax.set_xlabel("confidence", fontsize=8)
    axes[0][0].set_ylabel("items")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{task}: confidence of correct and wrong answers", fontsize=9, y=1.02)
    return _save(fig, folder, key, f"Confidence histograms, {task}")


def shift_by_confidence(block: dict[str, Any], task: str, folder: Path, key: str) -> Figure | None:
    """Mean |Δp(gold)| and mean JS distance per reference-confidence bin, one line per variant (Study B)."""
    if not block["paired"]:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    colour = colours(list(block["variants"]))
    for name, p in block["paired"].items():
        rows = p["analysis"]["stratified"]["bins"]
        x = [(r["ref_confidence_low"] + r["ref_confidence_high"]) / 2 for r in rows]
        left.plot(x, [r["mean_abs_delta_p_gold"] for r in rows], marker="o", label=name, color=colour.get(name))
        right.plot(x, [r["mean_js_distance"] for r in rows], marker="o", label=name, color=colour.get(name))
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


def sensitivity_figure(data: dict[str, Any], folder: Path, key: str) -> Figure:
    """A sensitivity run (``sensitivity.json``): units on x, ΔNLL (top) and ΔECE (bottom) with their intervals,
    one series per task; the dashed line is zero (no change from the reference)."""
    plt = _pyplot()
    tasks = list(data["tasks"])
    units = [u["name"] for u in data["units"]]
    x = np.arange(len(units))
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.28 * len(units) + 2), 5.6), sharex=True)
    width = 0.8 / max(len(tasks), 1)
    for t, task in enumerate(tasks):
        block = data["tasks"][task]["units"]
        for ax, metric in zip(axes, ("nll", "ece")):
            est = np.array([block[u][metric]["estimate"] for u in units])
            low = np.array([block[u][metric]["low"] for u in units])
            high = np.array([block[u][metric]["high"] for u in units])
            ax.errorbar(x + (t - (len(tasks) - 1) / 2) * width, est, yerr=[est - low, high - est], fmt="o", ms=3,
                        capsize=2, label=f"{task} ({data['tasks'][task]['n']} items)")
    for ax, label in zip(axes, ("Δ NLL (unit quantized − reference)", "Δ ECE (unit quantized − reference)")):
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel(label, fontsize=8)
    axes[1].set_xticks(x, units, rotation=90, fontsize=7)
    axes[0].legend(fontsize=7)
    title = f"Calibration sensitivity: {data['recipe']}, one {data['unit']} unit at a time"
    fig.suptitle(title, fontsize=9)
    return _save(fig, folder, key, title)


def spread(values: list[float], gap: float) -> list[float]:
    """Label positions for sorted ``values``, at least ``gap`` apart: labels that would collide form a stack
    centred on their values' mean; a label with room stays at its value."""
    stacks: list[list[float]] = []
    for v in values:
        stacks.append([v])
        while len(stacks) > 1 and _bottom(stacks[-2], gap) + gap * len(stacks[-2]) > _bottom(stacks[-1], gap):
            top = stacks.pop()
            stacks[-1] += top
    return [_bottom(st, gap) + gap * i for st in stacks for i in range(len(st))]


def _bottom(stack: list[float], gap: float) -> float:
    return float(np.mean(stack)) - gap * (len(stack) - 1) / 2


def pareto(points: list[dict[str, Any]], task: str, folder: Path, key: str) -> Figure:
    """Bits per weight as stored (x) against ECE (y) per variant: filled markers before temperature scaling, hollow
    after (joined by a line), each variant in its colour of the other figures, its accuracy in its label; the
    reference is the star; a variant that also quantizes activations or its KV cache at run time says so in its label
    (``formats``: the weight bits do not count them). ``points``: ``name``, ``bits``, ``ece``, ``ece_after`` (or None),
    ``acc``, ``reference`` (bool), ``formats`` (or None)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ordered = sorted(points, key=lambda p: not p["reference"])  # the reference first: black, as elsewhere
    palette = colours([p["name"] for p in ordered])
    for p in points:
        colour = palette[p["name"]]
        marker = "*" if p["reference"] else "o"
        ax.scatter([p["bits"]], [p["ece"]], c=[colour], marker=marker, s=160 if p["reference"] else 50,
                   edgecolors="black", linewidths=0.6, zorder=3)
        if p.get("ece_after") is not None:
            ax.plot([p["bits"], p["bits"]], [p["ece"], p["ece_after"]], color="grey", lw=0.8, zorder=2)
            ax.scatter([p["bits"]], [p["ece_after"]], facecolors="none", edgecolors=[colour], marker=marker,
                       s=160 if p["reference"] else 50, zorder=3)
    # variants crowd at 3-5 bits beside a 16- or 32-bit reference: a log2 axis, and labels stacked apart at the right of
    # their points (joined to them by a thin line), so equal or near bits never print one name over another
    ax.set_xscale("log", base=2)
    bits = [p["bits"] for p in points]
    ticks = [t for t in (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32) if min(bits) / 1.1 <= t <= max(bits) * 1.1]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    y_low, y_high = ax.get_ylim()
    labels = sorted(points, key=lambda p: p["ece"])
    spots = spread([p["ece"] for p in labels], gap=0.06 * (y_high - y_low))
    for p, y in zip(labels, spots):
        extra = f", {p['formats']}" if p.get("formats") else ""  # run-time formats the weight bits do not count
        ax.annotate(f"{p['name']} (acc {p['acc']:.2f}{extra})", (p["bits"], p["ece"]), xytext=(p["bits"] * 1.12, y), fontsize=6, va="center",
                    arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})
    ax.set_xlim(min(bits) / 1.1, max(bits) * 2.2)
    ax.set(xlabel="bits per weight as stored (block linears, log scale; run-time formats in the labels)",
           ylabel="ECE (filled: as is; hollow: after temperature scaling)")
    ax.set_title(f"{task}: size against calibration", fontsize=9)
    return _save(fig, folder, key, f"Bits per weight against ECE, {task}")
