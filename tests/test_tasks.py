"""Task loaders: lm-eval 0.4.x prompts, choices and gold indices, on real files and on rows in hub schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantcal.errors import QuantcalError
from quantcal.tasks import TASKS, get_task, load_items
from quantcal.tasks.arithmetic import generate
from quantcal.tasks.hellaswag import preprocess
from quantcal.tasks.mmlu import SUBJECTS
from tests.conftest import write_jsonl


def test_registry_has_every_task() -> None:
    expected = {"arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "openbookqa", "xstorycloze_en", "mmlu",
                "truthfulqa_mc1", "truthfulqa_mc2", "custom", "arithmetic"}
    assert expected == set(TASKS)


def test_piqa_real_file(shared_data: Path) -> None:
    items = load_items(get_task("piqa"), shared_data / "piqa" / "validation.jsonl")
    assert len(items) == 1838
    first = items[0]
    assert first.context == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert first.choices[0].startswith("Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper")
    assert first.gold == 0 and items[1].gold == 1


def test_boolq_real_file(shared_data: Path) -> None:
    items = load_items(get_task("boolq"), shared_data / "boolq" / "validation.jsonl", limit=5)
    row = json.loads((shared_data / "boolq" / "validation.jsonl").open().readline())
    assert items[0].context == f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    assert items[0].choices == ("no", "yes") and items[0].gold == row["label"]
    assert items[0].id == str(row["idx"])


def test_openbookqa_real_file(shared_data: Path) -> None:
    items = load_items(get_task("openbookqa"), shared_data / "openbookqa" / "test.jsonl")
    assert len(items) == 500
    assert items[0].id == "8-343" and items[0].gold == 1 and items[0].choices[1] == "quit eating lunch out"
    assert items[0].context.startswith("A person wants to start saving money")


def test_hellaswag_real_file_and_preprocessing(shared_data: Path) -> None:
    items = load_items(get_task("hellaswag"), shared_data / "hellaswag" / "validation.jsonl", limit=3)
    assert items[0].context == "Roof shingle removal: A man is sitting on a roof. he"
    assert items[0].gold == 3 and len(items[0].choices) == 4
    assert preprocess(" How to cook [title] Boil water. [step] Stir  it.") == "How to cook. Boil water. Stir it."


def test_arc_rows_in_hub_schema(tmp_path: Path) -> None:
    row = {"id": "Mercury_7175875", "question": "Which is a gas?",
           "choices": {"text": ["ice", "steam", "rock", "wood"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"}
    numeric = dict(row, id="x2", choices={"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, answerKey="3")
    for name in ("arc_easy", "arc_challenge"):
        items = load_items(get_task(name), write_jsonl(tmp_path / f"{name}.jsonl", [row, numeric]))
        assert items[0].context == "Question: Which is a gas?\nAnswer:"
        assert items[0].gold == 1 and items[0].id == "Mercury_7175875"
        assert items[1].gold == 2


def test_xstorycloze_rows(tmp_path: Path) -> None:
    row = {"story_id": "s1", "input_sentence_1": "A.", "input_sentence_2": "B.", "input_sentence_3": "C.",
           "input_sentence_4": "D.", "sentence_quiz1": "E1.", "sentence_quiz2": "E2.", "answer_right_ending": 2}
    (item,) = load_items(get_task("xstorycloze_en"), write_jsonl(tmp_path / "x.jsonl", [row]))
    assert item.context == "A. B. C. D." and item.choices == ("E1.", "E2.") and item.gold == 1


def test_mmlu_rows(tmp_path: Path) -> None:
    assert len(SUBJECTS) == 57
    row = {"question": " What is 2+2? ", "subject": "high_school_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1}
    (item,) = load_items(get_task("mmlu"), write_jsonl(tmp_path / "m.jsonl", [row]))
    assert item.context == ("The following are multiple choice questions (with answers) about high school mathematics.\n\n"
                            "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert item.choices == ("A", "B", "C", "D") and item.gold == 1


def test_truthfulqa_rows(tmp_path: Path) -> None:
    row = {"question": "Is the sky green?",
           "mc1_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]},
           "mc2_targets": {"choices": ["No.", "It is blue.", "Yes."], "labels": [1, 1, 0]}}
    path = write_jsonl(tmp_path / "t.jsonl", [row])
    (mc1,) = load_items(get_task("truthfulqa_mc1"), path)
    (mc2,) = load_items(get_task("truthfulqa_mc2"), path)
    assert mc1.context.startswith("Q: What is human life expectancy in the United States?\nA: Human life")
    assert mc1.context.endswith("Barcelona, Spain.\n\nQ: Is the sky green?\nA:")
    assert mc1.choices == ("No.", "Yes.") and mc1.gold == 0
    assert mc2.golds == (0, 1) and get_task("truthfulqa_mc2").kind == "mc2"


def test_custom_task_and_template(tmp_path: Path) -> None:
    rows = [{"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": 0},
            {"id": "q2", "question": "2+2?", "choices": ["3", "4"], "answer": 1, "topic": "math"}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    items = load_items(get_task("custom"), path)
    assert items[0].id == "0" and items[1].id == "q2"
    assert items[0].context == "Question: Capital of France?\nAnswer:"
    (_, second) = load_items(get_task("custom", "[{topic}] Q: {question}\nA:"), write_jsonl(tmp_path / "t.jsonl", [dict(rows[1], id="a"), rows[1]]))
    assert second.context == "[math] Q: 2+2?\nA:"
    (only,) = load_items(get_task("custom", "Q: {question}\nA:"), path, limit=1)
    assert only.context == "Q: Capital of France?\nA:"
    with pytest.raises(QuantcalError, match="names field 'topic'"):
        load_items(get_task("custom", "[{topic}] {question}"), path)


def test_local_formats_agree(tmp_path: Path) -> None:
    import pandas as pd

    rows = [{"goal": "g1", "sol1": "a", "sol2": "b", "label": 0}, {"goal": "g2", "sol1": "c", "sol2": "d", "label": 1}]
    jsonl = load_items(get_task("piqa"), write_jsonl(tmp_path / "p.jsonl", rows))
    (tmp_path / "p.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "p.csv", index=False)
    for suffix in ("json", "parquet", "csv"):
        assert load_items(get_task("piqa"), tmp_path / f"p.{suffix}") == jsonl


def test_arithmetic_is_seeded_and_valid() -> None:
    rows = generate(300)
    assert rows == generate(300) and rows[:10] == generate(10)
    for r in rows:
        values = [int(c) for c in r["choices"]]
        assert len(set(values)) == 4 and min(values) >= 0
        a, op, b = r["question"][len("What is "):-1].split()
        assert values[r["answer"]] == eval(f"{a}{op}{b}")  # noqa: S307 - our own generated digits
    golds = [r["answer"] for r in rows]
    assert len(set(golds)) == 4  # the answer position is shuffled


def test_hub_loading_uses_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load(path, name=None, split=None):  # noqa: ANN001, ANN202
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"goal": "g", "sol1": "a", "sol2": "b", "label": 1}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    (item,) = load_items(get_task("piqa"))
    assert calls == [("baber/piqa", None, "validation")] and item.gold == 1
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(QuantcalError, match="cannot load aps/super_glue \\(boolq\\).*quantcal download TASK --out DIR"):
        load_items(get_task("boolq"))
