"""The dashboard's first paint with a big history: a real daemon on a synthetic history of --jobs jobs (built as
bench/history_sql.py builds it), the page opened in headless chromium through the one-time token link.

    python bench/dashboard_first_paint.py                 # 10,000 jobs, 3 runs
    python bench/dashboard_first_paint.py --jobs 100000

Reports, per run (a fresh browser each time, median printed): first contentful paint (the page shell), and the
time until the first view (the fleet, with the checkpoint banner's status) has its data drawn; and the campaign
view's chart, which draws every ended run. Target: first paint < 1 s at 10,000 jobs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.history_sql import build  # noqa: E402
from mcp_server.core.paths import StatePaths  # noqa: E402
from mcp_server.daemon.client import DaemonClient  # noqa: E402
from mcp_server.surfaces.dashboard import dashboard_url  # noqa: E402


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1300,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def wait_ready(driver, view: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while driver.execute_script("return document.body.dataset.ready") != view:
        if time.monotonic() > deadline:
            raise SystemExit(f"view {view} not ready after {timeout} s")
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="arc-dash-bench-"))
    paths = StatePaths.resolve(root / "state").ensure()
    build(paths.history, args.jobs, args.jobs * 20)
    hosts = root / "hosts.yaml"
    hosts.write_text("hosts:\n  - name: local\n    transport: local\n    workdir: " + str(root / "work") + "\n")
    arc = [sys.executable, "-m", "mcp_server", "--state-dir", str(paths.root), "--hosts", str(hosts)]
    subprocess.run([*arc, "daemon", "start"], check=True, capture_output=True)
    client = DaemonClient(paths)
    url = dashboard_url(client.info()["port"], client.token())
    results = {"fcp_s": [], "fleet_drawn_s": [], "campaign_drawn_s": []}
    try:
        for _ in range(args.runs):
            driver = browser()
            try:
                start = time.monotonic()
                driver.get(url)
                wait_ready(driver, "fleet")
                results["fleet_drawn_s"].append(time.monotonic() - start)
                fcp = driver.execute_script(
                    "const p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : null")
                results["fcp_s"].append(None if fcp is None else fcp / 1000)
                start = time.monotonic()
                driver.execute_script("document.body.dataset.ready = ''; location.hash = 'campaign'")
                wait_ready(driver, "campaign")
                results["campaign_drawn_s"].append(time.monotonic() - start)
                points = driver.execute_script("return arcChartPointCount(window.arcChart)")
            finally:
                driver.quit()
    finally:
        client.stop()
        shutil.rmtree(root, ignore_errors=True)
    out = {"jobs": args.jobs, "chart_points": points,
           **{k: round(statistics.median(v), 3) for k, v in results.items() if None not in v}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
