"""End to end in a real browser: ``audit app RUN`` serves a real Streamlit server, headless Chromium
(driven by playwright) opens the review queue, decides by key and by click, reloads, and finds the
decisions kept; the server is restarted and they are still there. A second test audits a dataset whose
class and file names (and a reviewer's name) carry HTML, script and Markdown, opens every page, and finds
no script run, the names shown as text, and a joint fix on the Pairs page in the export. Every request
the pages make is recorded: none leaves this machine. A screenshot of each page is saved outside the
repository ($AUDIT_SCREENSHOTS, default /tmp/audit-screens).

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

    def __init__(self, run: Path, log: Path, reviewer: str = "browser"):
        self.run, self.port = run, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "ab")
        env = dict(os.environ, AUDIT_REVIEWER=reviewer)
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
def browser_run(run_copy):
    return run_copy  # conftest's copy of the session's digits run


@pytest.fixture
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _open(browser, server, path: str, requests: list | None = None):
    """A new page of the running app at ``path``, with a timeout for a busy 2-core machine; every URL
    it requests is appended to ``requests``."""
    page = browser.new_page(viewport={"width": 1440, "height": 1400})
    page.set_default_timeout(90_000)
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url + path)
    return page


def _off_this_machine(requests: list[str]) -> list[str]:
    """The requested URLs whose host is not this machine (data: and blob: URLs stay in the page)."""
    from urllib.parse import urlsplit

    return [u for u in requests if urlsplit(u).scheme not in ("data", "blob")
            and urlsplit(u).hostname not in ("127.0.0.1", "localhost", "::1")]


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
    ex = pd.read_parquet(run / "examples.parquet").query("split == 'train' and is_label_issue")
    flagged = ex.sort_values(["issue_score", "example_id"], ascending=[False, True])
    order = flagged["example_id"].tolist()
    suggested = int(flagged.set_index("example_id").at[order[1], "suggested_label"])
    page_pictures = GRID + 1 + NEIGHBOURS
    server, requests = AppServer(run, tmp_path / "app.log"), []
    try:
        page = _open(browser, server, "/", requests)
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
    assert requests and _off_this_machine(requests) == []  # the app loads nothing from the internet

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


# -- hostile names: shown as text, no script runs, nothing fetched from elsewhere ---------------------------
HOSTILE_CLASSES = ('<img src=x onerror="window.__x=1">', '<iframe srcdoc="<script>parent.__x=2<&#47;script>">',
                   "<style>*{visibility:hidden}", "[click](javascript:window.__x=3) **b** :red[c] $x$")
HOSTILE_FILES = ('<img src=y onerror="window.__x=4">', '<svg onload="window.__x=5">', "`tick` <b>x")
HOSTILE_REVIEWER = '![me](http://example.com/me.png) <img src=z onerror="window.__x=6">'
# Nothing ran, nothing was injected (no handlers, frames or links to elsewhere), and the page is still visible.
CLEAN = """() => ({
  x: window.__x === undefined ? null : String(window.__x),
  handlers: document.querySelectorAll('[onerror],[onload]').length,
  frames: document.querySelectorAll('iframe[srcdoc]').length,
  js_links: document.querySelectorAll('a[href^="javascript:"]').length,
  links_out: [...document.querySelectorAll('a[href]')].filter(a => a.host && a.host !== location.host).length,
  visible: getComputedStyle(document.querySelector('[data-testid="stMain"]')).visibility,
})"""
CLEAN_PAGE = {"x": None, "handlers": 0, "frames": 0, "js_links": 0, "links_out": 0, "visible": "visible"}


@pytest.fixture
def hostile_run(tmp_path):
    """A seconds-long audit of a folder dataset whose class folders and file names carry HTML, script and
    Markdown: 4 classes × 20 grey 8×8 images (a bright band per class), 20% injected noise."""
    import numpy as np
    import torch
    from PIL import Image

    from audit.cli import main as cli

    rng = np.random.default_rng(0)
    root = tmp_path / "hostile"
    for c, name in enumerate(HOSTILE_CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(20):
            a = rng.integers(0, 60, (8, 8)).astype(np.uint8)
            a[2 * c:2 * c + 2] += 180
            Image.fromarray(a).save(root / name / f"{HOSTILE_FILES[i % 3]} {i:02d}.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "run"
        assert cli(["run", "--dataset", f"folder:{root}", "--out", str(out), "--noise", "0.2", "--epochs", "20",
                    "--robust-epochs", "2", "--cv-epochs", "5", "--models", "natural,pgd", "--folds", "2",
                    "--eval-steps", "5", "--eval-restarts", "1", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _assert_clean(page, where: str) -> None:
    assert page.evaluate(CLEAN) == CLEAN_PAGE, where


def _export_with_decisions(run: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``audit export`` applying the review decisions: the training labels and the test-label list."""
    from audit.cli import build_parser
    from audit.cli import main as cli

    known = vars(build_parser().parse_args(["export", str(run), "--out", str(out)]))
    extra = ["--apply", "decisions"] if "apply" in known else ["--use-decisions"]
    assert cli(["export", str(run), "--out", str(out), *extra]) == 0
    return pd.read_csv(out), pd.read_csv(out.with_name(f"{out.stem}.flagged-test{out.suffix}"))


def test_hostile_names_show_as_text_no_script_runs_nothing_leaves_the_machine(hostile_run, browser, tmp_path):
    import json

    run = hostile_run
    names = json.loads((run / "manifest.json").read_text())["dataset"]["class_names"]
    assert sorted(names) == sorted(HOSTILE_CLASSES)  # sorted folder order
    ex = pd.read_parquet(run / "examples.parquet")
    flagged = ex[(ex.split == "train") & ex.is_label_issue]
    requests: list[str] = []
    server = AppServer(run, tmp_path / "app.log", reviewer=HOSTILE_REVIEWER)
    try:
        page = _open(browser, server, "/", requests)
        page.get_by_text("Natural versus robust training").wait_for()
        _wait_loaded(page, 0)
        _assert_clean(page, "overview")
        _shot(page, "hostile-overview")

        page.goto(server.url + "/review")
        _wait_loaded(page, min(GRID, len(flagged)) + 1)
        _assert_clean(page, "review")
        opened = ex.set_index("example_id").loc[_open_id(page)]  # the id, in full, is the element's text
        assert page.locator(".audit-big").first.inner_text() == names[int(opened.given_label)]
        for c, name in enumerate(names):  # one relabel button per class, its name as its text
            assert page.locator(f".st-key-relabel_{c}").inner_text().startswith(name)
        page.locator("body").press("k")  # a decision by the hostile reviewer: listed under Recent decisions
        page.get_by_role("button", name=f"{opened.name} · kept").wait_for()
        _assert_clean(page, "review, after a decision")
        _shot(page, "hostile-review")

        page.goto(server.url + "/pairs")
        page.get_by_role("button", name="Fix both").first.wait_for()
        _wait_loaded(page, 2)
        _assert_clean(page, "pairs")
        page.get_by_role("button", name="Fix both").first.click()
        page.get_by_role("button", name="Record both").click()
        page.get_by_text("Recorded both").wait_for()
        _assert_clean(page, "pairs, after a joint fix")
        _shot(page, "hostile-pairs")

        page.goto(server.url + "/decisions")
        page.get_by_text("decisions in effect").wait_for()
        _wait_loaded(page, 0)
        assert len(DecisionStore(run).log()) == 3  # the key press, then the joint fix's two rows
        assert _metric(page, "decisions in effect").split()[-1] == str(len(DecisionStore(run).latest()))
        _assert_clean(page, "decisions")
    finally:
        server.stop()
    assert requests and _off_this_machine(requests) == []

    # the joint fix: one test-label row and one training-label row, both in the export
    log = DecisionStore(run).log()
    test_id, train_id = log["example_id"].iloc[1], log["example_id"].iloc[2]
    pairs = pd.read_parquet(run / "pairs.parquet")
    assert ((pairs.test_id == test_id) & (pairs.train_id == train_id)).any()
    labels, test_labels = _export_with_decisions(run, tmp_path / "labels.csv")
    train_row = labels.set_index("example_id").loc[train_id]
    test_row = test_labels.set_index("example_id").loc[test_id]
    assert train_row.reviewer == test_row.reviewer == HOSTILE_REVIEWER
    assert train_row.decision == log["decision"].iloc[2] and test_row.decision == log["decision"].iloc[1]
