"""Model sources: bundled names, GGUF files, local checkpoints, hub ids; the dequantized GGUF cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from quantcal.errors import QuantcalError
from quantcal.sources.models import dequantized_gguf_copy, model_max_length, resolve_source


def test_resolve_kinds(tiny_llama: Path, tmp_path: Path) -> None:
    assert resolve_source("smollm2-135m-instruct").kind == "bundled"
    local = resolve_source(str(tiny_llama))
    assert local.kind == "local" and local.fingerprint.startswith("dir:")
    hub = resolve_source("google/gemma-2-2b-it", revision="abc")
    assert hub.kind == "hub" and hub.fingerprint == "hub:google/gemma-2-2b-it@abc"
    with pytest.raises(QuantcalError, match="unknown model"):
        resolve_source("not a model")


def test_gguf_file_source_shares_the_bundled_cache(tmp_path: Path) -> None:
    bundled = resolve_source("smollm2-135m-instruct")
    copy = tmp_path / "model.gguf"
    shutil.copy(Path(bundled.location) / bundled.gguf_file, copy)
    source = resolve_source(str(copy))
    assert source.kind == "gguf" and source.fingerprint == bundled.fingerprint
    assert dequantized_gguf_copy(source) == dequantized_gguf_copy(bundled)


def test_second_load_does_not_dequantize_again(monkeypatch: pytest.MonkeyPatch, smol_checkpoint: Path) -> None:
    import transformers

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if "gguf_file" in kwargs:
            raise AssertionError("dequantized the GGUF file again")
        return original(*args, **kwargs)

    original = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    assert (smol_checkpoint / "quantcal-source.json").is_file()
    assert dequantized_gguf_copy(resolve_source("smollm2-135m-instruct")) == smol_checkpoint
    assert not list(smol_checkpoint.glob("*.bin")) and list(smol_checkpoint.glob("*.safetensors"))


def test_hub_model_load_error_is_clear(tmp_path: Path) -> None:
    from quantcal.sources.models import load_model

    with pytest.raises(QuantcalError, match="cannot load model 'nobody/nothing'"):
        load_model(resolve_source("nobody/nothing"))


def test_window_resolution(tiny_llama: Path) -> None:
    from quantcal.sources.models import load_model

    lm = load_model(resolve_source(str(tiny_llama)))
    assert model_max_length(lm.model, lm.tokenizer) == 512
