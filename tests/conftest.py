"""Shared fixtures: paths to the real data, and tiny random models that use the bundled tokenizers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("QUANTCAL_SHARED_DATA", ROOT.parent / "shared" / "data"))


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "piqa" / "validation.jsonl").is_file():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smol_checkpoint() -> Path:
    """The dequantized safetensors copy of the bundled SmolLM2 (built once, then cached)."""
    from quantcal.sources.models import dequantized_gguf_copy, resolve_source

    return dequantized_gguf_copy(resolve_source("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def gemma_checkpoint() -> Path:
    from quantcal.sources.models import dequantized_gguf_copy, resolve_source

    return dequantized_gguf_copy(resolve_source("gemma3-270m"))


@pytest.fixture(scope="session")
def gemma_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3's tokenizer converted from the bundled GGUF, its weights left alone (a third of the time of
    :func:`gemma_checkpoint`, which dequantizes them): what the tiny random Gemma and the encoding tests need."""
    from transformers import AutoTokenizer

    from quantcal.sources.models import resolve_source

    source = resolve_source("gemma3-270m")
    folder = tmp_path_factory.mktemp("gemma-tokenizer")
    AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file).save_pretrained(folder)
    return folder


def _save_tiny(directory: Path, model, tokenizer_dir: Path) -> Path:  # noqa: ANN001
    from transformers import AutoTokenizer

    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, smol_checkpoint: Path) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as a local HF checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = json.loads((smol_checkpoint / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), LlamaForCausalLM(config).eval(), smol_checkpoint)


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory, gemma_tokenizer: Path) -> Path:
    """A 2-layer random Gemma 3 with an 8-token sliding window (contexts run past it) and Gemma's tokenizer."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(gemma_tokenizer))
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=8, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512)
    return _save_tiny(tmp_path_factory.mktemp("tiny-gemma"), Gemma3ForCausalLM(config).eval(), gemma_tokenizer)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A variant cache shared by one test module's tests."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture()
def env_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The module's cache as QUANTCAL_CACHE for this test."""
    monkeypatch.setenv("QUANTCAL_CACHE", str(cache))
    return cache
