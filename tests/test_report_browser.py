"""The report opens in headless Chromium with no console errors; dataset markup shows as text, not as elements."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from tests.test_study import SCRIPT, _study

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_report_renders_in_chromium(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["run", str(_study(tmp_path, tiny_llama))])
    assert result.exit_code == 0, result.output
    page = tmp_path / "report_dir" / "report.html"

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1280,2400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(page.as_uri())
        assert driver.title.startswith("quantcal")
        assert driver.find_elements(By.TAG_NAME, "script") == []  # the dataset's <script> became text
        assert SCRIPT in driver.find_element(By.TAG_NAME, "body").text
        images = driver.find_elements(By.TAG_NAME, "img")
        assert images and all(driver.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images)
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        driver.save_screenshot(str(tmp_path / "report_dir" / "screenshot.png"))
        assert (tmp_path / "report_dir" / "screenshot.png").stat().st_size > 10_000
    finally:
        driver.quit()
