"""The person's view in a real browser: headless Debian chromium driven by Selenium against a real daemon on the
netns fleet that has run real jobs. Each test saves a screenshot under its tmp dir."""
from __future__ import annotations

import http.client
import shutil
import sys

import pytest
import yaml
# selenium is in the test extra (pip install -e '.[test]'): missing, this file fails to import rather than skip.
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from mcp_server.surfaces.dashboard import dashboard_url
from tests.daemon_support import Arc, metric_job, wait_for

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

XSS = "<script>alert(1)</script>"
XSS_JOB = f"import json\nprint({XSS!r}, flush=True)\nprint('---')\nprint('val_bpb: 1.5')\n"
CHECKPOINT_EVERY = 3


@pytest.fixture(scope="module")
def campaign(netns_hosts, tmp_path_factory):
    """A daemon whose campaign ran three jobs (one printing a script tag), reached its checkpoint, and holds a
    fourth job queued until a person approves."""
    root = tmp_path_factory.mktemp("dashboard")
    rules = root / "research.yaml"
    rules.write_text(yaml.safe_dump({"checkpoint": {"every_experiments": CHECKPOINT_EVERY}}))
    arc = Arc(root / "state", netns_hosts.hosts_yaml)
    arc.cli("--research", str(rules), "daemon", "start")
    wait_for(arc.hosts_ready, 60, "every host to be connected")
    done = arc.submit([metric_job(1), metric_job(2),
                       {"command": [sys.executable, "-c", XSS_JOB], "time_limit_s": 120, "name": "xss"}])
    arc.wait(done)
    wait_for(lambda: arc.call("research_status")["paused"], 30, "the checkpoint to pause the campaign")
    held = arc.submit([metric_job(4)])
    yield {"arc": arc, "done": done, "xss": done[2], "held": held[0]}
    arc.stop()


def chromium(*flags: str):
    """A fresh headless Chromium (its own profile: no cookie of another session)."""
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromedriver are not on PATH: apt-get install -y chromium chromium-driver "
                    "(.ci/run does)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *flags):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = chromium("--window-size=1300,1000")
    yield driver
    driver.quit()


def url(arc: Arc, token: bool = True) -> str:
    info = arc.client.info()
    full = dashboard_url(info["port"], arc.client.token())
    return full if token else full.split("?")[0]


def open_view(driver, arc: Arc, view: str) -> None:
    if not driver.get_cookies():
        driver.get(url(arc))
        wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), 30, "the first view")
    driver.execute_script("document.body.dataset.ready = ''; location.hash = arguments[0];", view)
    ready = wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), 30, f"view {view}")
    assert ready == view.split("/")[0], driver.find_element(By.ID, "live").text


def ended_runs(arc: Arc) -> int:
    return len(arc.sql("SELECT job_id FROM jobs WHERE ended_at IS NOT NULL"))


def test_the_fleet_grid_shows_every_host_and_gpu(campaign, browser, netns_hosts, tmp_path):
    arc = campaign["arc"]
    open_view(browser, arc, "fleet")
    fleet = arc.call("list_gpus")
    shown_hosts = [e.get_attribute("data-host") for e in browser.find_elements(By.CSS_SELECTOR, ".host")]
    assert sorted(shown_hosts) == sorted(h["name"] for h in fleet["hosts"])
    shown_gpus = sorted(e.get_attribute("data-gpu") for e in browser.find_elements(By.CSS_SELECTOR, ".gpu"))
    assert shown_gpus == sorted(f"{h['name']}:{g['index']}" for h in fleet["hosts"] for g in h["gpus"])
    assert shown_gpus, "the test fleet simulates GPUs"
    browser.save_screenshot(str(tmp_path / "fleet.png"))


def test_the_chart_has_one_point_per_finished_run(campaign, browser, tmp_path):
    arc = campaign["arc"]
    open_view(browser, arc, "campaign")
    drawn = browser.execute_script("return arcChartPointCount(window.arcChart)")
    assert drawn == ended_runs(arc) == len(campaign["done"])
    browser.save_screenshot(str(tmp_path / "campaign.png"))


def test_job_output_is_shown_as_text_and_never_runs(campaign, browser, tmp_path):
    arc = campaign["arc"]
    open_view(browser, arc, f"job/{campaign['xss']}")
    log = browser.find_element(By.ID, "job-log").text
    assert XSS in log
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    injected = browser.execute_script(
        "return [...document.scripts].filter(s => s.textContent.includes('alert(1)')).length")
    assert injected == 0
    browser.save_screenshot(str(tmp_path / "job.png"))


def raw(arc: Arc, method: str, path: str, headers: dict | None = None, body: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", arc.client.info()["port"], timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read().decode(errors="replace")


def test_without_the_token_there_is_no_page_and_no_data(campaign, tmp_path):
    arc = campaign["arc"]
    for path in ("/dashboard/", "/dashboard/api/campaign", "/dashboard/api/jobs", "/dashboard/events",
                 "/dashboard/?token=wrong"):
        status, body = raw(arc, "GET", path)
        assert status == 401, path
        assert "val_bpb" not in body and campaign["xss"] not in body
    status, _ = raw(arc, "POST", "/dashboard/approve", {"Content-Type": "application/x-www-form-urlencoded"},
                    "note=hi")
    assert status == 401
    # DNS rebinding: the right token through a foreign name is still refused.
    status, _ = raw(arc, "GET", f"/dashboard/?token={arc.client.token()}", {"Host": "evil.example:80"})
    assert status == 403
    status, _ = raw(arc, "GET", "/dashboard/api/campaign",
                    {"Authorization": f"Bearer {arc.client.token()}", "Origin": "http://evil.example"})
    assert status == 403
    # The /rpc door still wants its bearer token.
    assert raw(arc, "POST", "/rpc/list_jobs", {"Content-Type": "application/json"}, "{}")[0] == 401

    fresh = chromium()
    try:
        fresh.get(url(arc, token=False))
        assert "401" in fresh.find_element(By.TAG_NAME, "body").text
        assert not fresh.find_elements(By.ID, "fleet-grid")
        fresh.save_screenshot(str(tmp_path / "refused.png"))
    finally:
        fresh.quit()


def test_the_report_opens_offline_with_the_same_runs(campaign, tmp_path):
    arc = campaign["arc"]
    out = tmp_path / "campaign.html"
    arc.cli("report", "-o", str(out))
    text = out.read_text()
    assert "http://" not in text.split("<script>", 1)[0] and "src=" not in text, "nothing may load from elsewhere"
    assert XSS not in text, "job output is never written unescaped"
    assert "<table id='lineage'>" in text and "<table id='leaderboard'>" in text

    offline = chromium("--window-size=1300,1000")
    try:
        offline.execute_cdp_cmd("Network.enable", {})
        offline.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
        offline.get(out.as_uri())
        drawn = wait_for(lambda: offline.execute_script(
            "return window.arcChart ? arcChartPointCount(window.arcChart) : null"), 20, "the report's chart")
        assert drawn == ended_runs(arc)
        assert offline.find_element(By.ID, "leaderboard").text
        offline.save_screenshot(str(tmp_path / "report.png"))
    finally:
        offline.quit()


def test_approving_from_the_page_lifts_the_pause(campaign, browser, tmp_path):
    arc = campaign["arc"]
    open_view(browser, arc, "campaign")
    assert browser.find_element(By.ID, "checkpoint").is_displayed()
    assert arc.jobs([campaign["held"]])[campaign["held"]]["status"] == "queued"
    # A forged post with the session cookie but without the form's anti-forgery token approves nothing.
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
    status, _ = raw(arc, "POST", "/dashboard/approve", {"Content-Type": "application/x-www-form-urlencoded",
                                                         "Cookie": cookie}, "note=forged")
    assert status == 403
    assert arc.call("research_status")["paused"]

    note = "looks good; try a <b>larger</b> lr next"
    browser.find_element(By.ID, "approve-note").send_keys(note)
    browser.save_screenshot(str(tmp_path / "checkpoint.png"))
    browser.find_element(By.ID, "approve-button").click()
    arc.wait([campaign["held"]])
    assert arc.jobs([campaign["held"]])[campaign["held"]]["host"]
    rows = arc.sql("SELECT note, approved_by FROM approvals")
    assert rows == [[note, rows[0][1]]] and rows[0][1].endswith("(dashboard)")
    assert not browser.find_element(By.ID, "checkpoint").is_displayed() or \
        wait_for(lambda: not browser.find_element(By.ID, "checkpoint").is_displayed(), 20, "the banner to go")
