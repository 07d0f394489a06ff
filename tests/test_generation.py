"""Generated answers (issue 36, first part): lm-eval's filters and exact match (checked against lm-eval's own
classes), the greedy generator against transformers' generate and a plain forward, the confidences, and the
gsm8k path end to end on a tiny model: stored, resumed, scored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from quantcal.errors import QuantcalError
from quantcal.tasks.answer_filters import FilterStep, MatchOptions, apply_filters, cut_at_stop, exact_match
from quantcal.tasks.generation_tasks import GENERATION_TASKS, load_generation_items
from tests.conftest import write_jsonl

TEXTS = [" Tom has 2 + 2 = 4 apples.\n#### 4", "#### -1,250.5 and #### 7", "no number here", "  the answer is $12.",
         "Paris", " 3 apples, then 5, then 11", "", "#### ", " William Shakespeare\n"]


@pytest.mark.parametrize("task, name", [("gsm8k", "strict-match"), ("gsm8k", "flexible-extract"),
                                        ("triviaqa", "remove_whitespace")])
def test_filters_and_exact_match_agree_with_lm_eval(task: str, name: str) -> None:
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter, WhitespaceFilter

    spec = GENERATION_TASKS[task]
    steps = spec.filters[name]
    for text in TEXTS:
        ours, span = apply_filters(text, steps)
        theirs = [text]
        for step in steps:
            if step.function == "regex":
                theirs = RegexFilter(step.pattern, step.group_select, step.fallback).apply([theirs], [{}])[0]
            elif step.function == "remove_whitespace":
                theirs = WhitespaceFilter().apply([theirs], [{}])[0]
        assert ours == theirs[0], (text, name)
        if span is not None:
            assert text[span[0]:span[1]] == ours  # where the scored answer lies in the generation
        for reference in ("#### 4", "The total is 1,250.5.\n#### -1,250.5", "12", "paris", "William Shakespeare"):
            options = spec.match
            kwargs = {"ignore_case": options.ignore_case, "ignore_punctuation": options.ignore_punctuation,
                      "regexes_to_ignore": list(options.regexes_to_ignore) or None}
            expected = exact_match_hf_evaluate([ours], [reference], **kwargs)["exact_match"] == 1.0
            assert exact_match(ours, [reference], options) == expected, (ours, reference)


@pytest.mark.parametrize("function", ["lowercase", "uppercase"])
def test_case_filters_agree_with_lm_eval(function: str) -> None:
    from lm_eval.filters.extraction import WhitespaceFilter
    from lm_eval.filters.transformation import LowercaseFilter, UppercaseFilter

    theirs_filter = LowercaseFilter() if function == "lowercase" else UppercaseFilter()
    for text in TEXTS + [" Ärger İstanbul ß"]:
        ours, span = apply_filters(text, (FilterStep("remove_whitespace"), FilterStep(function)))
        theirs = theirs_filter.apply([WhitespaceFilter().apply([[text]], [{}])[0]], [{}])[0]
        assert ours == theirs[0]
        assert span is not None and text[span[0]:span[1]] == text.strip()  # the answer's place in the generation


def test_several_references_match_when_any_does_and_stop_strings_cut_as_lm_eval() -> None:
    options = MatchOptions(ignore_case=True, ignore_punctuation=True)
    assert exact_match("The Beatles", ["Beatles", "the beatles"], options)
    assert not exact_match("Beatles!", ["Rolling Stones"], options)
    assert cut_at_stop("42.\nQuestion: next", ["Question:", "\n"]) == "42."
    assert cut_at_stop("Paris, France", ["\n", ".", ","]) == "Paris"
    assert apply_filters("x", (FilterStep("regex", r"(\d+)"),)) == ("[invalid]", None)


def test_confidences_from_token_log_probabilities() -> None:
    from quantcal.analysis.generated import confidences

    logprobs, offsets = [math.log(0.5), math.log(0.8), math.log(0.9)], [5, 9, 12]  # "abcde" "fghi" "jkl"
    c = confidences(logprobs, offsets, (6, 9))
    assert c["conf_seq_prob"] == pytest.approx(0.36) and c["conf_mean_prob"] == pytest.approx(0.36 ** (1 / 3))
    assert c["conf_answer_prob"] == pytest.approx(0.8)  # only the token covering characters 6..9
    assert confidences(logprobs, offsets, (4, 10))["conf_answer_prob"] == pytest.approx(0.36)
    assert confidences(logprobs, offsets, None)["conf_answer_prob"] == 0.0


def test_answer_ace_aurc_and_selective_accuracy_match_the_multiple_choice_forms() -> None:
    """A confidence above 0.5 in an answer is a two-choice item whose top choice is the answer (``[1 - c, c]``, gold
    1 when right, else 0): there the answer metrics must equal the multiple-choice ACE, AURC and selective accuracy
    (themselves checked against netcal/torchmetrics); and a confidence of 0 is a stated confidence, kept by ACE."""
    import numpy as np

    from quantcal import metrics
    from quantcal.metrics import answer_confidence as answers

    rng = np.random.default_rng(3)
    c = rng.uniform(0.5001, 0.999, 150)  # 150 = 10 per range: both forms split the same answers
    y = (rng.uniform(size=150) < c).astype(np.int64)
    probs, labels = answers.as_pair(c, y)
    choice = np.stack([1 - c, c], axis=1), y  # gold 1 (the answer) when right, else the other choice
    assert answers.ace(probs, labels) == pytest.approx(metrics.ace(*choice), abs=1e-12)
    assert answers.aurc(probs, labels) == pytest.approx(metrics.aurc(*choice), abs=1e-12)
    assert answers.selective_acc(probs, labels) == pytest.approx(metrics.selective_acc(*choice), abs=1e-12)
    zero, wrong = answers.as_pair(np.array([0.0, 0.0, 1.0]), np.array([0, 0, 1]))
    assert answers.ace(zero, wrong) == 0.0 and answers.aurc(zero, wrong) == pytest.approx((0 + 0.5 + 2 / 3) / 3)


def test_the_best_calibrated_measure_must_rank_answers_beyond_chance() -> None:
    """The page's "best calibrated measure" is the lowest ECE among measures whose AUROC interval lies above 0.5:
    a measure with a lower ECE that cannot tell right answers from wrong ones (as P(True) on the GSM8K study) is not
    named; when no measure ranks beyond chance, the finding says so."""
    from quantcal.report.generation_page import best_measure

    def m(ece: float, auroc: tuple[float, float, float]) -> dict:
        return {"ece": {"estimate": ece, "low": ece, "high": ece},
                "auroc": dict(zip(("estimate", "low", "high"), auroc))}

    found = best_measure({"conf_seq_prob": m(0.25, (0.81, 0.63, 0.95)), "conf_p_true": m(0.18, (0.38, 0.17, 0.6)),
                          "conf_mean_prob": m(0.59, (0.77, 0.55, 0.9))})
    assert found.startswith("best calibrated measure conf_seq_prob (ECE 0.250") and "conf_p_true" not in found
    none = best_measure({"conf_seq_prob": m(0.19, (0.61, 0.26, 0.9)), "conf_p_true": m(0.33, (0.3, 0.09, 0.5))})
    assert none.startswith("no confidence measure ranks") and "lowest ECE: conf_seq_prob (0.190" in none
    nan = float("nan")
    one_outcome = best_measure({"conf_seq_prob": m(0.01, (nan, nan, nan)), "conf_p_true": m(0.3, (nan, nan, nan))})
    assert one_outcome.startswith("its answers are all right or all wrong") and "conf_seq_prob (0.010)" in one_outcome


def test_the_measures_a_run_holds_are_read_back_from_their_keys() -> None:
    from quantcal.study.generation_jobs import ExtraMeasures

    asked = ExtraMeasures(True, 5, 0.7, 3)
    assert ExtraMeasures.held({"p_true", asked.samples_key}) == asked
    assert ExtraMeasures.held(set()) == ExtraMeasures() and ExtraMeasures.held({"p_true"}) == ExtraMeasures(True)


@pytest.mark.parametrize("checkpoint", ["tiny_llama", "tiny_gemma"])
def test_greedy_generation_equals_generate_and_a_plain_forward(checkpoint: str, request: pytest.FixtureRequest) -> None:
    """Left-padded batches, rows leaving the batch as they stop and newcomers taking their places: each row's tokens
    are transformers' own greedy continuation of its prompt alone, and each kept token's log-probability is a plain
    forward's (float64). Gemma 3's cache has sliding-window layers (its batches only shrink)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantcal.engines.generator import generate_greedy

    path = request.getfixturevalue(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(path).eval().double()
    tok = AutoTokenizer.from_pretrained(path)
    texts = ["Question: what is 2+2?\nAnswer:", "Hi", "The quick brown fox jumps over the lazy dog. Why?", "a b c d e",
             "Question: name a city?\nAnswer:", "One two three four five six seven", "Why not?"]
    prompts = [tok(t)["input_ids"] for t in texts]
    plain = []
    with torch.inference_mode():
        for p in prompts:
            plain.append(model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False,
                                        pad_token_id=tok.eos_token_id)[0, len(p):].tolist())
    # a stop string that some continuations reach early: those rows leave their batch first
    stop = tok.decode(plain[0][2:4])
    prompt_passes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: prompt_passes.append(kw["input_ids"].shape)
                                           if kw["input_ids"].shape[1] > 1 else None, with_kwargs=True)
    generations = generate_greedy(model, tok, prompts, [stop], max_new_tokens=10, batch_size=3)
    hook.remove()
    if checkpoint == "tiny_llama":  # places freed by finished rows were refilled one prompt pass at a time
        assert any(shape[0] < 3 for shape in prompt_passes[:-1])  # without refills: 3, 3, 1
    assert any(g.stopped == "stop" for g in generations) and any(g.stopped == "length" for g in generations)
    for p, full, g in zip(prompts, plain, generations):
        assert list(g.tokens) == full[:len(g.tokens)]
        assert g.text == cut_at_stop(tok.decode(full[:10], skip_special_tokens=True), [stop]) or g.stopped == "stop"
        with torch.inference_mode():
            logits = model(torch.tensor([p + list(g.tokens)])).logits[0]
        lp = torch.log_softmax(logits.float(), -1)
        assert list(g.logprobs) == pytest.approx([float(lp[len(p) - 1 + j, t]) for j, t in enumerate(g.tokens)], abs=1e-6)


@pytest.mark.parametrize("checkpoint", ["tiny_llama", "tiny_gemma"])
def test_a_shared_prompt_prefix_runs_once_and_changes_no_answer(checkpoint: str, request: pytest.FixtureRequest) -> None:
    """Prompts that begin with the same few-shot examples: their prefix is one pass of one row whose cache every row
    copies; each row's tokens are still its own greedy continuation alone, and its log-probabilities a plain
    forward's. A model with sliding-window attention (Gemma 3) runs its prompt passes whole (the padding between a
    shared prefix and a row's own tokens would count in its window)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantcal.engines.generator import MIN_SHARED_PREFIX, generate_greedy

    path = request.getfixturevalue(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(path).eval().double()
    tok = AutoTokenizer.from_pretrained(path)
    shots = "Question: what is 1+1?\nAnswer: 2\n\nQuestion: what is 3+4?\nAnswer: 7\n\n"
    prompts = [tok(shots + q)["input_ids"] for q in ("Question: what is 2+2?\nAnswer:", "Question: 5+6?\nAnswer:",
                                                     "Question: a long question about nine and ten?\nAnswer:", "Q:")]
    shared = len(tok(shots)["input_ids"]) - 1
    assert shared >= MIN_SHARED_PREFIX
    passes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: passes.append(tuple(kw["input_ids"].shape))
                                           if kw["input_ids"].shape[1] > 1 else None, with_kwargs=True)
    generations = generate_greedy(model, tok, prompts, [], max_new_tokens=6, batch_size=4)
    hook.remove()
    whole = [p for p in passes if p[0] == 4]
    if checkpoint == "tiny_llama":
        assert passes[0][0] == 1 and passes[0][1] >= shared - 2 and whole and whole[0][1] < min(map(len, prompts))
    else:
        assert whole and whole[0][1] == max(map(len, prompts))
    assert generate_greedy(model, tok, prompts, [], max_new_tokens=6, batch_size=4, share_prefix=False)[0].tokens \
        == generations[0].tokens
    passes.clear()  # two at a time: the prompts refilling the batch start from the prefix kept from the first pass
    hook = model.register_forward_pre_hook(lambda m, a, kw: passes.append(tuple(kw["input_ids"].shape))
                                           if kw["input_ids"].shape[1] > 1 else None, with_kwargs=True)
    pairs = generate_greedy(model, tok, prompts, [], max_new_tokens=6, batch_size=2)
    hook.remove()
    assert [g.tokens for g in pairs] == [g.tokens for g in generations]
    if checkpoint == "tiny_llama":
        assert len([p for p in passes if p[1] >= shared - 2]) == 1 and len(passes) >= 3
    with torch.inference_mode():
        for p, g in zip(prompts, generations):
            alone = model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
            assert list(g.tokens) == alone[0, len(p):].tolist()[:len(g.tokens)]
            lp = torch.log_softmax(model(torch.tensor([p + list(g.tokens)])).logits[0].float(), -1)
            assert list(g.logprobs) == pytest.approx([float(lp[len(p) - 1 + j, t]) for j, t in enumerate(g.tokens)],
                                                     abs=1e-6)


def _gsm8k_file(path: Path, n: int = 10) -> Path:
    return write_jsonl(path, [{"question": f"Tom has {i} apples and buys {i + 2} more. How many now?",
                               "answer": f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}"} for i in range(n)])


def test_gsm8k_prompts_follow_lm_eval(tmp_path: Path) -> None:
    data = _gsm8k_file(tmp_path / "g.jsonl")
    items = load_generation_items(GENERATION_TASKS["gsm8k"], data, limit=3, num_fewshot=2)
    prompt = items[0].prompt
    parts = prompt.split("\n\n")
    assert len(parts) == 3 and parts[-1] == "Question: Tom has 0 apples and buys 2 more. How many now?\nAnswer:"
    assert all(p.startswith("Question: ") and "\nAnswer: " in p and "#### " in p for p in parts[:2])
    assert "Tom has 0 apples" not in "".join(parts[:2])  # the item is not its own example
    zero = load_generation_items(GENERATION_TASKS["gsm8k"], data, limit=3, num_fewshot=0)
    assert zero[1].prompt == "Question: Tom has 1 apples and buys 3 more. How many now?\nAnswer:"
    assert zero[1].targets == ("1 + 3 = 4\n#### 4",)


def test_gsm8k_end_to_end_stored_resumed_and_scored(tiny_llama: Path, tmp_path: Path) -> None:
    import quantcal
    from quantcal.store.database import open_store

    data = _gsm8k_file(tmp_path / "g.jsonl")
    store = tmp_path / "s.sqlite"
    first = quantcal.evaluate_generation(str(tiny_llama), "gsm8k", data_file=data, limit=5, num_fewshot=1,
                                         max_new_tokens=8, store=store, progress=None, resamples=50)
    assert first.n == 5 and first.n_generated_now == 5 and set(first.metrics) == {"conf_seq_prob", "conf_mean_prob",
                                                                                  "conf_answer_prob"}
    assert set(first.metrics["conf_seq_prob"]) >= {"ece", "brier", "nll", "auroc", "overconfidence_rate"}
    again = quantcal.evaluate_generation(str(tiny_llama), "gsm8k", data_file=data, limit=5, num_fewshot=1,
                                         max_new_tokens=8, store=store, progress=None, resamples=50)
    assert again.n_generated_now == 0 and again.acc == first.acc  # resumed from the store
    more = quantcal.evaluate_generation(str(tiny_llama), "gsm8k", data_file=data, limit=7, num_fewshot=1,
                                        max_new_tokens=8, store=store, progress=None, resamples=50)
    assert more.n == 7 and more.n_generated_now == 2  # another limit resumes: only the new items are answered
    other = quantcal.evaluate_generation(str(tiny_llama), "gsm8k", data_file=data, limit=5, num_fewshot=1,
                                         fewshot_seed=99, max_new_tokens=8, store=store, progress=None, resamples=50)
    assert 0 < other.n_generated_now <= 5  # other few-shot examples: those prompts are answered again
    items = first.items()
    assert len(items) == 5 and {"generation", "filtered", "correct", "conf_answer_prob"} <= set(items.columns)
    assert all(0 <= c <= 1 for c in items.conf_seq_prob) and all(items.conf_seq_prob <= items.conf_mean_prob + 1e-12)
    with open_store(store, readonly=True) as db:
        (run,) = db.runs()
        stored = db.generations(run.run_id)
    assert [len(r["tokens"]) for r in stored] == [len(r["logprobs"]) for r in stored] and len(stored) == 7
    assert json.loads(json.dumps(first.to_json()))["exact_match"] == first.acc


def test_an_interrupted_generation_keeps_every_finished_answer(tiny_llama: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One continuous batch answers the whole job, and the answers are stored as they finish: stopped by Ctrl-C after
    5 of 9 answers (fewer than a store chunk), those 5 are in the store and the next run answers only the other 4."""
    import quantcal
    from quantcal.engines import generator

    data = _gsm8k_file(tmp_path / "g.jsonl")
    store = tmp_path / "s.sqlite"
    real = generator.generate_greedy

    def stopped(*args, on_done=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen = []

        def count(i, g):  # noqa: ANN001, ANN202
            on_done(i, g)
            seen.append(i)
            if len(seen) == 5:
                raise KeyboardInterrupt

        return real(*args, on_done=count, **kwargs)

    monkeypatch.setattr(generator, "generate_greedy", stopped)
    with pytest.raises(KeyboardInterrupt):
        quantcal.evaluate_generation(str(tiny_llama), "gsm8k", data_file=data, limit=9, num_fewshot=1, batch_size=3,
                                     max_new_tokens=8, store=store, progress=None, resamples=20)
    monkeypatch.setattr(generator, "generate_greedy", real)
    done = quantcal.evaluate_generation(str(tiny_llama), "gsm8k", data_file=data, limit=9, num_fewshot=1, batch_size=3,
                                        max_new_tokens=8, store=store, progress=None, resamples=20)
    assert done.n == 9 and done.n_generated_now == 4


def test_free_text_bad_input_is_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import quantcal
    from quantcal.cli import app

    with pytest.raises(QuantcalError, match="unknown generation task"):
        quantcal.evaluate_generation(task="nope")
    with pytest.raises(QuantcalError, match="unknown lm-eval task"):
        quantcal.evaluate_generation(task="lm-eval:no_such_task_here")
    result = CliRunner().invoke(app, ["eval", "--task", "gsm8k,piqa", "--limit", "2"])
    assert result.exit_code == 2 and "runs alone" in result.output
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    result = CliRunner().invoke(app, ["eval", "--task", "gsm8k", "--data-file", str(bad), "--limit", "2"])
    assert result.exit_code == 2 and "not a gsm8k row" in result.output


def test_p_true_and_sampled_consistency_are_measured_stored_and_reused(tiny_llama: Path, tmp_path: Path) -> None:
    """conf_p_true from the scorer's log-likelihoods of " (A)" / " (B)" after Kadavath's prompt (recomputed here by a
    plain forward), conf_consistency from k seeded samples (the same seeds give the same samples on a second call,
    which measures nothing new)."""
    import numpy as np

    import quantcal
    from quantcal.analysis.generated import P_TRUE_PROMPT, proposed_answer
    from quantcal.engines.hf_scorer import reference_loglik
    from quantcal.store.database import open_store
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = _gsm8k_file(tmp_path / "g.jsonl")
    args = dict(data_file=data, limit=4, num_fewshot=0, max_new_tokens=6, store=tmp_path / "s.sqlite", progress=None,
                resamples=50, p_true=True, samples=3, temperature=0.8)
    result = quantcal.evaluate_generation(str(tiny_llama), "gsm8k", **args)
    assert {"conf_p_true", "conf_consistency"} <= set(result.metrics)
    items = result.items()
    assert all(0 <= p <= 1 for p in items.conf_p_true) and set(items.conf_consistency) <= {0, 1 / 3, 2 / 3, 1}
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    prompt = P_TRUE_PROMPT.format(question=_gsm8k_question(data, 0),
                                  answer=proposed_answer(GENERATION_TASKS["gsm8k"], items.generation[0]))
    context = tok(prompt)["input_ids"]
    a, b = (reference_loglik(model, context, tok(prompt + c)["input_ids"][len(context):])[0] for c in (" (A)", " (B)"))
    assert items.conf_p_true[0] == pytest.approx(1 / (1 + np.exp(b - a)), abs=1e-4)
    with open_store(tmp_path / "s.sqlite", readonly=True) as db:
        (run,) = db.runs()
        first = db.generation_extras(run.run_id, "samples:k=3,t=0.8,seed=0")
    again = quantcal.evaluate_generation(str(tiny_llama), "gsm8k", **args)
    assert list(again.items().conf_consistency) == list(items.conf_consistency)
    with open_store(tmp_path / "s.sqlite", readonly=True) as db:
        assert db.generation_extras(run.run_id, "samples:k=3,t=0.8,seed=0") == first
    with pytest.raises(QuantcalError, match="temperature above 0"):
        quantcal.evaluate_generation(str(tiny_llama), "gsm8k", **{**args, "temperature": 0.0})


def _gsm8k_question(path: Path, i: int) -> str:
    return json.loads(path.read_text().splitlines()[i])["question"]


def test_a_variant_is_compared_with_the_reference_on_the_same_answers(tiny_llama: Path, tmp_path: Path) -> None:
    """Paired differences per confidence measure (each side with its own correctness, items resampled jointly):
    a variant compared with itself differs by exactly 0; an RTN 2-bit variant changes answers; the CLI prints it."""
    import numpy as np
    from typer.testing import CliRunner

    import quantcal
    from quantcal.cli import app
    from quantcal.metrics.answer_confidence import brier, paired_answer_bootstrap

    data = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "triviaqa_format.jsonl"
    store = tmp_path / "s.sqlite"
    common = dict(data_file=data, limit=6, max_new_tokens=6, store=store, progress=None, resamples=50)
    quantcal.evaluate_generation(str(tiny_llama), "triviaqa", name="ref", **common)
    quantcal.evaluate_generation(str(tiny_llama), "triviaqa", name="same", **common)
    quantcal.evaluate_generation(str(tiny_llama), "triviaqa", name="w2", recipe="rtn:bits=2,group_size=16", **common)
    same = quantcal.compare_generations(store, "ref", "same", "triviaqa", resamples=50)
    assert same.n == 6 and same.changed_answers == 0
    assert all(iv.estimate == 0 and iv.low == 0 and iv.high == 0 for ms in same.differences.values()
               for m, iv in ms.items() if m != "auroc")
    w2 = quantcal.compare_generations(store, "ref", "w2", "triviaqa", resamples=50)
    assert w2.changed_answers > 0 and set(w2.differences) == {"conf_seq_prob", "conf_mean_prob", "conf_answer_prob"}
    c_a, y_a, c_b, y_b = np.array([0.9, 0.2, 0.6]), np.array([1, 0, 1]), np.array([0.5, 0.5, 0.5]), np.array([0, 0, 1])
    iv = paired_answer_bootstrap(brier, (c_a, y_a), (c_b, y_b), 50)
    assert iv.estimate == pytest.approx(np.mean((c_b - y_b) ** 2) - np.mean((c_a - y_a) ** 2))
    result = CliRunner().invoke(app, ["compare", str(store), "--ref", "ref", "--variant", "w2", "--task", "triviaqa",
                                      "--resamples", "50"])
    assert result.exit_code == 0 and "answers changed" in result.output and "seq_prob" in result.output, result.output
    missing = CliRunner().invoke(app, ["compare", str(store), "--task", "triviaqa"])
    assert missing.exit_code == 2 and "--ref" in missing.output


def test_a_study_answers_free_text_tasks_and_reports_their_confidences(tiny_llama: Path, tmp_path: Path,
                                                                       env_cache: Path) -> None:
    """Issue 36: a study's `generation` tasks are answered by the reference and every variant (stored, resumed);
    the report gains a "Generated answers" page (linked from report.html) with each measure's calibration, the
    paired differences and the answers that changed; answers.parquet holds every scored answer. A study of free-text
    tasks only has that page as its report."""
    import pandas as pd

    import quantcal

    data = _gsm8k_file(tmp_path / "g.jsonl", 12)
    study = {"name": "gen", "reference": str(tiny_llama),
             "variants": [{"name": "rtn2", "recipe": "rtn:bits=2,group_size=16"}],
             "tasks": [{"name": "arithmetic", "limit": 6}],
             "generation": [{"name": "gsm8k", "data_file": str(data), "limit": 8, "num_fewshot": 1,
                             "max_gen_toks": 8, "p_true": True}],
             "bootstrap": {"resamples": 50}}
    result = quantcal.run_study(study, output=tmp_path / "out", progress=None)
    assert not result.failures
    assert (tmp_path / "out" / "generation.html").is_file() and 'href="generation.html"' in result.page.read_text()
    block = result.report.results["generation"]["tasks"]["gsm8k[1-shot]"]
    assert set(block["variants"]) == {"reference", "rtn2"} and set(block["paired"]) == {"rtn2"}
    assert "conf_p_true" in block["variants"]["rtn2"]["metrics"]
    paired = block["paired"]["rtn2"]
    assert paired["n"] == 8 and set(paired["differences"]["conf_seq_prob"]) >= {"acc", "ece", "auroc"}
    answers = pd.read_parquet(tmp_path / "out" / "answers.parquet")
    assert len(answers) == 16 and {"variant", "task", "generation", "filtered", "correct", "conf_p_true"} <= set(answers.columns)
    page = (tmp_path / "out" / "generation.html").read_text()
    assert "gsm8k[1-shot]" in page and "rtn2 vs reference" in page
    # a reliability figure per measure (a panel per model) and every answer in the explorer, with its question
    assert (tmp_path / "out" / "figures" / "generation_1_conf_p_true.svg").is_file()
    assert 'src="figures/generation_1_conf_seq_prob.svg"' in page and "Every answer (8 items)" in page
    assert set(answers.question) == {f"Tom has {i} apples and buys {i + 2} more. How many now?" for i in range(8)}
    assert answers.question.iloc[0] in page
    # load_items / export carry the generated answers beside the multiple-choice records, as the page scored them
    items = quantcal.load_items(tmp_path / "out")
    free = items[items.task == "gsm8k[1-shot]"]
    assert len(free) == 16 and free.normalization.isna().all() and free.gold.isna().all()
    assert (items[items.task != "gsm8k[1-shot]"].generation.isna()).all()
    mine = free.set_index(["variant", "item_id"]).sort_index()
    page_rows = answers.set_index(["variant", "item_id"]).sort_index()
    for column in ("generation", "filtered", "correct", "conf_seq_prob", "conf_p_true"):
        assert list(mine[column]) == list(page_rows[column]), column
    assert mine.question.str.endswith("How many now?\nAnswer:").all()  # the prompt answered
    exported, n = quantcal.export(tmp_path / "out" / "study.sqlite", tmp_path / "all.csv", fmt="csv")
    assert n == len(items) and "conf_p_true" in exported.read_text().splitlines()[0]
    again = quantcal.run_study(study, output=tmp_path / "out", progress=None)
    generated = [j for j in again.jobs if j.task == "gsm8k[1-shot]"]
    assert len(generated) == 2 and all(j.ok and j.n_scored_now == 0 for j in generated)  # resumed
    alone = quantcal.run_study({**study, "tasks": []}, output=tmp_path / "alone", progress=None)
    assert alone.page.name == "report.html" and "<h1>gen: generated answers</h1>" in alone.page.read_text()
    # rebuilt from the store alone (no scoring): the same numbers, for a free-text-only study and a mixed one
    rebuilt = quantcal.rebuild_report(alone.store, output=tmp_path / "rebuilt")
    def same(a: dict, b: dict) -> bool:  # NaN (an AUROC with one outcome) compares unequal to itself
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    assert rebuilt.page.name == "report.html" and same(rebuilt.results["generation"], alone.report.results["generation"])
    both = quantcal.rebuild_report(tmp_path / "out" / "study.sqlite", output=tmp_path / "rebuilt2")
    assert same(both.results["generation"], result.report.results["generation"])
    assert 'href="generation.html"' in both.page.read_text() and (tmp_path / "rebuilt2" / "generation.html").is_file()
    with pytest.raises(QuantcalError, match="at least one task"):
        quantcal.run_study({**study, "tasks": [], "generation": []}, output=tmp_path / "none", progress=None)
    with pytest.raises(QuantcalError, match="generation task gsm8k"):
        quantcal.run_study({**study, "generation": [{"name": "gsm8k", "data_file": str(tmp_path / "missing.jsonl")}]},
                           output=tmp_path / "bad", progress=None)
    chat = quantcal.run_study({**study, "tasks": [], "apply_chat_template": True}, output=tmp_path / "chat",
                              progress=None)  # the reference's chat template renders every model's prompts
    assert {j.task for j in chat.jobs} == {"gsm8k[1-shot chat]"} and not chat.failures
    with pytest.raises(QuantcalError, match="apply to `tasks` only"):
        quantcal.run_study({**study, "apply_chat_template": True, "system_instruction": "Be brief."},
                           output=tmp_path / "sys", progress=None)


def _lm_eval_gsm8k(folder: Path, data: Path, extra: str = "") -> Path:
    """A task YAML over lm-eval's own gsm8k.yaml reading ``data`` (few-shot examples from the same file, the item
    left out, as quantcal's built-in task does with a data file)."""
    lm_eval = pytest.importorskip("lm_eval")
    folder.mkdir(parents=True, exist_ok=True)
    base = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    (folder / "gsm8k_local.yaml").write_text(
        f"include: {base}\ntask: gsm8k_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}}}}\ntraining_split: null\n"
        f"fewshot_split: test\ntest_split: test\n{extra}")
    return folder


def test_an_lm_eval_group_of_generate_until_tasks_is_answered_task_by_task(tiny_llama: Path, tmp_path: Path,
                                                                            env_cache: Path) -> None:
    """`lm-eval:GROUP` of generate_until tasks: each task answered (model loaded once, each its own run), the
    group's exact match aggregated by size as lm-eval does, calibration over every answer; the same in a study's
    `generation` list (one entry per task) and on the command line (a line per task)."""
    from typer.testing import CliRunner

    import quantcal
    from quantcal.cli import app
    from quantcal.tasks.free_text import is_free_text

    data = _gsm8k_file(tmp_path / "g.jsonl", 8)
    include = _lm_eval_gsm8k(tmp_path / "yaml", data)
    text = (include / "gsm8k_local.yaml").read_text()
    (include / "gsm8k_local_b.yaml").write_text(text.replace("task: gsm8k_local", "task: gsm8k_local_b"))
    (include / "local_math.yaml").write_text("group: local_math\ntask: [gsm8k_local, gsm8k_local_b]\n"
                                             "aggregate_metric_list: [{metric: exact_match, weight_by_size: true}]\n")
    assert is_free_text("lm-eval:local_math", str(include))
    store = tmp_path / "s.sqlite"
    group = quantcal.evaluate_generation(str(tiny_llama), "lm-eval:local_math", lm_eval_include=include, limit=3,
                                         num_fewshot=1, max_new_tokens=8, store=store, name="m", progress=None,
                                         resamples=20)
    assert [m.task for m in group.members] == ["lm-eval:gsm8k_local", "lm-eval:gsm8k_local_b"] and group.n == 6
    assert group.acc == pytest.approx(sum(m.acc * m.n for m in group.members) / 6)
    assert len(group.items()) == 6 and group.to_json()["tasks"][1]["n"] == 3
    alone = quantcal.evaluate_generation(str(tiny_llama), "lm-eval:gsm8k_local_b", lm_eval_include=include, limit=3,
                                         num_fewshot=1, max_new_tokens=8, store=store, name="m", progress=None,
                                         resamples=20)
    assert alone.n_generated_now == 0 and alone.acc == group.members[1].acc  # the same run, resumed
    shown = CliRunner().invoke(app, ["eval", "--model", str(tiny_llama), "--task", "lm-eval:local_math",
                                     "--lm-eval-include", str(include), "--limit", "3", "--num-fewshot", "1",
                                     "--max-gen-toks", "8", "--store", str(store), "--name", "m"])
    assert shown.exit_code == 0 and "group of 2 tasks" in shown.output, shown.output
    study = quantcal.run_study({"name": "g", "reference": str(tiny_llama),
                                "variants": [{"name": "rtn2", "recipe": "rtn:bits=2,group_size=16"}],
                                "generation": [{"name": "lm-eval:local_math", "include": str(include), "limit": 2,
                                                "num_fewshot": 1, "max_gen_toks": 8}],
                                "bootstrap": {"resamples": 20}}, output=tmp_path / "study", progress=None)
    assert {j.task for j in study.jobs} == {"lm-eval:gsm8k_local[1-shot]", "lm-eval:gsm8k_local_b[1-shot]"}
    assert not study.failures and len(study.jobs) == 4


def test_built_in_free_text_under_a_chat_template_is_rendered_as_lm_eval_renders_it(smol_checkpoint: Path,
                                                                                     tmp_path: Path) -> None:
    """Built-in gsm8k with ``apply_chat_template``: the same prompts, byte for byte, as lm-eval's own
    ``--apply_chat_template`` (few-shot examples as user/assistant turns) on the same file, with SmolLM2's chat
    template; the task's name says chat; a tokenizer without a template is one line."""
    from transformers import AutoTokenizer

    from quantcal.tasks.free_text import load_free_text

    data = _gsm8k_file(tmp_path / "g.jsonl", 8)
    include = _lm_eval_gsm8k(tmp_path / "yaml", data)
    tok = AutoTokenizer.from_pretrained(smol_checkpoint)
    _, ours, label = load_free_text("gsm8k", data, limit=4, num_fewshot=2, tokenizer=tok, apply_chat_template=True)
    _, theirs, _ = load_free_text("lm-eval:gsm8k_local", limit=4, num_fewshot=2, include=str(include), tokenizer=tok,
                                  apply_chat_template=True)
    assert label == "gsm8k[2-shot chat]"
    assert [it.prompt for it in ours] == [it.prompt for it in theirs]
    assert ours[0].prompt.count("<|im_start|>assistant") == 3  # two examples answered, then the generation prompt
    tok.chat_template = None
    with pytest.raises(QuantcalError, match="has no chat template"):
        load_free_text("gsm8k", data, limit=2, tokenizer=tok, apply_chat_template=True)


def test_lm_eval_generate_until_tasks_are_answered_as_the_built_in_task(tiny_llama: Path, tmp_path: Path) -> None:
    """Issue 36: `lm-eval:NAME` of a generate_until task: lm-eval renders the prompts, its config gives until,
    filters and exact-match options; on the same file the answers, filtered answers and correctness equal the
    built-in gsm8k's. A loglikelihood_rolling task, a metric other than exact_match and a filter quantcal does not
    apply are refused in one line."""
    import quantcal
    from quantcal.tasks.free_text import is_free_text, load_free_text

    data = _gsm8k_file(tmp_path / "g.jsonl", 8)
    include = _lm_eval_gsm8k(tmp_path / "yaml", data)
    assert is_free_text("lm-eval:gsm8k_local", str(include)) and is_free_text("gsm8k")
    assert not is_free_text("piqa") and not is_free_text("lm-eval:gsm8k_local_nope", str(include))
    task, items, label = load_free_text("lm-eval:gsm8k_local", limit=4, num_fewshot=1, include=str(include))
    built_in = load_generation_items(GENERATION_TASKS["gsm8k"], data, 4, 1)
    assert label == "lm-eval:gsm8k_local[1-shot]" and [it.prompt for it in items] == [it.prompt for it in built_in]
    assert task.until == GENERATION_TASKS["gsm8k"].until and task.filters == GENERATION_TASKS["gsm8k"].filters
    assert task.match == GENERATION_TASKS["gsm8k"].match
    store = tmp_path / "s.sqlite"
    ours = quantcal.evaluate_generation(str(tiny_llama), "lm-eval:gsm8k_local", lm_eval_include=include, limit=4,
                                        num_fewshot=1, max_new_tokens=8, store=store, name="lm", progress=None,
                                        resamples=20)
    plain = quantcal.evaluate_generation(str(tiny_llama), "gsm8k", data_file=data, limit=4, num_fewshot=1,
                                         max_new_tokens=8, store=store, name="builtin", progress=None, resamples=20)
    a, b = ours.items(), plain.items()
    assert list(a.generation) == list(b.generation) and list(a.correct) == list(b.correct)
    assert list(a.filtered) == list(b.filtered)
    compared = quantcal.compare_generations(store, "lm", "lm", "lm-eval:gsm8k_local[1-shot]", resamples=20)
    assert compared.n == 4  # scored again from the run's recorded definition, without lm-eval's task
    rolling = _lm_eval_gsm8k(tmp_path / "rolling", data, "output_type: loglikelihood_rolling\n")
    (rolling / "gsm8k_local.yaml").rename(rolling / "gsm8k_roll.yaml")
    text = (rolling / "gsm8k_roll.yaml").read_text().replace("task: gsm8k_local", "task: gsm8k_roll")
    (rolling / "gsm8k_roll.yaml").write_text(text)
    with pytest.raises(QuantcalError, match="loglikelihood_rolling task"):
        load_free_text("lm-eval:gsm8k_roll", limit=2, include=str(rolling))
    other = _lm_eval_gsm8k(tmp_path / "bleu", data, "metric_list: [{metric: bleu}]\n")
    with pytest.raises(QuantcalError, match="scored by bleu"):
        load_free_text("lm-eval:gsm8k_local", limit=2, include=str(other))
    vote = _lm_eval_gsm8k(tmp_path / "vote", data,
                          "filter_list: [{name: maj, filter: [{function: majority_vote}, {function: take_first}]}]\n")
    with pytest.raises(QuantcalError, match="uses 'majority_vote'"):
        load_free_text("lm-eval:gsm8k_local", limit=2, include=str(vote))
