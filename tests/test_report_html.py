"""report.html opens in a real headless browser (Debian's chromium and chromedriver,
driven by selenium): no console error, every image decoded, the verdict lines and the
critical-difference diagram on the first screen (1400 x 900), a screenshot written.

Skipped with a reason where the browser or selenium is missing (CI installs them, see
.ci/run). The second test proves the checks can fail: a broken image and an external
image (refused by the page's Content-Security-Policy) are both caught.
"""

import re
import shutil

import pytest

from diffhpo.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs a headless browser: apt-get install chromium chromium-driver (Debian); .ci/run installs them",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A real smoke run: 3 methods x 5 seeds of quadratic (enough for the Friedman test and
    the critical-difference diagram)."""
    out = tmp_path_factory.mktemp("report")
    try:
        main(["run", "--task", "quadratic", "--method", "random,grid,default", "--profile", "smoke", "--seeds", "5",
              "--out", str(out), "--no-progress"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,2000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))
    yield driver
    driver.quit()


IMAGES = "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])"


def load(driver, path):
    driver.get(path.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    return driver.execute_script(IMAGES), [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_report_html_loads_without_errors_and_decodes_every_image(report, browser, tmp_path):
    page = report / "report.html"
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)  # nothing to fetch
    pngs = sorted(p.name for p in (report / "plots").glob("*.png"))
    assert "smoke_critical_difference.png" in pngs and "quadratic_smoke_regret.png" in pngs
    images, errors = load(browser, page)
    assert sorted(alt for alt, _ in images) == pngs  # every plot embedded, once
    assert all(ok for _, ok in images), [alt for alt, ok in images if not ok]
    assert errors == []
    for needle in ["Friedman", "Mean rank", "Regret", "Pairs of methods", "git_commit", "optuna", "diffhpo run"]:
        assert needle in text, needle
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


FIRST_SCREEN = """
const box = e => e.getBoundingClientRect();
const verdict = Array.from(document.querySelectorAll('ul.verdict li')).map(li => [li.textContent, box(li).bottom]);
const cd = Array.from(document.images).filter(i => i.alt.endsWith('critical_difference.png')).map(i => box(i).bottom);
return [verdict, cd, window.innerWidth, window.innerHeight, window.scrollY];
"""


def test_the_first_screen_holds_the_verdict_and_the_critical_difference_diagram(report, browser, tmp_path):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    try:
        load(browser, report / "report.html")
        verdict, cd, width, height, scroll = browser.execute_script(FIRST_SCREEN)
        assert (width, height, scroll) == (1400, 900, 0)
        texts = [t for t, _ in verdict]
        assert len(texts) == 1 and texts[0].startswith("quadratic (smoke, 5 seeds): best "), texts  # one task: one line
        assert all(bottom <= height for _, bottom in verdict), verdict
        assert len(cd) == 1 and cd[0] <= height, cd
        shot = tmp_path / "first_screen.png"
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_browser_checks_catch_a_broken_and_an_external_image(report, browser, tmp_path):
    text = (report / "report.html").read_text()
    broken = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,AAAA", text, count=1)
    broken = broken.replace("</body>", '<img alt="external" src="https://example.invalid/x.png"></body>')
    page = tmp_path / "broken.html"
    page.write_text(broken)
    images, errors = load(browser, page)
    assert [alt for alt, ok in images if not ok][0] != "external" and ["external", False] in images
    assert len([1 for _, ok in images if not ok]) == 2
    assert any("Content Security Policy" in e["message"] or "example.invalid" in e["message"] for e in errors), errors
