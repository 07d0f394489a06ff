"""Task code needs consent: an lm-eval task of an include folder whose YAML names Python hooks (``!function``) is
refused in one line unless the user passes ``--trust-task-code`` (a study's ``trust_task_code: true``), and a dry run
never runs it. Each test checks the marker file the hook module writes when imported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from quantcal.tasks.lm_eval_tasks import task_code

pytest.importorskip("lm_eval")
runner = CliRunner()


@pytest.fixture(scope="module")
def include_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One include folder for the module (lm-eval indexes a folder once per process)."""
    tmp_path = tmp_path_factory.mktemp("task-code")
    folder = tmp_path / "inc"
    folder.mkdir()
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} plus {i}?", "choices": [str(2 * i), "x"], "answer": 0}) + "\n"
                            for i in range(4)))
    (folder / "hooks.py").write_text(f"import pathlib\npathlib.Path({str(tmp_path / 'MARKER')!r}).write_text('ran')\n"
                                     "def text(doc):\n    return doc['question']\n")
    (folder / "coded.yaml").write_text(f"""task: coded_task
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: !function hooks.text
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
""")
    (folder / "plain.yaml").write_text((folder / "coded.yaml").read_text().replace("coded_task", "plain_task")
                                       .replace("!function hooks.text", "'{{question}}'"))
    return folder


@pytest.fixture()
def include(include_folder: Path) -> Path:
    (include_folder.parent / "MARKER").unlink(missing_ok=True)
    return include_folder


def test_the_files_that_would_run_are_found_without_running_them(include: Path) -> None:
    assert task_code("coded_task", str(include)) == [include / "hooks.py"]
    assert task_code("plain_task", str(include)) == []
    assert task_code("arc_easy", str(include)) == []  # the registry's own task: the installed lm-eval's code
    assert not (include.parent / "MARKER").exists()


def test_eval_refuses_task_code_without_consent(include: Path, tiny_llama: Path, tmp_path: Path) -> None:
    args = ["eval", "--model", str(tiny_llama), "--task", "lm-eval:coded_task", "--lm-eval-include", str(include),
            "--store", str(tmp_path / "s.sqlite")]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    assert "hooks.py" in refused.output and "--trust-task-code" in refused.output
    assert not (include.parent / "MARKER").exists()
    trusted = runner.invoke(app, args + ["--trust-task-code"])
    assert trusted.exit_code == 0, trusted.output
    assert (include.parent / "MARKER").exists()


def test_a_task_without_code_needs_no_consent(include: Path, tiny_llama: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--model", str(tiny_llama), "--task", "lm-eval:plain_task",
                                 "--lm-eval-include", str(include), "--store", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("trust", [False, True])
def test_a_dry_run_never_runs_task_code(include: Path, tiny_llama: Path, tmp_path: Path, trust: bool) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(f"reference: {tiny_llama}\nvariants:\n  - name: w2\n    recipe: rtn:bits=2,group_size=16\n"
                     f"tasks:\n  - name: lm-eval:coded_task\n    include: {include}\noutput: out\n"
                     + ("trust_task_code: true\n" if trust else ""))
    result = runner.invoke(app, ["run", str(study), "--dry-run"])
    assert not (include.parent / "MARKER").exists()
    if trust:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and "hooks.py" in result.output and "trust_task_code" in result.output, result.output
