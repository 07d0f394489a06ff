"""A trained adapter as a model to score, in the forms it can be deployed in.

- ``nf4``: the adapter on the 4-bit base it was trained on (what QLoRA serves). Computed in simulated form:
  the base's decoder-block linears on bitsandbytes' NF4 grid (the adapter's own block size and double
  quantization), the adapter merged into those float weights: ``W_nf4 + (alpha / r) B A``, the same function
  as the unmerged adapter on ``Linear4bit`` modules up to float rounding.
- ``nf4-native``: the adapter unmerged on bitsandbytes ``Linear4bit`` modules (slow on a CPU; the real thing).
- ``merged``: the adapter merged into the float base (serve without a quantized base).
- ``merged`` + a recipe: merged, then compressed again with any recipe (:mod:`quantcal.variants.definition` hands the merged
  checkpoint to the variant cache as the reference).

``nf4`` and ``merged`` are built once into safetensors checkpoints cached under a key of the base's
fingerprint, the adapter's file hashes and the form.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from quantcal.sources.cache import atomic_dir, cache_root, file_sha256
from quantcal.errors import QuantcalError
from quantcal.finetune.base import BaseConfig, load_base
from quantcal.finetune.train import META_FILE
from quantcal.sources.models import LoadedModel, ModelSource, load_model

DeployForm = Literal["nf4", "nf4-native", "merged"]
DEPLOY_FORMS: tuple[str, ...] = ("nf4", "nf4-native", "merged")
DEPLOY_CODE_VERSION = 1


def adapter_dir(path: str | Path) -> Path:
    """The adapter folder: ``path`` itself or a fine-tuning run's ``adapter/`` inside it."""
    p = Path(path).expanduser()
    for candidate in (p, p / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            if not (candidate / "adapter_model.safetensors").is_file() and (candidate / "adapter_model.bin").is_file():
                raise QuantcalError(f"{candidate}: the adapter's weights are a pickle (adapter_model.bin), which quantcal "
                                    "never loads (a pickle can run code); save it as adapter_model.safetensors "
                                    "(peft: save_pretrained(..., safe_serialization=True))")
            return candidate.resolve()
    raise QuantcalError(f"{path}: no LoRA adapter here (no adapter_config.json, nor adapter/adapter_config.json)")


def adapter_meta(path: str | Path) -> dict[str, Any]:
    """What quantcal recorded when it trained the adapter (empty for adapters trained elsewhere)."""
    meta = adapter_dir(path) / META_FILE
    return json.loads(meta.read_text()) if meta.is_file() else {}


def adapter_fingerprint(path: str | Path) -> str:
    folder = adapter_dir(path)
    digest = hashlib.sha256()
    for f in sorted(folder.glob("adapter_*")):
        digest.update(f"{f.name}:{file_sha256(f)}".encode())
    return digest.hexdigest()[:20]


def adapter_base_model(path: str | Path) -> str:
    """The base model spec recorded with the adapter (quantcal's record, else peft's base_model_name_or_path)."""
    meta = adapter_meta(path)
    if meta.get("model", {}).get("spec"):
        return str(meta["model"]["spec"])
    config = json.loads((adapter_dir(path) / "adapter_config.json").read_text())
    name = config.get("base_model_name_or_path")
    if not name:
        raise QuantcalError(f"{path}: the adapter does not say which base model it belongs to; name the base `model`")
    return str(name)


def training_summary(path: str | Path) -> dict[str, Any]:
    """How the adapter was trained, in a few numbers (for the report's notes); empty if trained elsewhere."""
    meta = adapter_meta(path)
    if not meta:
        return {}
    train, data = meta.get("train", {}), meta.get("data", {})
    return {"method": meta.get("base", {}).get("method"), "base": meta.get("model", {}).get("spec"),
            "steps": meta.get("steps_done"), "examples_per_step": train.get("batch_size", 0) * train.get("grad_accum", 1),
            "n_train": data.get("n_train"), "data": data.get("source")}


def base_config_of(path: str | Path) -> BaseConfig:
    recorded = adapter_meta(path).get("base", {})
    return BaseConfig(**{k: v for k, v in recorded.items() if k in BaseConfig.__dataclass_fields__})


def check_form(form: str) -> str:
    if form not in DEPLOY_FORMS:
        raise QuantcalError(f"unknown deployment form {form!r}; expected one of {', '.join(DEPLOY_FORMS)}")
    return form


def deployed_checkpoint(source: ModelSource, adapter: str | Path, form: str) -> Path:
    """The ``nf4`` or ``merged`` form as a float checkpoint directory (built once, then cached)."""
    check_form(form)
    if form == "nf4-native":
        raise QuantcalError("nf4-native keeps the adapter unmerged on 4-bit modules; it has no float checkpoint")
    quant = base_config_of(adapter)
    key_blob = json.dumps([source.fingerprint, adapter_fingerprint(adapter), form, quant.to_json(), DEPLOY_CODE_VERSION])
    target = cache_root() / "adapters" / hashlib.sha256(key_blob.encode()).hexdigest()[:20]
    if (target / "quantcal-deployed.json").is_file():
        return target
    from peft import PeftModel

    if form == "nf4":
        loaded = load_base(source, BaseConfig("qlora", "simulated", quant.quant_type, quant.blocksize, quant.double_quant),
                           dtype="float32")
    else:
        loaded = load_model(source, dtype="float32")
    merged = PeftModel.from_pretrained(loaded.model, str(adapter_dir(adapter))).merge_and_unload()
    with atomic_dir(target) as scratch:
        merged.save_pretrained(scratch, safe_serialization=True)
        loaded.tokenizer.save_pretrained(scratch)
        (scratch / "quantcal-deployed.json").write_text(json.dumps({
            "base": source.to_json(), "adapter": str(adapter_dir(adapter)), "adapter_fingerprint": adapter_fingerprint(adapter),
            "form": form, "base_quantization": quant.to_json() if form == "nf4" else None}, indent=2))
    return target


def deployed_source(source: ModelSource, adapter: str | Path, form: str) -> ModelSource:
    """The deployed checkpoint as a model source (so recipes can compress it like any reference)."""
    path = deployed_checkpoint(source, adapter, form)
    return ModelSource(str(path), "local", str(path), None, f"adapter:{path.name}")


def load_native_adapter(adapter: str | Path, source: ModelSource, dtype: str = "auto", device: str = "cpu") -> LoadedModel:
    """The ``nf4-native`` form: the adapter unmerged on ``source`` loaded with bitsandbytes 4-bit modules."""
    from peft import PeftModel

    quant = base_config_of(adapter)
    loaded = load_base(source, BaseConfig("qlora", "native", quant.quant_type, quant.blocksize, quant.double_quant),
                       dtype=dtype, device=device)
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir(adapter)))
    model.eval()
    return LoadedModel(model, loaded.tokenizer, source)
