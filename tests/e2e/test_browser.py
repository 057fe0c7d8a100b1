"""The dashboard in a real browser: `streamlit run dashboard/app.py` + headless Chromium.

Uploads a synthetic scan on the Grade page and waits for its grade, then opens Compare and
waits for the plotly confusion matrices. Screenshots land in ``tests/e2e/artifacts/``.
The server listens on 127.0.0.1 only; the browser is Debian's ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_dashboard import exported_runs_root

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-quic", "--no-first-run", "--disable-sync"]
STARTUP_S = 60
WAIT_MS = 60_000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run_factory, tmp_path_factory, synth_dir):
    """A dashboard server on a free loopback port, with two exported tiny runs."""
    runs = exported_runs_root(run_factory, tmp_path_factory)
    port = free_port()
    env = dict(os.environ, RUNS_DIR=str(runs), DRGRADE_DATA=str(synth_dir), PYTHONUNBUFFERED="1")
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
           "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + STARTUP_S
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.read().strip() == b"ok":
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"streamlit did not start (exit {proc.poll()}):\n{log.read_text()}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_grade_then_compare_in_browser(server, browser, synth_dir):
    ARTIFACTS.mkdir(exist_ok=True)
    scan = sorted((synth_dir / "images").glob("*.png"))[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(server, wait_until="domcontentloaded")
    page.get_by_role("heading", name="Grade scans").wait_for(timeout=WAIT_MS)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(scan))
    verdict = page.get_by_text(re.compile(r"· Grade \d: "))
    verdict.first.wait_for(timeout=WAIT_MS)
    assert re.search(r"Grade \d: (No DR|Mild|Moderate|Severe|Proliferative DR)", verdict.first.inner_text())
    page.get_by_text("Graded 1 of 1 file(s).").wait_for(timeout=WAIT_MS)
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=WAIT_MS)  # probability bars
    page.locator('[data-testid="stImage"] img').nth(1).wait_for(timeout=WAIT_MS)  # thumbnail + heat-map
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "grade.png"), full_page=True)

    page.get_by_role("link", name="Compare").click()
    page.get_by_role("heading", name="Compare variants").wait_for(timeout=WAIT_MS)
    page.locator(".js-plotly-plot .heatmaplayer image").first.wait_for(state="attached", timeout=WAIT_MS)
    assert page.locator(".js-plotly-plot .heatmaplayer image").count() >= 2  # two variants side by side
    title = page.get_by_text("Confusion matrices (counts, one colour scale)")
    title.wait_for(timeout=WAIT_MS)
    # Streamlit scrolls inside its main block, so bring the matrices into the viewport.
    page.get_by_role("heading", name="Confusion matrices").scroll_into_view_if_needed()
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
    assert not errors, errors
