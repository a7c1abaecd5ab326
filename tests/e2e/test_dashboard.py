"""The dashboard in a real browser (Debian's Chromium through chromedriver and Selenium) against a
real server: sign in with the operator's keys, see a function published with SnapStart, its
cold start vs restore plot drawn with data points, click through to a version's logs (live).
Screenshots go to the test artifacts (``$SNAPFAAS_TEST_ARTIFACTS`` or ``test-artifacts/``)."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import ACCESS_KEY, SECRET_KEY, ServerHandle, create
from tests.e2e.snapstart_support import SNAPSTART, publish

APP = """
import time

def handler(event, context):
    print("dashboard sees", event.get("n"))
    return {"n": event.get("n")}
"""
NAME = "plotted"
WAIT_S = 30


def artifacts_dir() -> Path:
    path = Path(os.environ.get("SNAPFAAS_TEST_ARTIFACTS", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("Debian's chromium and chromium-driver are needed (scripts/install-system-deps.sh installs them)")
    options = Options()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--no-proxy-server"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="module")
def published(lam) -> str:  # type: ignore[no-untyped-def]
    create(lam, NAME, {"app.py": APP}, Runtime="python3.11", SnapStart=SNAPSTART, Timeout=15)
    lam.invoke(FunctionName=NAME, Payload=b'{"n": 0}')["Payload"].read()  # $LATEST: cold start
    response, _ = publish(lam, NAME)
    version = response["Version"]
    for n in range(1, 4):  # a restore, then warm invokes
        lam.invoke(FunctionName=NAME, Qualifier=version, Payload=f'{{"n": {n}}}'.encode())["Payload"].read()
    return version


def wait(browser: webdriver.Chrome):  # type: ignore[no-untyped-def]
    return WebDriverWait(browser, WAIT_S)


def test_pages_need_a_session(server: ServerHandle) -> None:
    for path in ("/dashboard", f"/dashboard/functions/{NAME}", f"/dashboard/functions/{NAME}/logs"):
        request = urllib.request.Request(server.endpoint + path)
        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirected:
            opener.open(request, timeout=10)
        assert redirected.value.code == 303 and redirected.value.headers["Location"] == "/dashboard/login"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.endpoint + f"/dashboard/functions/{NAME}/logs/stream?follow=1", timeout=10)
    assert refused.value.code == 403


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def test_wrong_keys_do_not_sign_in(server: ServerHandle, browser: webdriver.Chrome) -> None:
    browser.get(server.endpoint + "/dashboard/login")
    browser.find_element(By.ID, "access_key_id").send_keys(ACCESS_KEY)
    browser.find_element(By.ID, "secret_access_key").send_keys("not-the-secret")
    browser.find_element(By.ID, "sign-in").click()
    assert "do not sign in" in wait(browser).until(ec.presence_of_element_located((By.ID, "login-error"))).text
    browser.get(server.endpoint + "/dashboard")
    assert browser.current_url.endswith("/dashboard/login")


def test_sign_in_see_snapstart_plot_and_follow_a_versions_logs(server: ServerHandle, browser: webdriver.Chrome,
                                                              published: str, lam) -> None:  # type: ignore[no-untyped-def]
    shots = artifacts_dir()
    browser.get(server.endpoint + "/dashboard/login")
    browser.find_element(By.ID, "access_key_id").send_keys(ACCESS_KEY)
    browser.find_element(By.ID, "secret_access_key").send_keys(SECRET_KEY)
    browser.find_element(By.ID, "sign-in").click()
    table = wait(browser).until(ec.presence_of_element_located((By.ID, "functions")))
    assert NAME in table.text and f"{published} · Active · SnapStart On" in table.text
    browser.save_screenshot(str(shots / "dashboard-functions.png"))

    browser.find_element(By.LINK_TEXT, NAME).click()
    canvas = wait(browser).until(ec.presence_of_element_located((By.ID, f"chart-{published}")))
    wait(browser).until(lambda b: canvas.get_attribute("data-rendered") == "yes")
    assert int(canvas.get_attribute("data-points")) == 3  # the restore and two warm invokes of that version
    counts = browser.execute_script(
        "const c = Chart.getChart(arguments[0]); return c.data.datasets.map(d => [d.label, d.data.length]);", canvas)
    assert dict(counts) == {"cold start (on-demand init)": 0, "SnapStart restore": 1, "warm": 2}
    latest = browser.find_element(By.ID, "chart-$LATEST")
    assert browser.execute_script("return Chart.getChart(arguments[0]).data.datasets[0].data.length", latest) == 1  # its cold start
    recent = browser.find_element(By.ID, "recent").text.replace("\n", " ")
    assert "restore" in recent and "Restore Duration" in recent
    browser.save_screenshot(str(shots / "dashboard-function.png"))

    browser.find_element(By.CSS_SELECTOR, f"a.version-link[href$='/versions/{published}']").click()
    wait(browser).until(ec.presence_of_element_located((By.ID, "version-state")))
    browser.save_screenshot(str(shots / "dashboard-version.png"))
    shared = browser.find_element(By.ID, "shared-chunks")
    assert "chunks" in shared.text
    assert "Active" in browser.find_element(By.ID, "version-state").text
    browser.find_element(By.ID, "version-logs").click()
    log = wait(browser).until(ec.presence_of_element_located((By.ID, "log")))
    wait(browser).until(lambda b: log.get_attribute("data-following") == "yes")
    wait(browser).until(lambda b: "dashboard sees 3" in log.text)
    assert "dashboard sees 0" not in log.text  # $LATEST's line: not this version's
    lam.invoke(FunctionName=NAME, Qualifier=published, Payload=b'{"n": 42}')["Payload"].read()
    wait(browser).until(lambda b: "dashboard sees 42" in log.text)  # written after the page opened: live
    browser.save_screenshot(str(shots / "dashboard-logs.png"))

    browser.find_element(By.ID, "logout").click()
    wait(browser).until(ec.presence_of_element_located((By.ID, "login-form")))
    browser.get(server.endpoint + "/dashboard")
    assert browser.current_url.endswith("/dashboard/login")
