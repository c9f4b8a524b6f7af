"""End to end in a real browser: ``audit app RUN`` serves a real Streamlit server, headless Chromium
(driven by playwright) opens the review queue, decides by key and by click, reloads, and finds the
decisions kept; the server is restarted and they are still there. A screenshot of each page is saved
outside the repository ($AUDIT_SCREENSHOTS, default /tmp/audit-screens).

Needs Debian's Chromium (``apt-get install chromium``; ``.ci/run`` installs it); skips without it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from audit.decisions import DecisionStore

CHROMIUM = next((p for p in (os.environ.get("AUDIT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                             shutil.which("chromium-browser")) if p and Path(p).exists()), None)
# Checked before any fixture runs (the session's audit run included), so a missing browser costs nothing.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium for the end-to-end browser test: "
                       "`apt-get install chromium` (Debian/Ubuntu; .ci/run does this), or set AUDIT_CHROMIUM"),
]
sync_playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright").sync_playwright
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
SCREENS = Path(os.environ.get("AUDIT_SCREENSHOTS", "/tmp/audit-screens"))
ARTIFACTS = ("manifest.json", "examples.parquet", "pairs.parquet", "dynamics.npz")
GRID = 24  # the review queue's default page size
NEIGHBOURS = 10

# Loaded: the script finished, no skeleton left, at least n pictures, each decoded. Streamlit's loading
# skeleton already carries data-testid="stApp", so waiting for that alone is not enough.
LOADED = """(n) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stSkeleton"]')) return false;
  const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
  return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""
OPEN_ID = "() => (document.querySelector('.audit-id') || {}).textContent || ''"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``audit app RUN --port P`` as a child process; ``stop()`` ends that process (and only it)."""

    def __init__(self, run: Path, log: Path):
        self.run, self.port = run, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "ab")
        env = dict(os.environ, AUDIT_REVIEWER="browser")
        env.pop("AUDIT_RUN_DIR", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "audit", "app", str(run), "--port", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"audit app exited with {self.proc.returncode}; see {log}")
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"audit app did not answer on {self.url} within 90 s; see {log}")
            time.sleep(0.2)  # polling a socket: there is no event to wait on

    def stop(self, crash: bool = False) -> None:
        """End the server: SIGTERM and wait, or with ``crash`` SIGKILL (what a power cut would do)."""
        if self.proc.poll() is None and crash:
            self.proc.kill()
            self.proc.wait(15)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def browser_run(digits_run, tmp_path):
    src, _ = digits_run
    run = tmp_path / "run"
    run.mkdir()
    for name in ARTIFACTS:
        shutil.copy2(src / name, run / name)
    return run


@pytest.fixture
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _open(browser, server, path: str):
    """A new page of the running app at ``path``, with a timeout for a busy 2-core machine."""
    page = browser.new_page(viewport={"width": 1440, "height": 1400})
    page.set_default_timeout(90_000)
    page.goto(server.url + path)
    return page


def _wait_loaded(page, images: int, timeout_ms: int = 90_000) -> None:
    page.wait_for_function(LOADED, arg=images, timeout=timeout_ms)


def _open_id(page) -> str:
    return page.evaluate(OPEN_ID).split(" · ")[0].strip()


def _shot(page, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)


def _metric(page, label: str) -> str:
    return page.locator('[data-testid="stMetric"]').filter(has_text=label).first.inner_text()


def test_review_in_a_real_browser_decisions_survive_reload_and_restart(browser_run, browser, tmp_path):
    run = browser_run
    ex = pd.read_parquet(run / "examples.parquet")
    flagged = ex[(ex.split == "train") & ex.is_label_issue].sort_values(["issue_score", "example_id"],
                                                                         ascending=[False, True])
    order = flagged["example_id"].tolist()
    suggested = int(flagged.set_index("example_id").at[order[1], "suggested_label"])
    page_pictures = GRID + 1 + NEIGHBOURS

    server = AppServer(run, tmp_path / "app.log")
    try:
        page = _open(browser, server, "/")
        page.get_by_text("Natural versus robust training").wait_for()
        _wait_loaded(page, 0)
        _shot(page, "overview")

        page.goto(server.url + "/review")
        _wait_loaded(page, page_pictures)
        assert _open_id(page) == order[0]
        assert len(page.query_selector_all('[data-testid="stImage"] img')) == page_pictures  # one page, no more

        # one key: K keeps the label, and the next example opens at once
        page.locator("body").press("k")
        page.wait_for_function(f"() => ({OPEN_ID})().startsWith({order[1]!r})")
        log = DecisionStore(run).log()
        assert log[["example_id", "decision", "reviewer"]].values.tolist() == [[order[0], "keep", "browser"]]

        # one click: accept the suggested label of the second
        _wait_loaded(page, page_pictures)
        page.locator(".st-key-decide_accept").get_by_role("button").click()  # role: visible buttons only
        page.wait_for_function(f"() => ({OPEN_ID})().startsWith({order[2]!r})")
        latest = DecisionStore(run).latest().set_index("example_id")
        assert latest.at[order[1], "decision"] == "relabel" and latest.at[order[1], "new_label"] == suggested
        _wait_loaded(page, page_pictures)
        _shot(page, "review")

        # reload: a new browser session finds both kept, counted, and out of the "to review" queue
        page.reload()
        _wait_loaded(page, page_pictures)
        assert _open_id(page) == order[2]
        page.get_by_text(f"2 of {len(order)}").first.wait_for()
        page.get_by_role("button", name=f"{order[0]} · kept").wait_for()
        page.get_by_role("button", name=f"{order[1]} · relabelled").wait_for()
    finally:
        server.stop(crash=True)

    # the server killed and started again: the decisions live in the run directory, not in the server
    server = AppServer(run, tmp_path / "app2.log")
    try:
        page = _open(browser, server, "/decisions")
        page.get_by_text("decisions in effect").wait_for()
        _wait_loaded(page, 0)
        assert _metric(page, "decisions in effect").split()[-1] == "2"
        assert _metric(page, "kept").split()[-1] == "1" and _metric(page, "relabelled").split()[-1] == "1"
        _shot(page, "decisions")
        page.goto(server.url + "/pairs")
        page.get_by_role("heading", name="Pairs").wait_for()
        _wait_loaded(page, 2)
        _shot(page, "pairs")
    finally:
        server.stop()
