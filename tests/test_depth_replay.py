"""Depth replay (:mod:`quantcal.engines.depth_replay`): a unit's passes started at its block from the reference's recorded
hidden states give the very logits a full pass gives, on Llama and on Gemma 3 (sliding layers, a mask per layer
type); calls that fill or read a key/value cache are never replayed; memory stays under its cap; and a sensitivity
run with replay stores the same scores, bit for bit, as one without."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from quantcal.engines.depth_replay import DepthReplay, call_key
from quantcal.recipes.units import model_units, swapped, unit_block


def _model(path: Path) -> torch.nn.Module:
    from quantcal.sources.models import load_model, resolve_source

    return load_model(resolve_source(str(path)), "float32").model


def _inputs(vocab: int, rows: int = 3, width: int = 14, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, width), generator=g)
    mask = torch.ones((rows, width), dtype=torch.long)
    mask[0, -3:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask, "position_ids": torch.arange(width)[None].expand(rows, width)}


@pytest.mark.parametrize("fixture", ["tiny_llama", pytest.param("tiny_gemma", marks=pytest.mark.heavy)])
def test_a_replayed_pass_equals_a_full_pass_bit_for_bit(fixture: str, request: pytest.FixtureRequest) -> None:
    model = _model(request.getfixturevalue(fixture))
    calls = [_inputs(model.config.vocab_size, seed=s) for s in range(3)]
    replay = DepthReplay(model, max_bytes=1 << 30)
    with torch.no_grad(), replay.recording():
        reference = [model(**c, use_cache=False).logits for c in calls]
    assert replay.stats.checkpoints == [1] and replay.start_for(1) == 1 and replay.start_for(0) == 0

    last = [u for u in model_units(model, "linear") if unit_block(u) == 1][1]  # block 1's MLP
    g = torch.Generator().manual_seed(1)
    noisy = {n: w + 0.05 * torch.randn(w.shape, generator=g)
             for n, w in ((n, model.get_submodule(n).weight.data) for n in last.layers)}
    with torch.no_grad(), swapped(model, noisy):
        full = [model(**c, use_cache=False).logits for c in calls]
        with replay.replaying(unit_block(last)):
            replayed = [model(**c, use_cache=False).logits for c in calls]
            unseen = model(**_inputs(model.config.vocab_size, seed=9), use_cache=False).logits
        after = model(**calls[0], use_cache=False).logits
    assert replay.stats.hits == 3 and replay.stats.misses == 1  # the unseen call ran in full
    for f, r, ref in zip(full, replayed, reference):
        assert torch.equal(f, r)
        assert not torch.equal(f, ref)  # the swapped unit did change the output: the equality above is not vacuous
    assert torch.equal(unseen, _model_logits_plain(model, noisy, seed=9))
    assert torch.equal(after, full[0])  # the replay's hooks and skipped blocks are gone on exit
    assert "forward" not in model.model.layers[0].__dict__


def _model_logits_plain(model: torch.nn.Module, weights: dict, seed: int) -> torch.Tensor:
    with torch.no_grad(), swapped(model, weights):
        return model(**_inputs(model.config.vocab_size, seed=seed), use_cache=False).logits


def test_calls_with_a_cache_or_other_arguments_are_never_replayed() -> None:
    ids = torch.ones((1, 4), dtype=torch.long)
    assert call_key((), {"input_ids": ids, "use_cache": False}) is not None
    assert call_key((), {"input_ids": ids, "use_cache": True}) is None
    assert call_key((), {"input_ids": ids, "past_key_values": object()}) is None
    assert call_key((), {"input_ids": ids, "cache": object()}) is None
    assert call_key((), {"input_ids": ids, "inputs_embeds": ids}) is None
    assert call_key((ids,), {}) is None
    assert call_key((), {"input_ids": ids, "position_ids": torch.arange(4)[None]}) != call_key((), {"input_ids": ids})
    masks = {"full_attention": torch.zeros((1, 1, 4, 4)), "sliding_attention": torch.ones((1, 1, 4, 4))}
    assert call_key((), {"input_ids": ids, "attention_mask": masks}) != \
        call_key((), {"input_ids": ids, "attention_mask": {"full_attention": masks["sliding_attention"],
                                                           "sliding_attention": masks["full_attention"]}})


def test_recorded_states_stay_under_the_memory_cap(tiny_llama: Path) -> None:
    model = _model(tiny_llama)
    one_call = 3 * 14 * model.config.hidden_size * 4  # bytes of one recorded state
    replay = DepthReplay(model, max_bytes=one_call - 1)  # not even one state fits
    with torch.no_grad(), replay.recording():
        model(**_inputs(model.config.vocab_size), use_cache=False)
    assert replay.checkpoints == [] and replay.stats.recorded_bytes == 0
    with replay.replaying(1):  # nothing recorded: a no-op
        assert "forward" not in model.model.layers[0].__dict__


@pytest.mark.heavy
def test_a_sensitivity_run_with_replay_stores_the_same_scores(tiny_llama: Path, shared_data: Path, tmp_path: Path,
                                                              env_cache: Path) -> None:
    from quantcal import api

    piqa = shared_data / "piqa" / "validation.jsonl"
    runs = {flag: api.run_sensitivity(str(tiny_llama), "rtn:bits=2,group_size=16", f"piqa={piqa}", limit=10,
                                      unit="linear", out=tmp_path / str(flag), resamples=20, replay=flag)
            for flag in (False, True)}
    assert runs[False].data["replay"] is None
    stats = runs[True].data["replay"]
    assert stats["checkpoints"] == [1] and stats["hits"] > 0 and stats["misses"] == 0
    assert not (tmp_path / "True" / "replay-scratch.sqlite").exists()

    def scores(folder: Path) -> dict:
        with sqlite3.connect(folder / "sensitivity.sqlite") as db:
            rows = db.execute("SELECT r.variant, s.item_id, s.choice, s.loglik, s.greedy FROM scores s "
                              "JOIN runs r ON r.run_id = s.run_id").fetchall()
        return {(v, i, c): (ll, g) for v, i, c, ll, g in rows}

    plain, replayed = scores(tmp_path / "False"), scores(tmp_path / "True")
    assert plain.keys() == replayed.keys() and len(plain) == 10 * 2 * (2 + 4)  # items x choices x (reference, full recipe, 4 units)
    assert plain == replayed
    assert runs[True].data["tasks"] == runs[False].data["tasks"]
