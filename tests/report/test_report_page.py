"""The report's index.html in a real headless browser (Debian's chromium, driven by Selenium).

Skips, saying why, where chromium, chromedriver or selenium is missing. To check another
page and keep a screenshot of it (scripts/report_demo.sh does, for the README):
REPORT_PAGE=path/to/index.html REPORT_SCREENSHOT=docs/img/report_page.png pytest tests/report/test_report_page.py
"""

import csv
import os
import re
import shutil
from pathlib import Path

import pytest

from report_outputs import runs  # noqa: F401 - the fixture of synthetic lm-eval output folders

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="pip install selenium (the test extra) for the browser test")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="no headless browser: apt-get install chromium chromium-driver"),
]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1500,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _key(text):
    text = text.replace("≈", "").replace("<", "").strip()
    match = re.match(r"^[-+]?\d*\.?\d+(e[-+]?\d+)?", text, re.I)
    return float(match.group(0)) if match else text.lower()


def column(driver, index):
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
    return [row.find_elements(By.TAG_NAME, "td")[index].get_attribute("data-sort")
            or row.find_elements(By.TAG_NAME, "td")[index].text.strip() for row in rows]


def check_page(driver, page: Path, expected_rows: int, screenshot: Path | None = None):
    from selenium.webdriver.common.by import By

    driver.get(page.resolve().as_uri())
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
    assert len(rows) == expected_rows
    headers = driver.find_elements(By.CSS_SELECTOR, "#leaderboard thead th")
    names = [h.text.strip() for h in headers]
    numeric = next(i for i, name in enumerate(names) if "@" in name)
    for index in (numeric, names.index("method")):
        headers[index].click()
        ascending = column(driver, index)
        filled = [_key(v) for v in ascending if v != ""]
        assert filled == sorted(filled), (names[index], ascending)
        assert ascending[len(filled):] == [""] * (len(ascending) - len(filled))  # empty cells last
        headers[index].click()
        descending = [_key(v) for v in column(driver, index) if v != ""]
        assert descending == sorted(filled, reverse=True)
        assert "sorted-desc" in headers[index].get_attribute("class")
    # each row's settings open on click
    details = rows[0].find_element(By.TAG_NAME, "summary")
    details.click()
    assert "lm-eval version" in rows[0].text or "method" in rows[0].text
    assert driver.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png;base64,']")
    assert driver.get_log("browser") == []
    if screenshot is not None:
        driver.refresh()  # the page as it opens, for the picture
        driver.save_screenshot(str(screenshot))


def test_page_loads_lists_every_row_and_sorts(browser, runs, tmp_path):  # noqa: F811
    from lmeval_ctx.report.write import write_report

    written = write_report(list(runs), tmp_path / "report", log=lambda message: None)
    check_page(browser, tmp_path / "report" / "index.html", len(written["runs"]), tmp_path / "page.png")
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not os.environ.get("REPORT_PAGE"), reason="set REPORT_PAGE=<index.html> to check another page")
def test_given_page(browser):
    page = Path(os.environ["REPORT_PAGE"])
    with open(page.parent / "leaderboard.csv", newline="") as handle:
        rows = sum(1 for _ in csv.reader(handle)) - 1  # every row of the report's own CSV
    screenshot = os.environ.get("REPORT_SCREENSHOT")
    check_page(browser, page, rows, Path(screenshot) if screenshot else None)
