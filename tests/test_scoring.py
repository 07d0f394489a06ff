"""The shared-context scorer equals a plain forward of context + choice, for any batch size,
for Llama and for Gemma 3 with contexts longer than its sliding window."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from quantcal.engines.encoding import Encoder
from quantcal.tasks.items import Item
from quantcal.sources.models import load_model, resolve_source
from quantcal.engines.hf_scorer import iter_flat, plan_batches, reference_loglik, score_items

WORDS = "the a cat dog sat on mat quickly blue green river mountain eleven seven because however".split()


def random_items(n: int, seed: int) -> list[Item]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))
        k = rng.randint(2, 5)
        choices = tuple(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(k))
        items.append(Item(str(i), context, choices, rng.randrange(k)))
    return items


def assert_equals_plain_forward(model, encoded, results) -> None:  # noqa: ANN001
    """Every item scored once, and each choice's log-likelihood, greedy flag and token count equal the plain forward."""
    assert sorted(results) == list(range(len(encoded)))
    for e in encoded:
        (group,) = e.groups
        for j, cont in enumerate(group.continuations):
            ll, greedy = reference_loglik(model, group.context, cont)
            assert results[e.item_index].logliks[j] == pytest.approx(ll, abs=1e-4)
            assert results[e.item_index].greedy[j] == greedy
            assert results[e.item_index].n_tokens[j] == len(cont)


#: Gemma's cases of the large grids run in the heavy tier (Gemma stays in the first tier through the other tests).
GEMMA_HEAVY = pytest.param("tiny_gemma", marks=pytest.mark.heavy)


def assert_packed_and_shared_prefixes_exact(lm) -> None:  # noqa: ANN001
    """A model (a loaded variant with run-time quantizers, say) scored packed, and with cross-item prefix sharing,
    equals plain forwards of each choice through the same model."""
    encoder = Encoder(lm.tokenizer, max_length=512)
    for items, shared in ((random_items(8, seed=3), None), (preamble_items(8, seed=4), 4)):
        encoded = [encoder.encode_item(i, it, " ") for i, it in enumerate(items)]
        kwargs = {"min_shared_prefix": shared, "min_shared_saving": 0} if shared else {}
        results = {s.item_index: s for s in iter_flat(score_items(lm.model, encoded, batch_size=16, **kwargs))}
        assert_equals_plain_forward(lm.model, encoded, results)


@pytest.mark.parametrize("fixture", ["tiny_llama", GEMMA_HEAVY])
@pytest.mark.parametrize(("batch_size", "max_tokens"), [(1, None), (7, None), (64, None), (64, 48)])
@pytest.mark.parametrize("packed", [True, False])
def test_scorer_matches_plain_forward(fixture: str, batch_size: int, max_tokens: int | None, packed: bool,
                                      request: pytest.FixtureRequest) -> None:
    lm = load_model(resolve_source(str(request.getfixturevalue(fixture))))
    encoder = Encoder(lm.tokenizer, max_length=512)
    items = random_items(12, seed=batch_size)
    encoded = [encoder.encode_item(i, it, " ") for i, it in enumerate(items)]
    results = {s.item_index: s for s in iter_flat(score_items(lm.model, encoded, batch_size=batch_size, packed=packed,
                                                                   max_batch_tokens=max_tokens))}
    assert_equals_plain_forward(lm.model, encoded, results)


def test_single_token_choices_need_no_second_pass(tiny_llama: Path) -> None:
    lm = load_model(resolve_source(str(tiny_llama)))
    encoder = Encoder(lm.tokenizer, max_length=512)
    item = Item("m", "Question?\nA. x\nB. y\nAnswer:", ("A", "B", "C", "D"), 2)
    encoded = encoder.encode_item(0, item, " ")
    assert all(len(c) == 1 for c in encoded.groups[0].continuations)
    (result,) = iter_flat(score_items(lm.model, [encoded]))
    for j, cont in enumerate(encoded.groups[0].continuations):
        assert result.logliks[j] == pytest.approx(reference_loglik(lm.model, encoded.groups[0].context, cont)[0], abs=1e-4)


def test_greedy_flag_true_for_the_models_own_continuation(tiny_llama: Path) -> None:
    import torch

    from quantcal.engines.encoding import EncodedItem, Group

    lm = load_model(resolve_source(str(tiny_llama)))
    context = lm.tokenizer.encode("the cat sat")
    with torch.inference_mode():
        generated = lm.model.generate(torch.tensor([context]), max_new_tokens=3, do_sample=False)[0, len(context):].tolist()
    encoded = EncodedItem(0, (Group(0, tuple(context), (tuple(generated), (generated[0], (generated[1] + 1) % 1000)), (0, 1)),), (3, 2))
    (result,) = iter_flat(score_items(lm.model, [encoded]))
    assert result.greedy[0] is True and result.greedy[1] is False


def test_batches_are_longest_first_and_bounded() -> None:
    from quantcal.engines.encoding import EncodedItem, Group

    items = [EncodedItem(i, (Group(i, tuple(range(i + 1)), ((1,), (2,)), (0, 1)),), (1, 1)) for i in range(10)]
    batches = plan_batches(items, batch_size=4)
    lengths = [g.length for b in batches for g in b]
    assert lengths == sorted(lengths, reverse=True)
    assert all(sum(len(g.continuations) for g in b) <= 4 for b in batches)
    assert sorted(g.item_index for b in batches for g in b) == list(range(10))


@pytest.mark.parametrize("packed", [True, False])
def test_batches_respect_the_token_cap(packed: bool) -> None:
    """Padded positions (input rows x widest group) stay under the cap; a group wider than the cap goes alone."""
    from quantcal.engines.encoding import EncodedItem, Group
    from quantcal.engines.hf_scorer import packed_length

    rng = random.Random(0)
    items = []
    for i in range(40):
        conts = tuple(tuple(range(rng.randint(1, 6))) for _ in range(rng.randint(2, 4)))
        items.append(EncodedItem(i, (Group(i, tuple(range(rng.randint(1, 60))), conts, tuple(range(len(conts)))),), (1,) * len(conts)))
    size = packed_length if packed else (lambda g: g.length)
    batches = plan_batches(items, batch_size=64, packed=packed, max_tokens=50)
    assert sorted(g.item_index for b in batches for g in b) == list(range(40))
    for b in batches:
        rows = len(b) if packed else sum(len(g.continuations) for g in b)
        assert rows * max(size(g) for g in b) <= 50 or len(b) == 1
    assert any(len(b) == 1 and size(b[0]) * (1 if packed else len(b[0].continuations)) > 50 for b in batches)
    assert len(batches) > len(plan_batches(items, batch_size=64, packed=packed))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_packed_scorer_on_transformers_without_2d_logits_to_keep(fixture: str, request: pytest.FixtureRequest,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Older transformers 5.x take only a 1-D logits_to_keep: the scorer falls back and gives the same numbers."""
    from transformers import modeling_utils

    lm = load_model(resolve_source(str(request.getfixturevalue(fixture))))
    encoder = Encoder(lm.tokenizer, max_length=512)
    encoded = [encoder.encode_item(i, it, " ") for i, it in enumerate(random_items(6, seed=3))]
    new = {s.item_index: s.logliks for s in iter_flat(score_items(lm.model, encoded, batch_size=9))}
    monkeypatch.delattr(modeling_utils, "slice_logits_to_keep")
    old = {s.item_index: s.logliks for s in iter_flat(score_items(lm.model, encoded, batch_size=9))}
    assert all(a == pytest.approx(b, abs=1e-5) for i in new for a, b in zip(new[i], old[i]))


def preamble_items(n: int, seed: int, preambles: int = 2) -> list[Item]:
    """Items whose contexts start with one of a few long shared preambles (a few-shot block), then differ."""
    rng = random.Random(seed)
    heads = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 60))) + "\n\n" for _ in range(preambles)]
    items = []
    for i, it in enumerate(random_items(n, seed)):
        items.append(Item(it.id, heads[i % preambles] + it.context, it.choices, it.gold))
    return items


@pytest.mark.parametrize("fixture", ["tiny_llama", GEMMA_HEAVY])
@pytest.mark.parametrize(("batch_size", "max_tokens", "min_shared"), [(64, None, 32), (5, None, 32), (64, 40, 4)])
def test_shared_prefix_scoring_matches_plain_forward(fixture: str, batch_size: int, max_tokens: int | None,
                                                     min_shared: int, request: pytest.FixtureRequest) -> None:
    """Items sharing a long prefix are scored on one prefix computation, and every log-likelihood still equals the
    plain forward of context + choice (Gemma 3's 8-token sliding window cuts across the shared prefix)."""
    from quantcal.engines.hf_scorer import plan_shared_batches

    lm = load_model(resolve_source(str(request.getfixturevalue(fixture))))
    encoder = Encoder(lm.tokenizer, max_length=512)
    items = preamble_items(14, seed=batch_size + min_shared)
    encoded = [encoder.encode_item(i, it, " ") for i, it in enumerate(items)]
    plan = plan_shared_batches(encoded, batch_size, max_tokens, min_shared, min_saving=0)
    assert any(b.shared >= 32 for b in plan)  # the preambles are shared
    results = {s.item_index: s for s in iter_flat(score_items(lm.model, encoded, batch_size=batch_size,
                                                              max_batch_tokens=max_tokens, min_shared_prefix=min_shared,
                                                              min_shared_saving=0))}
    assert_equals_plain_forward(lm.model, encoded, results)


def test_shared_runs_group_contexts_by_common_prefix() -> None:
    from quantcal.engines.encoding import Group
    from quantcal.engines.hf_scorer import shared_runs

    a = [Group(i, tuple(range(40)) + (100 + i, 7), ((1,),), (0,)) for i in range(3)]
    b = [Group(10 + i, (9,) * 35 + (200 + i,), ((1,),), (0,)) for i in range(2)]
    lone = [Group(20, (5, 6, 7), ((1,),), (0,))]
    runs = shared_runs(a + lone + b, min_shared=32, min_saving=0)
    assert sorted((shared, sorted(g.item_index for g in groups)) for shared, groups in runs) == [
        (0, [20]), (35, [10, 11]), (40, [0, 1, 2])]
    assert shared_runs(a, min_shared=41, min_saving=0) == [(0, sorted(a, key=lambda g: g.context))]
    assert shared_runs(a, min_shared=32, min_saving=81) == [(0, sorted(a, key=lambda g: g.context))]  # saves 2 x 40


def plain_block_mask(segment: list[list[int]], position: list[list[int]], shared: int, window: int | None) -> list:
    """The packed layout's attention rule, one (row, query, key) at a time: a real query sees the shared prefix,
    earlier context tokens and earlier tokens of its own choice (within ``window`` positions); every query sees itself."""
    out = []
    for seg, pos in zip(segment, position):
        width = len(seg)
        rows = []
        for i in range(width):
            row = []
            for j in range(shared + width):
                if j < shared:
                    ok, key_pos = seg[i] >= 0, j
                else:
                    k = j - shared
                    ok, key_pos = k <= i and seg[i] >= 0 and (seg[k] == 0 or seg[k] == seg[i]), pos[k]
                    if k == i:
                        ok = True
                if window and not (j - shared == i) and pos[i] - key_pos >= window:
                    ok = False
                row.append(ok)
            rows.append(row)
        out.append(rows)
    return out


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_block_masks_built_on_the_device_follow_the_layout_rule(fixture: str, request: pytest.FixtureRequest) -> None:
    import torch

    from quantcal.engines.hf_scorer import _block_masks

    model = load_model(resolve_source(str(request.getfixturevalue(fixture))), dtype="float32").model
    segment = [[0, 0, 0, 1, 1, 2, 2, 2, -1, -1], [0, 0, 1, 2, 2, 3, -1, -1, -1, -1]]
    shared = 3
    position = [[shared + i if s >= 0 else 0 for i, s in enumerate(row)] for row in segment]
    masks = _block_masks(model, torch.device("cpu"))(torch.tensor(segment), torch.tensor(position), shared)
    windows = {"full_attention": None, "sliding_attention": 8} if isinstance(masks, dict) else {"all": None}
    for kind, window in windows.items():
        mask = masks[kind] if isinstance(masks, dict) else masks
        assert mask.shape == (2, 1, 10, 13) and mask.dtype == torch.float32
        expected = torch.tensor(plain_block_mask(segment, position, shared, window))
        assert torch.equal(mask[:, 0] == 0, expected), kind
        assert bool((mask[:, 0][~expected] == torch.finfo(torch.float32).min).all())


def test_token_budget_is_chosen_per_device(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from quantcal.engines import hf_scorer as scoring

    model = load_model(resolve_source(str(tiny_llama)), dtype="float32").model
    assert scoring.auto_batch_tokens(model, torch.device("cpu")) == scoring.DEFAULT_MAX_BATCH_TOKENS
    config = model.config
    per_token = 4 * (config.vocab_size + 3 * config.intermediate_size + 6 * config.hidden_size
                     + 2 * config.num_attention_heads * scoring.AUTO_ROW_WIDTH)
    for free in (80 * 2**30, 2**20):  # a large GPU's free memory; a nearly full one keeps the CPU default
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 2 * free))
        expected = max(scoring.DEFAULT_MAX_BATCH_TOKENS, int(scoring.CUDA_MEMORY_SHARE * free // per_token) // 256 * 256)
        assert scoring.auto_batch_tokens(model, torch.device("cuda")) == expected
    assert expected == scoring.DEFAULT_MAX_BATCH_TOKENS
    # "auto" scores on CPU exactly as the explicit default does
    items = random_items(6, 3)
    encoder = Encoder(load_model(resolve_source(str(tiny_llama))).tokenizer, 512)
    encoded = [encoder.encode_item(k, it, " ") for k, it in enumerate(items)]
    auto = iter_flat(score_items(model, encoded, 8, max_batch_tokens="auto"))
    fixed = iter_flat(score_items(model, encoded, 8, max_batch_tokens=scoring.DEFAULT_MAX_BATCH_TOKENS))
    assert [s.logliks for s in auto] == [s.logliks for s in fixed]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
@pytest.mark.parametrize("min_shared", [None, 4])
def test_single_token_batches_use_a_padding_mask_and_stay_exact(fixture: str, min_shared: int | None,
                                                                request: pytest.FixtureRequest,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches whose choices are all one token take a 2D padding mask (no block mask is built) unless they share a
    prefix (``min_shared``); contexts run past Gemma's 8-token sliding window."""
    from quantcal.engines import hf_scorer as scoring

    built = []
    original = scoring._block_masks

    def spy(model, device):  # noqa: ANN001, ANN202
        build = original(model, device)
        return lambda *args: built.append(args) or build(*args)

    monkeypatch.setattr(scoring, "_block_masks", spy)
    loaded = load_model(resolve_source(str(request.getfixturevalue(fixture))), dtype="float32")
    rng = random.Random(5)
    preamble = " ".join(rng.choice(WORDS) for _ in range(12))
    items = [Item(str(i), preamble + " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20))),
                  (" A", " B", " C", " D"), i % 4) for i in range(9)]
    encoder = Encoder(loaded.tokenizer, 512)
    encoded = [encoder.encode_item(k, it, "") for k, it in enumerate(items)]
    assert all(len(c) == 1 for e in encoded for g in e.groups for c in g.continuations)
    results = {s.item_index: s for s in iter_flat(score_items(loaded.model, encoded, 8, min_shared_prefix=min_shared,
                                                               min_shared_saving=1))}
    assert_equals_plain_forward(loaded.model, encoded, results)
    assert (len(built) > 0) == (min_shared is not None)
