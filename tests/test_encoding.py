"""Tokenisation follows lm-eval's HF backend: whitespace moves to the continuation, empty context -> BOS,
left truncation to the window, one shared context per item."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from quantcal.engines.encoding import Encoder, truncate
from quantcal.tasks.items import Item


def test_pair_moves_trailing_space_and_splits_whole_encoding(smol_checkpoint: Path) -> None:
    tok = AutoTokenizer.from_pretrained(smol_checkpoint)
    enc = Encoder(tok, max_length=2048)
    ctx, cont = enc.encode_pair("Question: sky colour?\nAnswer: ", "blue")
    whole = tok.encode("Question: sky colour?\nAnswer: blue")
    assert ctx == tok.encode("Question: sky colour?\nAnswer:")
    assert ctx + cont == whole


def test_empty_context_uses_bos_or_eos(smol_checkpoint: Path) -> None:
    tok = AutoTokenizer.from_pretrained(smol_checkpoint)
    enc = Encoder(tok, max_length=2048)
    ctx, cont = enc.encode_pair("", " hello")
    assert ctx == [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
    assert cont == tok.encode(" hello", add_special_tokens=False)


def test_gemma_gets_bos_from_its_tokenizer_default(gemma_tokenizer: Path) -> None:
    tok = AutoTokenizer.from_pretrained(gemma_tokenizer)
    enc = Encoder(tok, max_length=2048)
    ctx, _ = enc.encode_pair("The sky is", " blue")
    assert ctx[0] == tok.bos_token_id
    ctx2, _ = enc.encode_pair(tok.decode(tok.bos_token_id) + "The sky is", " blue")
    assert ctx2 == ctx  # a prompt that already starts with BOS does not get a second one


def test_item_shares_one_context_and_truncates_like_lm_eval(smol_checkpoint: Path) -> None:
    tok = AutoTokenizer.from_pretrained(smol_checkpoint)
    item = Item("x", "one two three four five six seven eight nine ten", ("eleven", "eleven twelve thirteen"), 0)
    full = Encoder(tok, max_length=2048).encode_item(0, item, " ")
    assert len(full.groups) == 1 and len(full.groups[0].continuations) == 2
    window = len(full.groups[0].context) + 1
    short = Encoder(tok, max_length=window).encode_item(0, item, " ")
    assert len(short.groups) == 2  # truncation differs per choice: each choice scored on its own
    for group in short.groups:
        (cont,) = group.continuations
        original = list(full.groups[0].context) + list(cont)
        assert list(group.context) + list(cont) == original[-(window + 1):]


def test_truncate_keeps_window_plus_one() -> None:
    assert truncate(list(range(10)), [10, 11], max_length=5) == [6, 7, 8, 9]
    assert truncate([1, 2], [3], max_length=5) == [1, 2]
