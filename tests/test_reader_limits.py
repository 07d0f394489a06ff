"""Readers inside their limits: input past a parser's limits (an integer of 5,000 digits, JSON or YAML nested
thousands deep, a study file of megabytes), a template that would build a gigabyte string, a device the machine
lacks and lm-eval's own failures each end in one line naming the file, the field or the task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from quantcal.errors import QuantcalError
from quantcal.study.spec import load_study, parse_study
from quantcal.tasks import get_task, load_items
from quantcal.tasks.custom import custom_task

runner = CliRunner()
ROW = {"question": "2 plus 2?", "choices": ["4", "5"], "answer": 0}


def _one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
@pytest.mark.parametrize("payload, expected", [
    ('{"question": "q", "choices": ["a"], "answer": ' + "7" * 5000 + "}", "digits"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_json_past_the_parsers_limits_is_one_line(tmp_path: Path, suffix: str, payload: str, expected: str) -> None:
    path = tmp_path / f"d.{suffix}"
    path.write_text(json.dumps(ROW) + "\n" + payload + "\n" if suffix == "jsonl" else payload)
    with pytest.raises(QuantcalError) as exc:
        load_items(get_task("custom"), path)
    _one_line(exc, str(path) + (":2" if suffix == "jsonl" else ""), expected)


@pytest.mark.parametrize("text, expected", [
    ("reference: m\nvariants:\n  " + "- " * 20_000 + "x\n", "levels deep"),  # block sequences in one line
    ("reference: " + "[" * 20_000 + "]" * 20_000 + "\n", "levels deep"),
    ("reference: m\n# " + "x" * (2 << 20) + "\n", "bytes"),
])
def test_a_study_file_past_its_limits_is_refused_before_parsing(tmp_path: Path, text: str, expected: str) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(text)
    with pytest.raises(QuantcalError) as exc:
        load_study(study)
    _one_line(exc, str(study), expected)
    result = runner.invoke(app, ["run", str(study), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("template", ["{question:>999999999}", "{question.__class__.__mro__}", "{question!r}",
                                      "{question:{answer}}"])
def test_a_template_is_a_plain_fill_in_of_the_rows_fields(template: str) -> None:
    with pytest.raises(QuantcalError) as exc:
        custom_task(template)
    _one_line(exc, "template")


def test_a_template_that_does_not_fit_a_row_names_it(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROW) + "\n")
    with pytest.raises(QuantcalError) as exc:
        load_items(custom_task("{question} {choices[7]}"), path)
    _one_line(exc, "does not fit")


@pytest.mark.parametrize("device, expected", [("cuda", "no CUDA GPU"), ("cuda:7", "no CUDA GPU"),
                                              ("tpu", "unknown device")])
def test_a_device_this_machine_lacks_is_one_line_in_every_command(tmp_path: Path, device: str, expected: str) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    study = tmp_path / "study.yaml"
    study.write_text("reference: smollm2-135m-instruct\nvariants:\n  - name: a\n    recipe: rtn:bits=4\n"
                     "tasks: [arithmetic]\n")
    for command in (["eval", "--task", "arithmetic", "--limit", "1", "--device", device,
                     "--store", str(tmp_path / "s.sqlite")],
                    ["run", str(study), "--dry-run", "--device", device],
                    ["sensitivity", "--recipe", "rtn:bits=4", "--task", "arithmetic", "--limit", "2", "--device", device,
                     "--out", str(tmp_path / "sens")],
                    ["finetune", "--data", "task:arithmetic", "--out", str(tmp_path / "ft"), "--device", device]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "Traceback" not in result.output and expected in result.output, \
            (command, result.output)


def test_lm_eval_groups_in_a_study_are_validated(tmp_path: Path) -> None:
    base = {"reference": "m", "variants": [{"name": "a", "recipe": "rtn"}], "tasks": [{"name": "arithmetic"}]}
    with pytest.raises(QuantcalError) as exc:
        parse_study(base | {"lm_eval_groups": [{"name": "lm-eval:g", "tasks": ["lm-eval:nope"]}]}, tmp_path)
    _one_line(exc, "lm-eval:nope")
    with pytest.raises(QuantcalError):
        parse_study(base | {"lm_eval_groups": [{"name": "g", "tasks": ["arithmetic"], "extra": 1}]}, tmp_path)


@pytest.mark.heavy
def test_an_lm_eval_task_that_cannot_load_names_the_task(tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    folder = tmp_path / "inc"
    folder.mkdir()
    (folder / "broken.yaml").write_text(f"""task: broken_task
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / "missing.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
""")
    task = get_task("lm-eval:broken_task", include=str(folder))
    with pytest.raises(QuantcalError) as exc:
        load_items(task, None, 2)
    _one_line(exc, "lm-eval:broken_task")
