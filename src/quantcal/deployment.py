"""A study's variant exported as a checkpoint that carries its fitted temperature.

The study fits a temperature per variant and task on the variant's choice scores (temperature scaling, Guo et al.
2017: ``p_j ∝ exp(s_j / T)``; :mod:`quantcal.analysis.recalibration`; ``T`` fitted on all the task's items is what a
deployment uses, the cross-fitted ones are what the report's "after" numbers use). :func:`export_checkpoint` loads
the variant as the study scored it, saves it with ``save_pretrained``, and writes the temperature twice:

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from quantcal.cache import atomic_dir
from quantcal.errors import QuantcalError
from quantcal.models import resolve_source
from quantcal.recipes.variants import build_variant, variant_meta
from quantcal.study.spec import REFERENCE_NAME, StudySpec
from quantcal.variant import LoadOptions, VariantDef, load_variant_model


@dataclass(frozen=True)
class ExportedCheckpoint:
    out: Path
    variant: str
    task: str
    temperature: float
    record: dict[str, Any]


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


def export_checkpoint(report_dir: Union[str, Path], variant: str, out: Union[str, Path], *, task: Optional[str] = None,
                      normalization: Optional[str] = None, say: Callable[[str], None] = lambda m: None) -> ExportedCheckpoint:
    """Save ``variant`` of the study in ``report_dir`` to ``out`` with its fitted temperature (module doc)."""
    report_dir, out = Path(report_dir), Path(out)
    results_file, study_file = report_dir / "results.json", report_dir / "study.json"
    for f in (results_file, study_file):
        if not f.is_file():
            raise QuantcalError(f"{report_dir}: no {f.name} (a study's report folder has both)")
    if out.exists() and any(out.iterdir()):
        raise QuantcalError(f"{out}: exists and is not empty; choose a new folder")
    results = json.loads(results_file.read_text())
    spec = StudySpec.model_validate_json(study_file.read_text())
    task, norm, block = study_temperature(results, variant, task, normalization)
    defn = variant_definition(spec, variant)
    if defn.deploy_form == "nf4-native":
        raise QuantcalError(f"{variant}: an unmerged adapter on 4-bit modules is not a plain checkpoint; use deploy merged")
    source = resolve_source(defn.base_spec())
    say(f"loading {defn.describe()}")
    loaded = load_variant_model(defn, source, LoadOptions(dtype="float32"), say)
    build = variant_meta(build_variant(source, defn.recipe_spec)) if defn.recipe_spec is not None else {}
    temperature = float(block["temperature"])
    record = {
        **build, "variant": variant, "definition": defn.describe(), "model": source.to_json() | {"location": None},
        "bits_per_weight": build.get("bits_per_weight", 16.0),
        "temperature": {
            "value": temperature, "task": task, "normalization": norm, "fold_temperatures": block["fold_temperatures"],
            "folds": block["k"], "ece_before": block["before"].get("ece"), "ece_after_cross_fitted": block["after"].get("ece"),
            "n": results["tasks"][task][norm]["variants"][variant]["n"], "study": spec.name,
            "scope": "choice scores: p_j proportional to exp(s_j / T), s_j the answer's log-likelihood "
                     f"(normalization {norm}); see quantcal.deployment",
        },
    }
    with atomic_dir(out) as scratch:
        loaded.model.generation_config.temperature = temperature
        loaded.model.generation_config.do_sample = True
        loaded.model.save_pretrained(scratch, safe_serialization=True)
        loaded.tokenizer.save_pretrained(scratch)
        (scratch / "quantcal-variant.json").write_text(json.dumps(record, indent=2, default=str))
    say(f"{variant}: written to {out} with temperature {temperature:.4f} ({task}, normalization {norm})")
    return ExportedCheckpoint(out, variant, task, temperature, record)
