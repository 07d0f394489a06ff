"""A study's variant exported as a checkpoint that carries its fitted temperature.

The study fits a temperature per variant and task on the variant's choice scores (temperature scaling, Guo et al.
2017: ``p_j ∝ exp(s_j / T)``; :mod:`quantcal.analysis.recalibration`; ``T`` fitted on all the task's items is what a
deployment uses, the cross-fitted ones are what the report's "after" numbers use). :func:`export_checkpoint` writes
the variant in its deployable quantized format when its recipe has one (:mod:`quantcal.checkpoints.model_export`:
compressed-tensors for RTN / GPTQ / AWQ, bitsandbytes for ``bnb``), else as the float weights the study scored
(``save_pretrained``), and writes the temperature twice:

- ``generation_config.json``: ``temperature`` (and ``do_sample: true``, without which transformers ignores it), so
  a server that samples from the model applies it;
- ``quantcal-variant.json``: the variant's record (recipe, bits, the build's own record when it has one) with a
  ``temperature`` block: its value, the task, the normalization, the fold temperatures, ECE before and after, the
  study and the number of items.

Scope, stated in the record too: the temperature was fitted on whole-answer scores over a task's choices. A
generation temperature divides each token's logits over the whole vocabulary; for single-token answers scored
without normalization that is the same division of the answer's logit, but the softmax runs over the vocabulary
rather than the choices, and for multi-token answers the two differ. Use the record's value with the choice scores
(as quantcal does) for the calibration the report measured.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

from quantcal.sources.cache import atomic_dir
from quantcal.errors import QuantcalError
from quantcal.checkpoints.formats import deployable_format, simulated
from quantcal.checkpoints.model_export import export_variant
from quantcal.sources.models import resolve_source
from quantcal.recipes.build import build_variant, variant_meta
from quantcal.study.spec import REFERENCE_NAME, StudySpec, folder_name
from quantcal.variants.definition import LoadOptions, VariantDef, load_variant_model


@dataclass(frozen=True)
class ExportedCheckpoint:
    """A study's variant written by :func:`export_checkpoint`."""

    out: Path
    variant: str
    task: str  # whose temperature ("" when none was fitted)
    temperature: Optional[float]
    record: dict[str, Any]
    format: str = "float"  # float | compressed-tensors | bitsandbytes


def study_temperature(results: dict[str, Any], variant: str, task: Optional[str] = None,
                      normalization: Optional[str] = None) -> tuple[str, str, dict[str, Any]]:
    """``(task, normalization, recalibration block)`` of ``variant`` in a report's ``results.json``."""
    tasks = results.get("tasks", {})
    with_variant = [t for t, by_norm in tasks.items() if any(variant in b["variants"] for b in by_norm.values())]
    if not with_variant:
        names = sorted({v for by_norm in tasks.values() for b in by_norm.values() for v in b["variants"]})
        raise QuantcalError(f"no variant {variant!r} in this report; it has {', '.join(names)}")
    if task is None:
        if len(with_variant) > 1:
            raise QuantcalError(f"{variant} has a temperature per task: choose `task` ({', '.join(with_variant)})")
        task = with_variant[0]
    if task not in with_variant:
        raise QuantcalError(f"{variant} was not scored on {task!r}; its tasks: {', '.join(with_variant)}")
    norm = normalization or next(iter(tasks[task]))
    if norm not in tasks[task]:
        raise QuantcalError(f"`normalization` {norm!r} is not in this report ({', '.join(tasks[task])})")
    block = tasks[task][norm]["variants"][variant].get("recalibration")
    if block is None:
        raise QuantcalError(f"{variant} · {task}: no temperature was fitted (recalibration off, or too few items)")
    if block["at_bound"]:
        raise QuantcalError(f"{variant} · {task}: the fitted temperature {block['temperature']:.3g} sits at its search "
                            "bound (it flattens the model rather than calibrating it); nothing worth exporting")
    return task, norm, block


def variant_definition(spec: StudySpec, variant: str) -> VariantDef:
    """The study's definition of ``variant`` (the reference, a variant, or one build ``NAME@seedS``)."""
    if variant == REFERENCE_NAME:
        return VariantDef(spec.reference)
    for v in spec.variants:
        for name, recipe in v.builds():
            if name == variant:
                return spec.definition(v, recipe)
    raise QuantcalError(f"no variant {variant!r} in the study")


FORMS = ("auto", "quantized", "float")


def checkpoint_form(defn: VariantDef, form: str) -> Optional[str]:
    """The quantized format ``defn`` is written in for ``form`` (``auto``: the recipe's deployable format when it has
    one, else float), or ``None`` for a float checkpoint."""
    if form not in FORMS:
        raise QuantcalError(f"`form` {form!r}: choose one of {', '.join(FORMS)}")
    recipe = defn.recipe_spec
    fmt = deployable_format(recipe) if recipe is not None and defn.adapter is None else None
    if form == "quantized" and fmt is None:
        what = "an adapter's variant" if defn.adapter is not None else (recipe.key if recipe else "the reference")
        raise QuantcalError(f"{what} has no quantized checkpoint format (exportable: rtn, gptq with desc_act=false, "
                            "awq, fp8, w8a8, nvfp4, mxfp4, kv, bnb); use `form` float")
    return None if form == "float" else fmt


def temperature_record(results: dict[str, Any], spec: StudySpec, variant: str, task: str, norm: str,
                       block: dict[str, Any]) -> dict[str, Any]:
    """The ``temperature`` block of an exported variant's record: the value and where it came from."""
    return {
        "value": float(block["temperature"]), "task": task, "normalization": norm,
        "fold_temperatures": block["fold_temperatures"], "folds": block["k"], "ece_before": block["before"].get("ece"),
        "ece_after_cross_fitted": block["after"].get("ece"), "n": results["tasks"][task][norm]["variants"][variant]["n"],
        "study": spec.name,
        "scope": "choice scores: p_j proportional to exp(s_j / T), s_j the answer's log-likelihood "
                 f"(normalization {norm}); see quantcal.study.deployment",
    }


def set_temperature(folder: Path, temperature: Optional[float]) -> None:
    """Write ``temperature`` (and ``do_sample: true``) into ``folder``'s ``generation_config.json``."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(folder)
    except OSError:
        config = GenerationConfig()
    if temperature is not None:
        config.temperature, config.do_sample = temperature, True
    config.save_pretrained(folder)


def export_checkpoint(report_dir: Union[str, Path], variant: str, out: Union[str, Path], *, task: Optional[str] = None,
                      normalization: Optional[str] = None, form: str = "auto", dtype: str = "float32",
                      require_temperature: bool = True,
                      say: Callable[[str], None] = lambda m: None) -> ExportedCheckpoint:
    """Save ``variant`` of the study in ``report_dir`` to ``out`` with its fitted temperature (module doc).

    ``form``: ``quantized`` writes the recipe's deployable format (:mod:`quantcal.checkpoints.model_export`: compressed-tensors
    for RTN/GPTQ/AWQ, bitsandbytes for ``bnb``), ``float`` the variant's float weights (``save_pretrained``),
    ``auto`` the first when the recipe has one. ``require_temperature=False`` writes the checkpoint without a
    temperature when none was fitted (the record says why) instead of refusing."""
    report_dir, out = Path(report_dir), Path(out)
    results_file, study_file = report_dir / "results.json", report_dir / "study.json"
    for f in (results_file, study_file):
        if not f.is_file():
            raise QuantcalError(f"{report_dir}: no {f.name} (a study's report folder has both)")
    if out.exists() and any(out.iterdir()):
        raise QuantcalError(f"{out}: exists and is not empty; choose a new folder")
    results = json.loads(results_file.read_text())
    spec = StudySpec.model_validate_json(study_file.read_text())
    temperature: Optional[float] = None
    try:
        task, norm, block = study_temperature(results, variant, task, normalization)
        fitted: dict[str, Any] = temperature_record(results, spec, variant, task, norm, block)
        temperature = fitted["value"]
    except QuantcalError as exc:
        if require_temperature or str(exc).startswith("no variant"):
            raise
        task, fitted = task or "", {"value": None, "why_none": str(exc)}
    defn = variant_definition(spec, variant)
    if defn.deploy_form == "nf4-native":
        raise QuantcalError(f"{variant}: an unmerged adapter on 4-bit modules is not a plain checkpoint; use deploy merged")
    fmt = checkpoint_form(defn, form)
    source = resolve_source(defn.base_spec())
    if fmt is not None:
        assert defn.recipe_spec is not None
        exported = export_variant(source, defn.recipe_spec, out, dtype, say)
        record = {**exported.record, "variant": variant, "definition": defn.describe(), "temperature": fitted}
        (out / "quantcal-variant.json").write_text(json.dumps(record, indent=2, default=str))
        set_temperature(out, temperature)
    else:
        if defn.recipe_spec is not None and defn.recipe_spec.params.get("mode") == "native":
            defn = replace(defn, recipe=simulated(defn.recipe_spec).key)  # the same grid as float weights
        say(f"loading {defn.describe()}")
        loaded = load_variant_model(defn, source, LoadOptions(dtype=dtype), say)
        build = variant_meta(build_variant(source, defn.recipe_spec)) if defn.recipe_spec is not None else {}
        record = {
            **build, "variant": variant, "definition": defn.describe(), "model": source.to_json() | {"location": None},
            "bits_per_weight": build.get("bits_per_weight", 16.0), "export": {"format": "float", "dtype": dtype},
            "temperature": fitted,
        }
        with atomic_dir(out) as scratch:
            loaded.model.save_pretrained(scratch, safe_serialization=True)
            loaded.tokenizer.save_pretrained(scratch)
            set_temperature(scratch, temperature)
            (scratch / "quantcal-variant.json").write_text(json.dumps(record, indent=2, default=str))
    shown = f"temperature {temperature:.4f} ({task}, normalization {norm})" if temperature is not None else "no temperature"
    say(f"{variant}: written to {out} ({fmt or 'float'}) with {shown}")
    return ExportedCheckpoint(out, variant, task, temperature, record, fmt or "float")


def export_study(report_dir: Union[str, Path], spec: StudySpec,
                 say: Callable[[str], None] = lambda m: None) -> tuple[list[ExportedCheckpoint], dict[str, str]]:
    """The study's ``export`` block: each named variant written to ``report_dir/checkpoints/NAME`` with its fitted
    temperature (on ``export.task``, else the study's first task; none when none was fitted, said in the record).
    A checkpoint already there with the same temperature and form is kept (a resumed study exports only what is
    new); one with another temperature (the study scored more items since) is written again. Returns the
    checkpoints and, per variant that could not be exported, why (the others are still written)."""
    if spec.export is None:
        return [], {}
    report_dir = Path(report_dir)
    results = json.loads((report_dir / "results.json").read_text())
    task = spec.export.task or next(iter(results.get("tasks", {})), None)
    done: list[ExportedCheckpoint] = []
    failed: dict[str, str] = {}
    for name in spec.exported_variants():
        out = report_dir / "checkpoints" / folder_name(name)
        try:
            if _current(out, results, name, task, spec.export.form):
                say(f"{name}: already exported to {out}")
                continue
            if out.exists():
                shutil.rmtree(out)
            done.append(export_checkpoint(report_dir, name, out, task=task, form=spec.export.form,
                                          dtype=spec.export.dtype, require_temperature=False, say=say))
        except QuantcalError as exc:
            failed[name] = str(exc)
            say(f"{name}: not exported: {exc}")
    return done, failed


def _current(out: Path, results: dict[str, Any], variant: str, task: Optional[str], form: str) -> bool:
    """Whether ``out`` holds ``variant``'s export with the temperature ``results`` has now (and the asked form)."""
    record_file = out / "quantcal-variant.json"
    if not record_file.is_file():
        return False
    record = json.loads(record_file.read_text())
    try:
        _, _, block = study_temperature(results, variant, task)
        now: Optional[float] = float(block["temperature"])
    except QuantcalError:
        now = None
    fmt = record.get("export", {}).get("format", "float")
    same_form = form == "auto" or (form == "float") == (fmt == "float")
    return record.get("temperature", {}).get("value") == now and same_form
