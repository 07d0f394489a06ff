"""Data a user can get (issue 34 item 1): `quantcal download` writes hub-schema copies in the layout --data-dir
reads, from a fake hub (never the network); offline it stops in seconds with one line; the example studies take
their data folder with --data-dir and say so when it is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture()
def fake_hub(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """``datasets.load_dataset`` answering for the four hub datasets with each file's first rows (what a reachable
    hub or a prepared datasets cache would return), and recording every call."""
    import datasets

    files = {"baber/piqa": "piqa/validation.jsonl", "aps/super_glue": "boolq/validation.jsonl",
             "allenai/openbookqa": "openbookqa/test.jsonl", "Rowan/hellaswag": "hellaswag/validation.jsonl"}
    calls: dict[str, list] = {"calls": []}

    def load_dataset(path: str, config: str | None = None, split: str | None = None, **_: object) -> datasets.Dataset:
        calls["calls"].append((path, config, split))
        if path not in files:
            raise FileNotFoundError(f"Couldn't find dataset {path} on the Hugging Face Hub")
        lines = (shared_data / files[path]).read_text().splitlines()[:12]
        return datasets.Dataset.from_list([json.loads(line) for line in lines])
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_download_writes_what_data_dir_and_the_example_studies_read(tmp_path: Path, fake_hub: dict, shared_data: Path) -> None:
    out = tmp_path / "data"
    result = runner.invoke(app, ["download", "piqa", "openbookqa", "hellaswag", "boolq", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jsonl")) == [
        "boolq/validation.jsonl", "hellaswag/validation.jsonl", "openbookqa/test.jsonl", "piqa/validation.jsonl"]
    original = [json.loads(line) for line in (shared_data / "openbookqa/test.jsonl").read_text().splitlines()[:12]]
    assert [json.loads(line) for line in (out / "openbookqa/test.jsonl").read_text().splitlines()] == original
    assert ("allenai/openbookqa", "main", "test") in fake_hub["calls"]
    assert "piqa [validation]: 12 rows ->" in result.output
    plan = runner.invoke(app, ["run", str(ROOT / "examples" / "study_b_gptq.yaml"), "--data-dir", str(out), "--dry-run",
                               "--json"])
    assert plan.exit_code == 0, plan.output
    assert len(json.loads(plan.stdout)["jobs"]) == 8  # four tasks, reference and GPTQ
    default = runner.invoke(app, ["run", "--data-dir", str(out), "--limit", "5", "--dry-run", "--json"])
    assert default.exit_code == 0 and {"piqa", "boolq"} <= {j["task"] for j in json.loads(default.stdout)["jobs"]}


def test_download_with_its_fewshot_split_and_refusals(tmp_path: Path, fake_hub: dict) -> None:
    result = runner.invoke(app, ["download", "piqa", "--fewshot", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0 and (tmp_path / "d" / "piqa" / "train.jsonl").is_file()
    for task, message in (("arithmetic", "no hub data to download"), ("lm-eval:arc_easy", "--lm-eval-include"),
                          ("nope", "unknown task")):
        bad = runner.invoke(app, ["download", task, "--out", str(tmp_path / "e")])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, bad.output
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").rglob("*.jsonl"))


def test_download_offline_is_one_line_in_seconds(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "empty-cache"),
           "HF_HOME": str(tmp_path / "hf-home")}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "quantcal.cli", "download", "piqa", "--out", str(tmp_path / "d")],
                            capture_output=True, text=True, env=env, timeout=120)
    seconds = time.perf_counter() - start
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "baber/piqa" in lines[0] and "out of reach" in lines[0], result.stderr
    assert seconds < 60, seconds  # seconds of imports, not minutes of retries
    assert not list((tmp_path / "d").rglob("*.jsonl"))


def test_an_example_study_without_its_data_folder_says_how_to_get_one() -> None:
    result = runner.invoke(app, ["run", str(ROOT / "examples" / "study_b_gptq.yaml"), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--data-dir" in result.output and "quantcal download" in result.output
    for study in (ROOT / "examples").glob("*.yaml"):
        assert "../shared" not in "\n".join(line for line in study.read_text().splitlines()
                                            if not line.lstrip().startswith("#")), study.name


def test_download_covers_free_text_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    rows = [json.loads(line) for line in (ROOT / "benchmarks" / "data" / "gsm8k_format.jsonl").read_text().splitlines()[:4]]
    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, config=None, split=None, **_: seen.append((path, config, split))
                        or datasets.Dataset.from_list(rows))
    result = runner.invoke(app, ["download", "gsm8k", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert seen == [("openai/gsm8k", "main", "test")]
    assert [json.loads(line) for line in (tmp_path / "d" / "gsm8k" / "test.jsonl").read_text().splitlines()] == rows
