"""How a variant's definition becomes a model to score: a base model, optionally a LoRA adapter in one of its
deployment forms, optionally a compression recipe (applied after the adapter is merged).

Used alike by ``quantcal eval`` and by the study runner, so one definition means the same model everywhere, and
the store's run configuration records every part of it (recipe key, adapter hash, deployment form).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from quantcal.errors import QuantcalError
from quantcal.evaluate import ModelHolder, ScoringOptions, default_loader
from quantcal.models import ModelSource, resolve_source


@dataclass(frozen=True)
class VariantDef:
    model: Optional[str] = None  # default: the adapter's recorded base
    recipe: Optional[str] = None
    adapter: Optional[str] = None
    deploy: Optional[str] = None  # adapter deployment form; default nf4 (what QLoRA serves), merged with a recipe

    @property
    def deploy_form(self) -> Optional[str]:
        if self.adapter is None:
            return None
        return self.deploy or ("merged" if self.recipe else "nf4")

    def check(self, adapter_exists: bool = True) -> None:
        """Cheap checks, before any model is loaded (``adapter_exists=False``: the adapter is trained later)."""
        if self.deploy is not None and self.adapter is None:
            raise QuantcalError("a deployment form (--deploy / deploy:) goes with an adapter")
        if self.recipe is not None:
            from quantcal.recipes import parse_recipe

            parse_recipe(self.recipe)
        if self.adapter is not None:
            from quantcal.finetune.deploy import adapter_dir, check_form

            if adapter_exists:
                adapter_dir(self.adapter)
            check_form(self.deploy_form or "")
            if self.recipe is not None and self.deploy_form != "merged":
                raise QuantcalError("a recipe after an adapter re-quantizes the merged model: use deploy form 'merged'")
        if self.model is None and self.adapter is None:
            raise QuantcalError("a variant needs a model, an adapter, or both")

    def base_spec(self) -> str:
        if self.model is not None:
            return self.model
        from quantcal.finetune.deploy import adapter_base_model

        assert self.adapter is not None
        return adapter_base_model(self.adapter)


def prepare(defn: VariantDef, options: ScoringOptions, say: Callable[[str], None] = lambda m: None,
            source: ModelSource | None = None) -> tuple[ModelSource, dict[str, Any], ModelHolder]:
    """The base model's source, the run-configuration entries that identify the variant, and a lazy loader."""
    defn.check()
    source = source or resolve_source(defn.base_spec())
    extra: dict[str, Any] = {}
    spec = None
    if defn.recipe is not None:
        from quantcal.recipes import parse_recipe

        spec = parse_recipe(defn.recipe)
        extra["recipe"] = spec.key
    if defn.adapter is not None:
        from quantcal.finetune.deploy import adapter_fingerprint, deployed_source, load_adapter_model, training_summary

        form = defn.deploy_form
        extra.update({"adapter": adapter_fingerprint(defn.adapter), "deploy": form,
                      "adapter_training": training_summary(defn.adapter)})
        if spec is None:
            holder = ModelHolder(lambda: load_adapter_model(defn.adapter, form, source.spec, options.dtype, options.device))
        else:
            from quantcal.recipes.variants import load_variant

            holder = ModelHolder(lambda: load_variant(deployed_source(source, defn.adapter, "merged"), spec,
                                                      options.dtype, options.device, progress=say))
    elif spec is not None:
        from quantcal.recipes.variants import load_variant

        holder = ModelHolder(lambda: load_variant(source, spec, options.dtype, options.device, progress=say))
    else:
        holder = ModelHolder(default_loader(source, options))
    return source, extra, holder
