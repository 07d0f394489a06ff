"""The report opens in headless Chromium with no console errors; dataset markup shows as text, not as elements."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from tests.test_study import SCRIPT, _study

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _chrome(tmp_path: Path, size: str = "1280,2400") -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}", f"--window-size={size}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.mark.heavy
@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_a_multi_task_report_opens_on_its_grid_and_contents(tmp_path: Path, tiny_llama: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 34 item 6: with several tasks the first screen at 1400x900 holds the table of contents and the
    variant x task grid; every contents link leads to a heading on the page; no console errors."""
    from selenium.webdriver.common.by import By

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    study = _study(tmp_path, tiny_llama)
    study.write_text(study.read_text().replace("tasks:\n", "tasks:\n  - name: arithmetic\n    limit: 30\n"))
    result = CliRunner().invoke(app, ["run", str(study)])
    assert result.exit_code == 0, result.output
    page = tmp_path / "report_dir" / "report.html"
    driver = _chrome(tmp_path, "1400,900")
    try:
        driver.get(page.as_uri())
        toc, grid = driver.find_element(By.ID, "toc"), driver.find_element(By.CSS_SELECTOR, "table.grid")
        assert toc.rect["y"] < 900 and grid.rect["y"] + grid.rect["height"] < 900  # both on the first screen
        assert [th.text for th in grid.find_elements(By.TAG_NAME, "th")] == ["variant", "arithmetic", "custom"]
        assert "Δacc" in grid.text and "ΔECE" in grid.text
        for link in toc.find_elements(By.TAG_NAME, "a"):
            target = link.get_attribute("href").split("#", 1)[1]
            assert driver.find_elements(By.ID, target), target
        caveats = driver.find_elements(By.ID, "caveats")
        assert len(caveats) == 1  # one box, however many caveats
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
    finally:
        driver.quit()


@pytest.mark.heavy
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
        scripts = driver.find_elements(By.TAG_NAME, "script")  # only the report's own: the dataset's <script> is text
        assert sorted(e.get_attribute("id") for e in scripts) == ["explorer-script", "items-data"]
        assert SCRIPT in driver.find_element(By.TAG_NAME, "body").text
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0  # no network

        # the item explorer: 30 rows, sortable by p(gold), filterable by text and by flips
        from selenium.webdriver.support.ui import Select

        explorer = driver.find_element(By.CSS_SELECTOR, "table.explorer")
        rows = explorer.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert len(rows) == 30 and SCRIPT in rows[0].text
        header = next(th for th in explorer.find_elements(By.TAG_NAME, "th") if th.text == "p(gold) reference")
        column = explorer.find_elements(By.TAG_NAME, "th").index(header)

        def p_gold_column() -> list[float]:
            return [float(r.find_elements(By.TAG_NAME, "td")[column].text)
                    for r in explorer.find_elements(By.CSS_SELECTOR, "tbody tr")]
        header.click()
        assert p_gold_column() == sorted(p_gold_column())
        header.click()
        assert p_gold_column() == sorted(p_gold_column(), reverse=True)
        search = driver.find_element(By.CSS_SELECTOR, "input.explorer-search")
        search.send_keys("item 7 ")
        assert len(explorer.find_elements(By.CSS_SELECTOR, "tbody tr")) == 1
        search.clear()
        search.send_keys(" ")  # an input event with an empty-ish needle keeps rows whose text has a space
        Select(driver.find_element(By.CSS_SELECTOR, "select.explorer-show")).select_by_value("flips")
        flips = explorer.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert all(r.find_elements(By.TAG_NAME, "td")[-1].text == "1" for r in flips)
        images = driver.find_elements(By.TAG_NAME, "img")
        assert images and all(driver.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images)
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        driver.save_screenshot(str(tmp_path / "report_dir" / "screenshot.png"))
        assert (tmp_path / "report_dir" / "screenshot.png").stat().st_size > 10_000

        driver.set_window_size(1400, 900)  # the findings are on the first screen
        driver.get(page.as_uri())
        findings = driver.find_element(By.ID, "findings")
        assert findings.is_displayed() and findings.rect["y"] < 900 and "w2" in findings.text
        driver.save_screenshot(str(tmp_path / "report_dir" / "first-screen-1400.png"))
        driver.set_window_size(800, 900)  # narrow: a table wider than the page scrolls inside its own box
        driver.get(page.as_uri())
        overflowing = driver.execute_script(
            "return [...document.querySelectorAll('table')].filter(t => t.getBoundingClientRect().right >"
            " document.documentElement.clientWidth && !t.closest('.scroll')).length")
        assert overflowing == 0
        assert driver.execute_script("return document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1")
    finally:
        driver.quit()
