"""Layer-wise calibration sensitivity: quantize one unit at a time, everything else in float, and score it.

``run_sensitivity`` builds the recipe once in full (a cached variant, as ``quantcal quantize`` builds it), loads the
reference once, and for each unit (a decoder block, or a block's attention or MLP linears:
:mod:`quantcal.recipes.units`) swaps that unit's quantized weights in, scores the ranking items, and swaps them
back out (the reference's own tensors, so it is restored exactly). The full variant is scored too, for comparison.
A unit's passes start at its own block, from the reference's hidden states recorded once
(:mod:`quantcal.engines.depth_replay`: the same scores bit for bit, about half the compute over all units). Every score
goes to a store (``OUT/sensitivity.sqlite``), one run per (unit, task), so an interrupted run resumes and a
finished one answers at once. The paired analysis per unit is :mod:`quantcal.analysis.sensitivity`'s; the
result is written as ``sensitivity.json`` (what the ``mixed`` recipe ranks from), ``sensitivity.md`` (a table) and
``figures/sensitivity.png``/``.svg`` (units on x, ΔNLL and ΔECE on y, with intervals).

The items are the *ranking split*: a mixed recipe ranked on them refuses to be evaluated on them, so keep the
evaluation items apart (``limit`` here, ``skip`` in the evaluation).
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from quantcal.analysis.sensitivity import (SENSITIVITY_METRICS, family_shares, merge_runs, rank_units,
                                          ranking_from_json, read_sensitivity, rows_from_json, sensitivity_file,
                                          unit_sensitivity)
from quantcal.engines.depth_replay import DepthReplay
from quantcal.errors import QuantcalError
from quantcal.faults import check_writable_dir, write_text_atomic
from quantcal.study.jobs import Job, ScoringOptions, run_job
from quantcal.sources.models import DEFAULT_MODEL, LoadedModel, resolve_dtype, resolve_source
from quantcal.recipes import parse_recipe, recipe_identity
from quantcal.recipes.units import UNIT_KINDS, Unit, model_units, swapped, unit_block
from quantcal.recipes.build import build_variant, checkpoint_tensors, variant_key, variant_meta
from quantcal.store.database import open_store
from quantcal.analysis.summary import align
from quantcal.tasks import Task, get_task, load_items
from quantcal.variants.definition import LoadOptions, ModelHolder, Phase, VariantDef, load_variant_model

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SensitivityResult:
    """A finished sensitivity run: ``data`` is ``sensitivity.json``; files under ``out``."""

    out: Path
    data: dict[str, Any]

    @property
    def json_path(self) -> Path:
        return self.out / "sensitivity.json"

    def ranking(self, metric: str = "nll", combine: str = "share") -> list[tuple[str, float]]:
        """Units by decreasing harm (Δmetric signed so larger is worse; over several tasks, each unit's share of the
        whole recipe's Δ averaged, or with ``combine="mean"`` the raw Δs averaged: see
        :func:`quantcal.analysis.sensitivity.combine_harms`)."""
        return ranking_from_json(self.data, metric, combine)


def parse_task_specs(tasks: Union[str, Sequence[str]], data_file: Union[str, Path, None]) -> list[tuple[Task, Optional[str]]]:
    """``NAME`` or ``NAME=FILE`` each (a comma list is allowed); ``data_file`` goes with a single task."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise QuantcalError("`tasks` is empty")
    if data_file is not None and len(names) != 1:
        raise QuantcalError("`data_file` goes with exactly one task (or write NAME=FILE for each)")
    out = []
    for text in names:
        name, _, path = text.partition("=")
        path = path or (str(data_file) if data_file is not None else "")
        if path and not Path(path).is_file():
            raise QuantcalError(f"{path}: file not found")
        task = get_task(name.strip())
        if task.loader is not None:
            raise QuantcalError(f"{name}: sensitivity runs on the built-in tasks (lm-eval tasks are not supported here)")
        out.append((task, path or None))
    return out


def run_sensitivity(
    model: str = DEFAULT_MODEL,
    recipe: str = "rtn:bits=3,group_size=64",
    tasks: Union[str, Sequence[str]] = ("piqa",),
    *,
    data_file: Union[str, Path, None] = None,
    limit: Optional[int] = None,
    unit: str = "block",
    out: Union[str, Path] = "quantcal-sensitivity",
    normalization: str = "none",
    batch_size: int = 64,
    max_batch_tokens: Union[int, None, str] = "auto",
    device: str = "cpu",
    dtype: str = "auto",
    resamples: int = 1000,
    seed: int = 0,
    replay: bool = True,
    replay_bytes: Optional[int] = None,
    progress: Optional[Callable[[str, int], Any]] = None,
    say: Callable[[str], None] = lambda message: None,
    phase: Optional[Phase] = None,
) -> SensitivityResult:
    """Quantize each unit alone with ``recipe`` and measure the paired change of NLL, ECE, Brier, p(gold) and
    accuracy against the reference on ``limit`` items of each task (the ranking split); see the module doc.

    ``replay`` (default) records the reference's hidden states entering the blocks once and starts each unit's
    passes at its own block (:mod:`quantcal.engines.depth_replay`; the scores are the same bit for bit, about half the
    compute); ``replay_bytes`` caps the host memory those states take (default: a quarter of the free memory).

    Example:
        >>> r = run_sensitivity("smollm2-135m-instruct", "rtn:bits=3,group_size=64", "piqa=piqa.jsonl",
        ...                     limit=200, out="sens")                                      # doctest: +SKIP
        >>> r.ranking("nll")[:3]                                                            # doctest: +SKIP
    """
    if unit not in UNIT_KINDS:
        raise QuantcalError(f"unknown unit {unit!r}; units: {', '.join(UNIT_KINDS)}")
    if limit is not None and limit < 1:
        raise QuantcalError(f"`limit` must be at least 1, got {limit}")
    resolve_dtype(dtype, device)  # one line for a device or dtype this machine cannot use, before any build
    spec = parse_recipe(recipe)
    if spec.family == "mixed" or spec.params.get("mode", "simulated") != "simulated":
        raise QuantcalError(f"sensitivity swaps a simulated recipe's weights unit by unit; {spec.key} is not one")
    specs = parse_task_specs(tasks, data_file)
    out = Path(out)
    check_writable_dir(out)
    source = resolve_source(model)
    opts = ScoringOptions(batch_size, max_batch_tokens)
    with (phase or (lambda label: nullcontext()))(f"building {spec.key}"):
        built = build_variant(source, spec, progress=say)
    meta = variant_meta(built)
    reference: list[LoadedModel] = []

    def load_reference() -> LoadedModel:
        if not reference:
            reference.append(load_variant_model(VariantDef(model), source, LoadOptions(dtype, device), say))
        return reference[0]

    units = model_units(load_reference().model, unit)
    variant_config = {"recipe": spec.key, **recipe_identity(spec)}
    start = time.perf_counter()
    with open_store(out / "sensitivity.sqlite") as db:
        def score(name: str, holder: ModelHolder, config: dict[str, Any], store: Any = db, note: str = "") -> None:
            for task, path in specs:
                job = Job(name, source, task, path, limit, None, config, dtype)
                result = run_job(store, job, opts, holder, progress, say)
                say(result.summary(f"{name} · {job.label}" + (f" ({note})" if note else "")))

        ref_name = source.name
        score(ref_name, ModelHolder(load_reference), {})
        score(spec.slug, ModelHolder(lambda: _full_variant(built, dtype, device, source)), variant_config)
        replayer: list[DepthReplay] = []

        def prepared(u: Unit) -> tuple[LoadedModel, Optional[DepthReplay]]:
            """The reference, and (on the first unit that has items to score) its recorded block inputs."""
            lm = load_reference()
            if replay and not replayer:
                replayer.append(DepthReplay(lm.model, replay_bytes or _default_replay_bytes()))
                (out / "replay-scratch.sqlite").unlink(missing_ok=True)  # a crashed recording's leftovers
                with open_store(out / "replay-scratch.sqlite") as scratch, replayer[0].recording():
                    score(ref_name, ModelHolder(load_reference), {}, scratch, "recording block inputs")
                (out / "replay-scratch.sqlite").unlink(missing_ok=True)
                stats = replayer[0].stats
                say(f"recorded the reference's inputs to blocks {_spans(stats.checkpoints)} "
                    f"({stats.recorded_bytes / 2**20:,.0f} MiB)")
            return lm, (replayer[0] if replayer else None)

        for i, u in enumerate(units, start=1):
            say(f"unit {i}/{len(units)}: {u.name} ({len(u.layers)} linears, {u.params:,} weights)")
            with ExitStack() as stack:
                holder = ModelHolder(lambda u=u: _with_unit(stack, *prepared(u), built, u))
                score(unit_variant(spec.slug, u.name), holder,
                      {**variant_config, "sensitivity_unit": u.name, "unit_layers": list(u.layers)})
        data = _analyse(db, specs, limit, ref_name, spec, units, unit, normalization, resamples, seed)
    data.update({
        "kind": "quantcal-sensitivity", "version": FORMAT_VERSION, "model": source.to_json() | {"location": None},
        "fingerprint": source.fingerprint, "recipe": spec.key, "recipe_build": variant_key(source, spec),
        "recipe_bits_per_weight": meta["bits_per_weight"], "unit": unit, "normalization": normalization,
        "limit": limit, "resamples": resamples, "seed": seed, "seconds": time.perf_counter() - start,
        "units": [_unit_json(u, load_reference().model) for u in units],
        "replay": asdict(replayer[0].stats) if replayer else None,
    })
    write_outputs(out, data)
    return SensitivityResult(out, data)


def unit_variant(slug: str, unit: str) -> str:
    """The store's name for the recipe applied to one unit only: ``rtn-w3g64@L12``."""
    return f"{slug}@{unit}"


def _with_unit(stack: ExitStack, lm: LoadedModel, replay: Optional[DepthReplay], built: Path, u: Unit) -> LoadedModel:
    weights = checkpoint_tensors(built, [f"{n}.weight" for n in u.layers])
    stack.enter_context(swapped(lm.model, {k.removesuffix(".weight"): w for k, w in weights.items()}))
    if replay is not None:
        stack.enter_context(replay.replaying(unit_block(u)))
    return lm


def _default_replay_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available // 4)


def _spans(blocks: Sequence[int]) -> str:
    return ", ".join(map(str, blocks)) if blocks else "none (over the memory cap: every pass runs in full)"


def _full_variant(built: Path, dtype: str, device: str, source: Any) -> LoadedModel:
    from quantcal.sources.models import ModelSource, load_model

    loaded = load_model(ModelSource(str(built), "local", str(built), None, f"variant:{built.name}"), dtype, device)
    return LoadedModel(loaded.model, loaded.tokenizer, source)


def _unit_json(u: Unit, model: Any) -> dict[str, Any]:
    modules = dict(model.named_modules())
    return {"name": u.name, "params": u.params,
            "layers": [{"name": n, "in_features": modules[n].in_features, "numel": modules[n].weight.numel()}
                       for n in u.layers]}


def _analyse(db: Any, specs: list[tuple[Task, Optional[str]]], limit: Optional[int], ref_name: str, spec: Any,
             units: list[Unit], unit: str, normalization: str, resamples: int, seed: int) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for task, path in specs:
        items = load_items(task, path, limit)
        rows = []
        for u in units:
            a = align(db, ref_name, unit_variant(spec.slug, u.name), task.name, normalization)
            rows.append(unit_sensitivity(u.name, a.ref.probs, a.var.probs, a.ref.labels, n_resamples=resamples, seed=seed))
        full = align(db, ref_name, spec.slug, task.name, normalization)
        whole = unit_sensitivity("all", full.ref.probs, full.var.probs, full.ref.labels, n_resamples=resamples, seed=seed)
        tasks[task.name] = {
            "n": len(items), "limit": limit, "data_file": path, "item_hashes": sorted({it.content_hash for it in items}),
            "reference": {"acc": float((full.ref.probs.argmax(1) == full.ref.labels).mean())},
            "full_recipe": whole.to_json(),
            "units": {r.unit: r.to_json() for r in rows},
            "top_units": [name for name, _ in rank_units([rows], "nll")[:5]],
            **({"family_share_nll": family_shares(rows, "nll"), "family_share_ece": family_shares(rows, "ece")}
               if unit == "linear" else {}),
        }
    return {"tasks": tasks}


def table_markdown(data: dict[str, Any]) -> str:
    """One table per task: each unit's ΔNLL, ΔECE, ΔBrier, Δp(gold), Δacc with intervals, and mean JS distance."""
    lines = [f"# Calibration sensitivity: {data['recipe']} on {data['model'].get('spec')} ({data['unit']} units)", ""]
    for name, block in data["tasks"].items():
        lines += [f"## {name} ({block['n']} items)", "",
                  "| unit | ΔNLL | ΔECE | ΔBrier | Δp(gold) | Δacc | mean JS |", "|---|---|---|---|---|---|---|"]
        entries = list(block["units"].items()) + [("all units (the full recipe)", block["full_recipe"])]
        for unit, e in entries:
            cells = [f"{e[m]['estimate']:+.4f} [{e[m]['low']:+.4f}, {e[m]['high']:+.4f}]" for m in SENSITIVITY_METRICS]
            lines.append(f"| {unit} | " + " | ".join(cells) + f" | {e['mean_js']:.4f} |")
        lines += ["", f"Most harmful (ΔNLL): {', '.join(block['top_units'])}"]
        if "family_share_nll" in block:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in block["family_share_nll"].items())
            lines.append(f"Share of the summed ΔNLL harm: {shares}")
        lines.append("")
    if len(data["tasks"]) > 1:
        lines += ["## All tasks together (what a mixed recipe ranked on this file protects first)", ""]
        for combine, how in (("share", "each task's ΔNLL as a share of the full recipe's ΔNLL there, averaged"),
                             ("mean", "the raw ΔNLLs averaged")):
            try:
                top = ", ".join(f"{name} ({harm:+.3f})" for name, harm in ranking_from_json(data, "nll", combine)[:10])
            except QuantcalError as exc:
                top = f"not available: {exc}"
            lines.append(f"- combine={combine} ({how}): {top}")
        lines.append("")
    return "\n".join(lines)


def write_outputs(out: Path, data: dict[str, Any]) -> None:
    """``sensitivity.json``, ``sensitivity.md`` and the figure, each written whole or not at all."""
    from quantcal.report.figures import sensitivity_figure

    write_text_atomic(out / "sensitivity.json", json.dumps(data, indent=1))
    write_text_atomic(out / "sensitivity.md", table_markdown(data))
    sensitivity_figure(data, out / "figures", "sensitivity")


def merge_sensitivity(runs: Sequence[Union[str, Path]], out: Union[str, Path]) -> SensitivityResult:
    """Sensitivity runs of one recipe on different tasks (run apart: on other days or machines) as one ranking in
    ``out`` (``sensitivity.json``, the table and the figure; no store): a ``mixed`` recipe ranked on it combines
    the harm over all the tasks (``combine=``) and refuses all their items. See :func:`quantcal.analysis.sensitivity.merge_runs`.

    Example:
        >>> merge_sensitivity(["sens-piqa", "sens-hellaswag"], "sens-both").data["tasks"].keys()  # doctest: +SKIP
        dict_keys(['piqa', 'hellaswag'])
    """
    out = Path(out)
    files = [sensitivity_file(r) for r in runs]
    if out.resolve() in {f.parent.resolve() for f in files}:
        raise QuantcalError(f"{out}: is one of the runs being merged; write the merge to another folder")
    data = merge_runs([(str(f.parent), read_sensitivity(f)) for f in files])
    check_writable_dir(out)
    write_outputs(out, data)
    return SensitivityResult(out, data)


def load_sensitivity(path: Union[str, Path]) -> SensitivityResult:
    """A sensitivity run from its folder or its ``sensitivity.json``."""
    file = sensitivity_file(path)
    return SensitivityResult(file.parent, read_sensitivity(file))


__all__ = ["SensitivityResult", "load_sensitivity", "merge_sensitivity", "run_sensitivity", "table_markdown"]
