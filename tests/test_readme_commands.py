"""The README's command blocks run as written (slow: about 15 minutes on 2 cores), except those that need the hub,
a GPU, a separate lm-eval environment, or are the set-up and test commands themselves. They run in order in a
scratch folder beside a link to ../shared/data, as a user beside this checkout would run them; the files they
name (study.yaml, my_questions.jsonl) are written first."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parent.parent
SKIP = ("scripts/setup.sh", "pytest", "with hub access", "hub is reachable", "(hub)", "your own task YAMLs",
        "/opt/lm-eval", "lm_eval_parity", "setup_vllm.sh", ".venv-vllm", "pip install")
#: What a command needs that a fresh clone without the development data beside it lacks.
NEEDS_DATA = ("../shared", "--data-dir", "--task piqa=", "--holdout", "task:hellaswag", "s.sqlite",
              "runs/qlora")


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip() and not any(s in command for s in SKIP):
                commands.append(command.strip())
    return commands


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    if not (SHARED_DATA / "piqa" / "validation.jsonl").is_file():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    (work / "data").symlink_to(SHARED_DATA)  # what the README's `quantcal download ... --out data` writes
    (work / "my_questions.jsonl").write_text("".join(json.dumps(
        {"question": f"What is {i} + {i}?", "choices": [str(2 * i), str(2 * i + 1), str(i)], "answer": 0}) + "\n"
        for i in range(20)))
    (work / "study.yaml").write_text("reference: smollm2-135m-instruct\nvariants:\n  - name: rtn4\n"
                                     "    recipe: rtn:bits=4,group_size=64\ntasks: [arithmetic]\n")
    commands = readme_commands()
    assert len(commands) >= 14
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    for command in commands:
        line = re.sub(r"^quantcal ", f"{sys.executable} -m quantcal.cli ", command)
        done = subprocess.run(line, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.slow
def test_readme_commands_that_need_no_data_run_in_a_fresh_clone(tmp_path: Path) -> None:
    """Issue 34: from a fresh clone with nothing beside it (no ../shared), every README command that needs neither
    the hub nor a data folder runs as written (the bundled models are installed packages, not files of the tree)."""
    clone = tmp_path / "quantcal"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    assert not (tmp_path / "shared").exists()
    (clone / "my_questions.jsonl").write_text("".join(json.dumps(
        {"question": f"What is {i} + {i}?", "choices": [str(2 * i), str(2 * i + 1), str(i)], "answer": 0}) + "\n"
        for i in range(20)))
    (clone / "study.yaml").write_text("reference: smollm2-135m-instruct\nvariants:\n  - name: rtn4\n"
                                      "    recipe: rtn:bits=4,group_size=64\ntasks: [arithmetic]\n")
    commands = [c for c in readme_commands() if not any(d in c for d in NEEDS_DATA)]
    assert len(commands) >= 8 and any(c.startswith("quantcal run") for c in commands)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(clone / "src")}
    for command in commands:
        line = re.sub(r"^quantcal ", f"{sys.executable} -m quantcal.cli ", command)
        done = subprocess.run(line, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
