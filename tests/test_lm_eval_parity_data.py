"""End-to-end on the real benchmark files with the bundled SmolLM2 (slow: marks the full-size runs).

The CI-sized case checks that the scorer's log-likelihoods on real items equal the plain forward
(lm-eval's computation); the slow case runs lm-evaluation-harness itself on the same items.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantcal.engines.encoding import Encoder
from quantcal.sources.models import load_model, model_max_length, resolve_source
from quantcal.engines.hf_scorer import iter_flat, reference_loglik, score_items
from quantcal.tasks import get_task, load_items

FILES = {"piqa": "piqa/validation.jsonl", "boolq": "boolq/validation.jsonl",
         "openbookqa": "openbookqa/test.jsonl", "hellaswag": "hellaswag/validation.jsonl"}


@pytest.fixture(scope="module")
def smol():  # noqa: ANN201
    return load_model(resolve_source("smollm2-135m-instruct"))


@pytest.mark.parametrize("task", [t if t != "boolq" else pytest.param(t, marks=pytest.mark.heavy)
                                  for t in sorted(FILES)])
def test_real_items_match_plain_forward(task: str, shared_data: Path, smol) -> None:  # noqa: ANN001
    items = load_items(get_task(task), shared_data / FILES[task], limit=6)
    encoder = Encoder(smol.tokenizer, model_max_length(smol.model, smol.tokenizer))
    encoded = [encoder.encode_item(i, it, " ") for i, it in enumerate(items)]
    results = {s.item_index: s for s in iter_flat(score_items(smol.model, encoded, batch_size=8))}
    for e in encoded:
        (group,) = e.groups
        for j, cont in enumerate(group.continuations):
            assert results[e.item_index].logliks[j] == pytest.approx(reference_loglik(smol.model, group.context, cont)[0], abs=1e-3)


@pytest.mark.slow
def test_parity_with_lm_eval(tmp_path: Path, shared_data: Path) -> None:
    """Runs lm-eval itself (its own venv, named by $LM_EVAL_PYTHON) against quantcal on 50 items per task."""
    import os
    import subprocess
    import sys

    python = os.environ.get("LM_EVAL_PYTHON")
    if not python:
        pytest.skip("set LM_EVAL_PYTHON to the python of a virtual environment with lm-eval[hf] installed")
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "report.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "lm_eval_parity.py"), "--lm-eval-python", python,
                    "--data-dir", str(shared_data), "--limit", "50", "--work", str(tmp_path / "work"),
                    "--output", str(out)], check=True)
    report = json.loads(out.read_text())
    for task, entry in report["tasks"].items():
        for metric, theirs in entry["lm_eval"].items():
            assert abs(entry["quantcal"][metric] - theirs) <= 0.002, (task, metric)
        assert entry["loglik_abs_diff"]["share_within_1e-3"] >= 0.99, task
    # lm-eval's own samples files, imported: the same accuracies as lm-eval's results files
    from quantcal.store.lm_eval_import import import_samples, samples_files
    from quantcal.analysis.predictions import task_summary
    from quantcal.store.database import open_store

    with open_store(tmp_path / "imported.sqlite") as db:
        files = samples_files([tmp_path / "work" / "lm_eval"])
        assert len(files) == len(report["tasks"])
        for f in files:
            got = import_samples(db, f)
            ours = task_summary(db.scored_items(got.run_id))
            for metric, theirs in got.lm_eval_metrics.items():
                assert ours[metric] == pytest.approx(theirs, abs=1e-9), (f.name, metric)
