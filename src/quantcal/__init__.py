"""quantcal: accuracy and calibration of compressed LLMs on zero-shot multiple-choice benchmarks.

The public API (:mod:`quantcal.api`), re-exported here and imported on first use, so ``import quantcal`` is quick.
Metric functions themselves live in :mod:`quantcal.metrics` (``quantcal.metrics.ece(probs, labels)``); the
store-level numbers are :func:`store_metrics` and :func:`compare`::

    import quantcal
    result = quantcal.evaluate("smollm2-135m-instruct", ["arithmetic"], limit=20)
    study = quantcal.run_study({"reference": "smollm2-135m-instruct",
                                "variants": [{"name": "rtn4", "recipe": "rtn:bits=4,group_size=64"}],
                                "tasks": [{"name": "arithmetic", "limit": 50}]})
    items = quantcal.load_items(study.output)
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("quantcal")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"

#: Public name -> the module that defines it.
_EXPORTS = {
    **{name: "quantcal.api" for name in (
        "evaluate", "run_study", "plan_study", "study_spec", "rebuild_report", "quantize", "load_items", "export", "store_metrics",
        "compare", "train_adapter", "holdout_items", "import_lm_eval", "default_store",
        "EvalResult", "TaskResult", "StudyPlan", "StudyResult", "RunMetrics", "PairedComparison", "Variant",
        "FinetuneResult", "ImportedRun", "DEFAULT_MODEL", "run_sensitivity", "load_sensitivity", "merge_sensitivity",
        "SensitivityResult",
        "export_checkpoint", "ExportedCheckpoint", "export_model", "ExportedModel", "verify_cache", "EntryCheck",
        "download", "evaluate_generation", "GenerationResult", "compare_generations", "GenerationComparison", "holds_generations")},
    "QuantcalError": "quantcal.errors",
    "StudySpec": "quantcal.study.spec",
    "VariantDef": "quantcal.variants.definition",
    "LoadOptions": "quantcal.variants.definition",
    "ScoringOptions": "quantcal.study.jobs",
    "Interval": "quantcal.metrics",
    "METRICS": "quantcal.metrics",
    "DEFAULT_METRICS": "quantcal.metrics",
    "TASKS": "quantcal.tasks",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantcal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
