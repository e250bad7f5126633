"""End to end in a real headless browser: load the page, change a policy, see a chart change.

Uses Debian's chromium and chromium-driver (installed by .ci/run) through Selenium."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    page = os.path.join(os.path.dirname(__file__), "..", "..", "app", "streamlit_app.py")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", page, "--server.headless",
                             "true", "--server.port", str(port), "--server.address", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1800"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=opts)
    yield drv
    drv.quit()


def _first_chart(drv):
    return WebDriverWait(drv, 120).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".vega-embed canvas, "
                                                                                          ".vega-embed svg")))


def _settle(drv, seconds=60):
    """Wait until the app has finished running (Streamlit shows a status widget while it runs)."""
    end = time.time() + seconds
    time.sleep(1.0)
    while time.time() < end:
        if not drv.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'):
            time.sleep(1.0)
            return
        time.sleep(0.3)


def test_changing_a_policy_changes_the_chart(server, browser):
    browser.get(server + "/?policies=h2o&p.h2o.budget=4096&seq=16384&log=False")
    chart = _first_chart(browser)
    _settle(browser)
    before = _first_chart(browser).screenshot_as_png
    expander = WebDriverWait(browser, 60).until(EC.element_to_be_clickable(
        (By.XPATH, "//summary[.//*[contains(text(), 'h2o:')]] | //summary[contains(., 'h2o:')]")))
    expander.click()
    field = WebDriverWait(browser, 30).until(EC.visibility_of_element_located(
        (By.CSS_SELECTOR, 'input[aria-label="budget (tokens)"]')))
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("256", Keys.ENTER)
    _settle(browser)
    after = _first_chart(browser).screenshot_as_png
    assert chart is not None and before != after
    assert "p.h2o.budget=256" in browser.current_url
