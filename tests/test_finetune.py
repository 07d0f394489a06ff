"""QLoRA / LoRA fine-tuning: data, held-out check, native vs simulated NF4, exact resume, deployment forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_jsonl
from quantcal.errors import QuantcalError
from quantcal.finetune.base import BaseConfig, load_base
from quantcal.finetune.data import (Example, check_disjoint, collate, examples_from_items, load_examples,
                                    tokenize_examples)
from quantcal.finetune.train import FinetuneRun, LoraSettings, TrainSettings, batch_indices, finetune, read_log
from quantcal.tasks.items import Item
from quantcal.sources.models import resolve_source


def _examples(n: int = 40) -> list[Example]:
    colours = ["red", "green", "blue", "white"]
    return [Example(f"Question {i}: the colour of thing {i} is", f" {colours[i % 4]}", f"row {i}") for i in range(n)]


def _run(tiny: Path, steps: int = 12, form: str = "simulated", method: str = "qlora") -> FinetuneRun:
    return FinetuneRun(resolve_source(str(tiny)), BaseConfig(method, form), LoraSettings(r=4, alpha=8, dropout=0.1),  # type: ignore[arg-type]
                       TrainSettings(steps=steps, lr=5e-3, warmup_steps=2, batch_size=4, max_length=32, save_every=5,
                                     eval_every=5, val_size=8, seed=3))


def test_items_become_prompt_and_gold_completion_and_only_completion_is_trained(smol_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    item = Item("7", "Q: 2+2=\nA:", ("3", "4", "5"), 1)
    (ex,) = examples_from_items([item], " ")
    assert (ex.prompt, ex.completion) == ("Q: 2+2=\nA:", " 4")
    tok = AutoTokenizer.from_pretrained(smol_checkpoint)
    (t,) = tokenize_examples([ex], tok, 64)
    batch = collate([t, t], pad_id=0)
    labels = batch["labels"][0]
    assert (labels[: t.n_prompt] == -100).all()
    trained = tok.decode(labels[labels != -100])
    assert trained.startswith(" 4") and trained.endswith(tok.eos_token)


def test_overlong_examples_keep_their_completion(smol_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_checkpoint)
    (t,) = tokenize_examples([Example("word " * 200, " answer")], tok, 16)
    assert len(t.input_ids) == 16 and 0 < t.n_prompt < 16


def test_held_out_items_are_refused_even_with_other_whitespace() -> None:
    held = [Item("a", "Which  colour\nis the sky?", ("blue", "red"), 0)]
    check_disjoint([Example("Another question?", " x")], held)
    with pytest.raises(QuantcalError, match="held out"):
        check_disjoint([Example("Which colour is the sky? ", " blue", "train.jsonl:3")], held)


def test_jsonl_sources_prompt_completion_and_chat(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": "P1", "completion": " C1"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ])
    a, b = load_examples(str(path))
    assert (a.prompt, a.completion) == ("P1", " C1")
    assert b.prompt == "user: hi\nassistant:" and b.completion == "hello"
    assert [e.prompt for e in load_examples(str(path), skip=1)] == [b.prompt]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}])
    with pytest.raises(QuantcalError, match="last message must be the assistant"):
        load_examples(str(bad))
    with pytest.raises(QuantcalError, match="unknown training source"):
        load_examples("nothing-here")


def test_hub_instruction_source_reads_the_named_split(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.tasks.data_files import Row
    from quantcal.finetune import data as data_module

    calls = []

    def fake_hub(path: str, config: object, split: str) -> list[Row]:
        calls.append((path, config, split))
        return [Row({"prompt": "Say hi.", "completion": " hi"}, 0, f"{path}[0]")]

    monkeypatch.setattr(data_module, "read_hub_rows", fake_hub)
    (ex,) = load_examples("hub:org/instructions:train_sft")
    assert calls == [("org/instructions", None, "train_sft")] and ex.completion == " hi"
    load_examples("hub:org/instructions")
    assert calls[-1][2] == "train"


def test_data_order_is_a_function_of_seed_and_step() -> None:
    n, bs = 10, 3
    stream = [i for step in range(10) for batch in batch_indices(step, 2, bs, n, seed=5) for i in batch]
    assert sorted(stream[:n]) == list(range(n)) and sorted(stream[n:2 * n]) == list(range(n))
    assert list(batch_indices(7, 2, bs, n, 5)) == list(batch_indices(7, 2, bs, n, 5))
    assert list(batch_indices(0, 1, bs, n, 5)) != list(batch_indices(0, 1, bs, n, 6))


def test_native_and_simulated_nf4_bases_give_the_same_log_likelihoods(tiny_llama: Path) -> None:
    source = resolve_source(str(tiny_llama))
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    out = {}
    for form in ("simulated", "native"):
        model = load_base(source, BaseConfig("qlora", form)).model  # type: ignore[arg-type]
        with torch.no_grad():
            out[form] = model(ids).logits.float().log_softmax(-1)
    float_model = load_base(source, BaseConfig("lora")).model
    with torch.no_grad():
        float_lp = float_model(ids).logits.log_softmax(-1)
    assert torch.allclose(out["simulated"], out["native"], atol=1e-4)
    assert (out["simulated"] - float_lp).abs().max() > 1e-3  # the 4-bit base is not the float one


def test_training_lowers_the_loss_and_resume_matches_an_uninterrupted_run(tmp_path: Path, tiny_llama: Path) -> None:
    examples = _examples()
    full = finetune(_run(tiny_llama), examples, tmp_path / "full")
    assert full["steps_done"] == 12 and full["final_train_loss"] < full["first_train_loss"]
    with pytest.raises(KeyboardInterrupt):
        finetune(_run(tiny_llama), examples, tmp_path / "cut", stop_after=7)
    assert (tmp_path / "cut" / "checkpoints" / "step-000007" / "state.pt").is_file()
    with pytest.raises(QuantcalError, match="`resume`"):
        finetune(_run(tiny_llama), examples, tmp_path / "cut")
    resumed = finetune(_run(tiny_llama), examples, tmp_path / "cut", resume=True)
    assert resumed["resumed_from"] == "step-000007"
    a, b = read_log(tmp_path / "full" / "log.csv"), read_log(tmp_path / "cut" / "log.csv")
    assert [r["step"] for r in b] == list(range(1, 13))
    assert max(abs(x["train_loss"] - y["train_loss"]) for x, y in zip(a, b)) < 1e-5
    assert abs(full["final_eval_loss"] - resumed["final_eval_loss"]) < 1e-5
    assert (tmp_path / "full" / "loss.png").is_file()
    assert finetune(_run(tiny_llama), examples, tmp_path / "full", resume=True) == full  # finished: reused as is
    other = _run(tiny_llama)
    other = FinetuneRun(other.model, other.base, LoraSettings(r=8), other.train)
    with pytest.raises(QuantcalError, match="other settings.*lora"):
        finetune(other, examples, tmp_path / "cut", resume=True)
    meta = json.loads((tmp_path / "full" / "adapter" / "quantcal-finetune.json").read_text())
    assert meta["base"]["method"] == "qlora" and meta["data"]["n_train"] + meta["data"]["n_val"] == len(examples)


@pytest.mark.heavy
def test_deployment_forms(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.variants.definition import VariantDef, load_variant_model, prepare

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    finetune(_run(tiny_llama, steps=6), _examples(), tmp_path / "run")
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(1))
    lp = {}
    for form in ("nf4", "nf4-native", "merged"):
        defn = VariantDef(adapter=str(tmp_path / "run"), deploy=form)
        model = load_variant_model(defn, resolve_source(defn.base_spec())).model
        with torch.no_grad():
            lp[form] = model(ids).logits.float().log_softmax(-1)
    assert torch.allclose(lp["nf4"], lp["nf4-native"], atol=1e-4)
    assert (lp["nf4"] - lp["merged"]).abs().max() > 1e-3
    prepared = prepare(VariantDef(adapter=str(tmp_path / "run"), recipe="rtn:bits=4,group_size=32"))
    source, extra, holder = prepared.source, prepared.config, prepared.holder
    assert extra["deploy"] == "merged" and extra["recipe"].startswith("rtn") and source.location == str(tiny_llama.resolve())
    with torch.no_grad():
        requantized = holder.get().model(ids).logits.log_softmax(-1)
    assert (requantized - lp["merged"]).abs().max() > 1e-4
    with pytest.raises(QuantcalError, match="merged"):
        prepare(VariantDef(adapter=str(tmp_path / "run"), recipe="rtn:bits=4", deploy="nf4"))


def test_cli_finetune_refuses_held_out_items_and_eval_scores_the_adapter(tmp_path: Path, tiny_llama: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.cli import app

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    rows = [{"question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1)], "answer": 0} for i in range(30)]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    runner = CliRunner()
    common = ["finetune", "--model", str(tiny_llama), "--data", "task:custom", "--data-file", str(data),
              "--steps", "3", "--batch-size", "2", "--max-length", "32", "--r", "2", "--target-modules", "q_proj,v_proj"]
    refused = runner.invoke(app, common + ["--out", str(tmp_path / "x"), "--holdout", f"custom={data}@10"])
    assert refused.exit_code == 2 and "held out" in refused.output
    paged = runner.invoke(app, common + ["--out", str(tmp_path / "p"), "--optim", "paged_adamw"])
    assert paged.exit_code == 2 and "needs a CUDA device" in paged.output
    ok = runner.invoke(app, common + ["--out", str(tmp_path / "ft"), "--skip", "10", "--holdout", f"custom={data}@10"])
    assert ok.exit_code == 0, ok.output
    scored = runner.invoke(app, ["eval", "--adapter", str(tmp_path / "ft"), "--task", "custom", "--data-file", str(data),
                                 "--limit", "10", "--store", str(tmp_path / "s.sqlite"), "--output-json", str(tmp_path / "r.json")])
    assert scored.exit_code == 0, scored.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["variant"].endswith("adapter-nf4") and result["results"]["custom"]["n"] == 10


@pytest.mark.heavy
def test_study_trains_its_adapter_holding_out_what_it_evaluates(tmp_path: Path, tiny_llama: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.cli import app

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    rows = [{"question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1)], "answer": i % 2} for i in range(40)]
    write_jsonl(tmp_path / "qa.jsonl", rows)

    def study(skip: int, output: str) -> Path:
        path = tmp_path / f"{output}.yaml"
        path.write_text(f"""reference: {tiny_llama}
variants:
  - name: qlora
    finetune: {{data: "task:custom", data_file: qa.jsonl, skip: {skip}, steps: 3, batch_size: 2, max_length: 32, r: 2,
               target_modules: [q_proj, v_proj]}}
  - name: qlora-merged-w4
    finetune: {{data: "task:custom", data_file: qa.jsonl, skip: {skip}, steps: 3, batch_size: 2, max_length: 32, r: 2,
               target_modules: [q_proj, v_proj]}}
    recipe: rtn:bits=4,group_size=16
tasks:
  - {{name: custom, data_file: qa.jsonl, limit: 15}}
output: {output}
bootstrap: {{resamples: 20}}
""")
        return path

    runner = CliRunner()
    ok = runner.invoke(app, ["run", str(study(15, "good"))])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "good" / "adapters" / "qlora" / "adapter" / "adapter_config.json").is_file()
    assert [p.name for p in (tmp_path / "good" / "adapters").iterdir()] == ["qlora"]  # one block, trained once
    results = json.loads((tmp_path / "good" / "results.json").read_text())
    assert set(results["tasks"]["custom"]["none"]["variants"]) == {"reference", "qlora", "qlora-merged-w4"}
    assert len(results["notes"]) == 2 and "confound" in results["notes"][0]
    deploys = {r["variant"]: r["config"].get("deploy") for r in results["runs"]}
    assert deploys == {"reference": None, "qlora": "nf4", "qlora-merged-w4": "merged"}
    leaky = runner.invoke(app, ["run", str(study(5, "leaky"))])
    assert leaky.exit_code == 1
    failures = json.loads((tmp_path / "leaky" / "results.json").read_text())["study"]["failures"]
    assert any(f["task"] == "finetune" and "held out" in f["error"] for f in failures)


def test_native_and_simulated_nf4_agree_on_the_bundled_smollm2(smol_checkpoint: Path) -> None:
    source = resolve_source("smollm2-135m-instruct")
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(smol_checkpoint)(["The capital of France is Paris, and of Italy"],
                                                          return_tensors="pt").input_ids
    out = []
    for form in ("simulated", "native"):
        with torch.no_grad():
            out.append(load_base(source, BaseConfig("qlora", form)).model(ids).logits.log_softmax(-1))  # type: ignore[arg-type]
    assert torch.allclose(out[0], out[1], atol=1e-4)
