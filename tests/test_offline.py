"""Offline fails fast and clean: with no hub (offline mode asked for, or its host out of reach), a built-in hub
task stops in seconds with one line naming the dataset and the way out, instead of minutes of retries."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from quantcal.tasks.hub_access import PROXIES, hub_unreachable

runner = CliRunner()


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's host out of reach, and no offline switch or proxy in the environment."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", *PROXIES):
        monkeypatch.delenv(name, raising=False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_reason_the_hub_is_out_of_reach(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    assert "Network is unreachable" in hub_unreachable()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_unreachable() == "HF_HUB_OFFLINE is set"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert hub_unreachable() is None  # behind a proxy a direct connection proves nothing


def test_a_hub_task_offline_is_one_line_in_seconds(no_network: None, tmp_path: Path) -> None:
    start = time.perf_counter()
    result = runner.invoke(app, ["eval", "--task", "arc_easy", "--limit", "2", "--store", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "allenai/ai2_arc" in result.output and "out of reach" in result.output and "--data-file" in result.output
    assert time.perf_counter() - start < 60  # no retries: the model is not even loaded
