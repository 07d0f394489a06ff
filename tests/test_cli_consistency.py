"""The CLI's consistency fixes: --version, the store as an argument everywhere, metrics --list, compare inferring
what the store leaves open, run --device/--dtype, short task lists, and plan-time checks that --dry-run catches."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

import quantcal
from quantcal.cli import app
from tests.conftest import write_jsonl

runner = CliRunner()


def _study(tmp_path: Path, tiny_llama: Path, tasks: str, extra: str = "") -> Path:
    study = tmp_path / "study.yaml"
    study.write_text(f"reference: {tiny_llama}\nvariants: [{{name: w4, recipe: 'rtn:bits=4,group_size=16'}}]\n"
                     f"tasks: {tasks}\noutput: {tmp_path / 'out'}\nbootstrap: {{resamples: 20}}\n{extra}")
    return study


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"quantcal {version('quantcal')}"


def test_metrics_list() -> None:
    result = runner.invoke(app, ["metrics", "--list"])
    assert result.exit_code == 0
    for name in quantcal.METRICS:
        assert name in result.output


def test_store_argument_everywhere_and_compare_infers(tmp_path: Path, tiny_llama: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": f"{i}+{i}?", "choices": [str(2 * i), str(i)], "answer": 0}
                                              for i in range(12)])
    study = _study(tmp_path, tiny_llama, f"[{{name: custom, data_file: {data}}}]")
    assert runner.invoke(app, ["run", str(study)]).exit_code == 0
    store = tmp_path / "out" / "study.sqlite"
    as_argument = runner.invoke(app, ["export", str(store), "--out", str(tmp_path / "a.jsonl")])
    as_option = runner.invoke(app, ["export", "--store", str(store), "--out", str(tmp_path / "b.jsonl")])
    assert as_argument.exit_code == as_option.exit_code == 0
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    both = runner.invoke(app, ["export", str(store), "--store", str(tmp_path / "other.sqlite")])
    assert both.exit_code == 2 and "name the store once" in both.output
    inferred = runner.invoke(app, ["compare", str(store), "--resamples", "20"])
    assert inferred.exit_code == 0, inferred.output
    assert "w4 − reference on custom" in inferred.output
    explicit = quantcal.compare(store, "reference", "w4", "custom", resamples=20)
    assert quantcal.compare(store, resamples=20).differences["acc"] == explicit.differences["acc"]
    unknown = runner.invoke(app, ["compare", str(store), "--ref", "w4", "--variant", "nope"])
    assert unknown.exit_code == 2 and "no run for variant 'nope'" in unknown.output


def test_run_device_and_dtype_override_the_study(tmp_path: Path, tiny_llama: Path) -> None:
    study = _study(tmp_path, tiny_llama, "[arithmetic]")
    plan = quantcal.plan_study(study, dtype="float32", device="cpu")
    assert plan.spec.dtype == "float32" and plan.spec.device == "cpu"
    assert [t.name for t in plan.spec.tasks] == ["arithmetic"]  # a bare task name is a task
    bad = runner.invoke(app, ["run", str(study), "--dtype", "float8", "--dry-run"])
    assert bad.exit_code == 2 and "unknown dtype 'float8'" in bad.output


def test_dry_run_catches_unported_recipes_and_unreachable_tasks(tmp_path: Path, tiny_llama: Path) -> None:
    study = tmp_path / "s.yaml"
    study.write_text(f"reference: {tiny_llama}\nvariants: [{{name: q2, recipe: 'gguf:q2_k'}}]\ntasks: [arithmetic]\n")
    result = runner.invoke(app, ["run", str(study), "--dry-run"])
    assert result.exit_code == 2 and "q2_k" in result.output and "not allowed" in result.output
    offline = _study(tmp_path, tiny_llama, "[piqa]")  # the suite runs with HF_DATASETS_OFFLINE=1
    result = runner.invoke(app, ["run", str(offline), "--dry-run"])
    assert result.exit_code == 2 and "task piqa: cannot load baber/piqa" in result.output
    assert "quantcal download TASK --out DIR" in result.output and "--data-dir DIR" in result.output


def test_run_terminal_shows_phases_job_lines_and_total_time(tmp_path: Path, tiny_llama: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": f"{i}+{i}?", "choices": [str(2 * i), str(i)], "answer": 0}
                                              for i in range(6)])
    result = runner.invoke(app, ["run", str(_study(tmp_path, tiny_llama, f"[{{name: custom, data_file: {data}}}]"))])
    assert result.exit_code == 0, result.output
    text = result.output
    for job in ("reference · custom", "w4 · custom"):
        ready = text.index("ready in", text.index(f"] {job}"))
        assert text.index(f"{job}: 0/6 items to do") > ready  # no item progress while loading or building
        assert f"{job}: 6 items scored in" in text and "items/s" in text
    assert "building rtn:" in text and text.rstrip().endswith("s") and "2 job(s) in" in text
    again = runner.invoke(app, ["run", str(_study(tmp_path, tiny_llama, f"[{{name: custom, data_file: {data}}}]"))])
    assert "all 6 items already in the store" in again.output and "loading" not in again.output
