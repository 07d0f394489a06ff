"""Every kind of bad input: one clear message naming the file/line or item, exit code 2, no traceback,
and a store that still works afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from tests.conftest import write_jsonl

runner = CliRunner()
GOOD = {"question": "2+2?", "choices": ["3", "4"], "answer": 1}


def run(*args: str):  # noqa: ANN202
    return runner.invoke(app, list(args))


def assert_user_error(result, *fragments: str) -> None:  # noqa: ANN001
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert "error:" in output
    for fragment in fragments:
        assert fragment in output, (fragment, output)


def eval_custom(path: Path, model: Path, store: Path):  # noqa: ANN202
    return run("eval", "--model", str(model), "--task", "custom", "--data-file", str(path), "--store", str(store))


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return tmp_path / "s.sqlite"


def test_unknown_task(tmp_path: Path, store: Path) -> None:
    assert_user_error(run("eval", "--task", "nope", "--store", str(store)), "unknown task 'nope'", "piqa")


def test_unknown_model(store: Path) -> None:
    assert_user_error(run("eval", "--model", "no-such-model", "--store", str(store)), "unknown model 'no-such-model'")


def test_missing_gguf_and_checkpoint_dir(tmp_path: Path, store: Path) -> None:
    assert_user_error(run("eval", "--model", str(tmp_path / "x.gguf"), "--store", str(store)), "GGUF file not found")
    assert_user_error(run("eval", "--model", str(tmp_path), "--store", str(store)), "no config.json")


def test_missing_data_file(tmp_path: Path, tiny_llama: Path, store: Path) -> None:
    assert_user_error(eval_custom(tmp_path / "absent.jsonl", tiny_llama, store), "absent.jsonl", "not found")


def test_unreadable_file_type(tmp_path: Path, tiny_llama: Path, store: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("hello")
    assert_user_error(eval_custom(path, tiny_llama, store), "unsupported file type '.txt'")


def test_malformed_line_names_file_and_line(tmp_path: Path, tiny_llama: Path, store: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"question": "broken",\n')
    assert_user_error(eval_custom(path, tiny_llama, store), "q.jsonl:2", "not valid JSON")


def test_missing_field(tmp_path: Path, tiny_llama: Path, store: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD, {"question": "no choices", "answer": 0}])
    assert_user_error(eval_custom(path, tiny_llama, store), "q.jsonl:2", "item 1", "missing field 'choices'")


def test_single_choice_and_empty_choice(tmp_path: Path, tiny_llama: Path, store: Path) -> None:
    path = write_jsonl(tmp_path / "one.jsonl", [{"id": "solo", "question": "q", "choices": ["only"], "answer": 0}])
    assert_user_error(eval_custom(path, tiny_llama, store), "item solo", "at least 2 choices")
    path = write_jsonl(tmp_path / "empty.jsonl", [{"id": "e", "question": "q", "choices": ["a", " "], "answer": 0}])
    assert_user_error(eval_custom(path, tiny_llama, store), "item e", "choice 1 is empty")


def test_gold_out_of_range(tmp_path: Path, tiny_llama: Path, store: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"id": "g", "question": "q", "choices": ["a", "b"], "answer": 2}])
    assert_user_error(eval_custom(path, tiny_llama, store), "item g", "gold answer 2 out of range", "0..1")


def test_hub_schema_mismatch_names_expected_fields(tmp_path: Path, tiny_llama: Path, store: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"goal": "g", "sol1": "a", "label": 0}])
    result = run("eval", "--model", str(tiny_llama), "--task", "piqa", "--data-file", str(path), "--store", str(store))
    assert_user_error(result, "missing field 'sol2'", "goal, sol1, sol2, label")


def test_bad_numbers(store: Path) -> None:
    assert_user_error(run("eval", "--limit", "0", "--store", str(store)), "--limit")
    assert_user_error(run("eval", "--batch-size", "0", "--store", str(store)), "--batch-size")
    assert_user_error(run("eval", "--max-batch-tokens", "-1", "--store", str(store)), "--max-batch-tokens")


def test_not_a_store(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.sqlite"
    bogus.write_text("this is not sqlite" * 100)
    assert_user_error(run("export", "--store", str(bogus)), "not a quantcal store")
    assert_user_error(run("export", "--store", str(tmp_path / "none.sqlite")), "store not found")


def test_store_survives_bad_input(tmp_path: Path, tiny_llama: Path, store: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD, dict(GOOD, question="3+3?", choices=["6", "7"], answer=0)])
    first = eval_custom(good, tiny_llama, store)
    assert first.exit_code == 0, first.output
    bad = write_jsonl(tmp_path / "bad.jsonl", [dict(GOOD, answer=9)])
    assert_user_error(eval_custom(bad, tiny_llama, store), "out of range")
    again = eval_custom(good, tiny_llama, store)
    assert again.exit_code == 0, again.output
    exported = run("export", "--store", str(store), "--format", "jsonl", "--out", str(tmp_path / "e.jsonl"))
    assert exported.exit_code == 0, exported.output
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    assert len(lines) == 2 and {json.loads(x)["item_id"] for x in lines} == {"0", "1"}


# few-shot, chat templates and lm-eval tasks ------------------------------------------------------------------------
def assert_store_untouched(store: Path) -> None:
    """The store was not written, or holds no run (nothing half-made)."""
    if store.exists():
        from quantcal.store.database import open_store

        with open_store(store) as db:
            assert db.runs() == []


def test_num_fewshot_larger_than_the_pool(tmp_path: Path, tiny_llama: Path, store: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD, GOOD | {"question": "3+3?"}])
    result = run("eval", "--model", str(tiny_llama), "--task", "custom", "--data-file", str(path), "--store", str(store),
                 "--num-fewshot", "2")
    assert_user_error(result, "--num-fewshot is 2 but the few-shot pool of custom has 1 example(s) besides the item")
    assert_store_untouched(store)


def test_chat_template_asked_of_a_model_without_one(tmp_path: Path, tiny_llama: Path, store: Path) -> None:
    import shutil

    plain = tmp_path / "no-chat"
    shutil.copytree(tiny_llama, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in plain.glob("chat_template.*"):
        extra.unlink()
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD])
    result = run("eval", "--model", str(plain), "--task", "custom", "--data-file", str(path), "--store", str(store),
                 "--apply-chat-template")
    assert_user_error(result, "--apply-chat-template", "has no chat template")
    assert_store_untouched(store)


def test_fewshot_as_multiturn_without_a_chat_template(store: Path) -> None:
    assert_user_error(run("eval", "--fewshot-as-multiturn", "--num-fewshot", "1", "--store", str(store)),
                      "--fewshot-as-multiturn needs --apply-chat-template")


@pytest.mark.heavy
def test_unknown_lm_eval_task(store: Path) -> None:
    pytest.importorskip("lm_eval")
    assert_user_error(run("eval", "--task", "lm-eval:no_such_task_anywhere", "--store", str(store)),
                      "unknown lm-eval task 'no_such_task_anywhere'")
    assert_store_untouched(store)


@pytest.mark.heavy
def test_generate_until_lm_eval_task(tmp_path: Path, tiny_llama: Path, store: Path, shared_data: Path) -> None:
    lm_eval = pytest.importorskip("lm_eval")
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    data = shared_data / "openbookqa" / "test.jsonl"
    (tmp_path / "gen.yaml").write_text(
        f"include: {tasks_dir / 'openbookqa/openbookqa.yaml'}\ntask: local_gen\ndataset_path: json\n"
        f"dataset_name: null\ndataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}}}}\n"
        "training_split: null\nvalidation_split: null\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_target: '{{answerKey}}'\n")
    result = run("eval", "--model", str(tiny_llama), "--task", "lm-eval:local_gen", "--lm-eval-include", str(tmp_path),
                 "--limit", "3", "--store", str(store))
    assert_user_error(result, "lm-eval:local_gen is scored by acc")  # answered in free text: exact_match only
    assert_store_untouched(store)


def test_lm_eval_extra_missing(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from quantcal.tasks import lm_eval_tasks

    lm_eval_tasks._task_manager.cache_clear()
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)
    try:
        result = run("eval", "--task", "lm-eval:piqa", "--store", str(store))
    finally:
        lm_eval_tasks._task_manager.cache_clear()
    assert_user_error(result, "pip install 'quantcal[lm-eval]'")
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert_store_untouched(store)
