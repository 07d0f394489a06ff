"""Integer variants exported packed (compressed-tensors pack-quantized) load in transformers and compute the
simulated variant's function; the quantized tensors on disk take the variant's bits per weight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quantcal.errors import QuantcalError
from quantcal.sources.models import resolve_source
from quantcal.recipes import parse_recipe

pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def gemma_two_kv_heads(tmp_path_factory: pytest.TempPathFactory, gemma_checkpoint: Path) -> Path:
    """A 2-layer random Gemma 3 whose smallest layer has 16 rows: compressed-tensors 0.20.1 cannot unpack a zero
    point packed into a single int32 word per column (8 rows of 4 bits), which no real model has."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    vocab = json.loads((gemma_checkpoint / "config.json").read_text())["vocab_size"]
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512)
    folder = tmp_path_factory.mktemp("gemma-kv2")
    Gemma3ForCausalLM(config).eval().save_pretrained(folder)
    AutoTokenizer.from_pretrained(gemma_checkpoint).save_pretrained(folder)
    return folder


def _log_probs(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 1000, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits.float(), -1)


@pytest.mark.parametrize("model_fixture,recipe", [
    ("tiny_llama", "rtn:bits=4,group_size=16,sym=true"),
    pytest.param("tiny_llama", "rtn:bits=3,group_size=16", marks=pytest.mark.slow),
    pytest.param("tiny_llama", "gptq:bits=4,group_size=16,nsamples=4,seqlen=32", marks=pytest.mark.slow),
    ("tiny_llama", "awq:bits=4,group_size=16,nsamples=4,seqlen=32"),
    pytest.param("gemma_two_kv_heads", "awq:bits=4,group_size=16,nsamples=4,seqlen=32", marks=pytest.mark.heavy),  # Gemma's (1 + w) norms
])
def test_exported_variant_computes_the_simulated_one(model_fixture: str, recipe: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    from quantcal.checkpoints.packed_checkpoint import export_packed, load_packed
    from quantcal.recipes.build import build_variant, variant_meta

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    source = resolve_source(str(request.getfixturevalue(model_fixture)))
    folder = build_variant(source, parse_recipe(recipe))
    exported = export_packed(folder, tmp_path / "packed")
    config = json.loads((tmp_path / "packed" / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"
    assert exported.layers == 14
    # the codes, float16 scales and (asymmetric) packed zeros on disk are the variant's bits per weight (3-bit
    # zeros of a 16-row layer pad to a whole int32 word)
    bits = variant_meta(folder)["bits_per_weight"]
    assert exported.bits_per_weight == (pytest.approx(bits, rel=1e-12) if "bits=4" in recipe else pytest.approx(bits, abs=0.01))
    simulated = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    deployed = load_packed(tmp_path / "packed")
    gap = (_log_probs(simulated) - _log_probs(deployed)).abs().max()
    assert gap < 1e-3
    if recipe.startswith("awq"):  # the scales were folded, and some are far from 1
        from quantcal.recipes.grid_record import load

        assert exported.record["export"]["awq_folded"]
        assert max(float((g.input_scale - 1).abs().max()) for g in load(folder).values() if g.input_scale is not None) > 0.05
    if "sym=true" in recipe or recipe.startswith("awq"):  # the stored grid is the simulated one, folds included
        assert gap < 1e-4


def test_export_refuses_what_it_cannot_pack(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.checkpoints.packed_checkpoint import export_packed
    from quantcal.recipes.build import build_variant

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    source = resolve_source(str(tiny_llama))
    folder = build_variant(source, parse_recipe("gguf:q8_0"))
    with pytest.raises(QuantcalError, match="no integer grid to pack"):
        export_packed(folder, tmp_path / "a")
    desc = build_variant(source, parse_recipe("gptq:bits=4,group_size=16,desc_act=true,nsamples=4,seqlen=32"))
    with pytest.raises(QuantcalError, match="no integer grid to pack"):
        export_packed(desc, tmp_path / "b")
    rtn = build_variant(source, parse_recipe("rtn:bits=4,group_size=16"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    with pytest.raises(QuantcalError, match="not empty"):
        export_packed(rtn, tmp_path / "c")
    with pytest.raises(QuantcalError, match="dtype"):
        export_packed(rtn, tmp_path / "d", dtype="int8")
