"""The review server answers only its own host name and origin, and takes no configuration or code from
the working directory (DESIGN.md, "Trust boundaries"; issue #22 items 1-2).

A real ``audit app`` is started from *inside* a run directory that carries a ``.streamlit/config.toml``
(moving the server to another URL path and turning CORS off) and a ``streamlit.py`` (writing a marker
file if imported). Real WebSocket clients then speak Streamlit's protocol to it: under a foreign Host
(DNS rebinding) the connection is refused; from a foreign localhost origin the session gets a refusal
and none of the run's data; from the server's own origin the app renders. With Chromium at hand, a page
loaded under a name that resolves to 127.0.0.1 shows no image and no review control.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from audit.commands.app import allowed_hosts, request_refusal, streamlit_command

ARTIFACTS = ("manifest.json", "examples.parquet", "pairs.parquet", "dynamics.npz")
ENV = {"AUDIT_APP_HOSTS": "127.0.0.1,localhost,::1", "AUDIT_APP_PORT": "8501", "AUDIT_APP_EXTRA_HOSTS": ""}


@pytest.mark.parametrize("headers, refused", [
    ({"Host": "127.0.0.1:8501", "Origin": "http://127.0.0.1:8501"}, None),
    ({"Host": "localhost:8501", "Origin": "http://localhost:8501"}, None),
    ({"Host": "[::1]:8501", "Origin": "http://[::1]:8501"}, None),
    ({"host": "127.0.0.1:8501"}, None),  # no Origin: not a browser, so not a web page's request
    ({"Host": "evil.test:8501", "Origin": "http://evil.test:8501"}, "Host"),  # DNS rebinding
    ({"Host": "127.0.0.1:8502"}, "Host"),
    ({"Host": "127.0.0.1"}, "Host"),  # port 80 implied
    ({}, "Host"),
    ({"Host": "127.0.0.1:8501", "Origin": "http://localhost:9999"}, "page"),  # another local server's page
    ({"Host": "127.0.0.1:8501", "Origin": "https://127.0.0.1:8501"}, "page"),
    ({"Host": "127.0.0.1:8501", "Origin": "null"}, "page"),  # a sandboxed iframe or a file:// page
    ({"Host": "127.0.0.1:8501", "Origin": "http://127.0.0.1:8501.evil.test"}, "page"),
    ({"Host": "127.0.0.1:8501@evil.test"}, "Host"),
])
def test_request_refusal_names_what_is_refused(headers, refused):
    why = request_refusal(headers, ENV)
    if refused is None:
        assert why is None
    else:
        assert why is not None and why.startswith("refused:") and refused in why


def test_allow_host_admits_a_proxy_name_at_any_port_and_scheme():
    env = dict(ENV, AUDIT_APP_EXTRA_HOSTS="review.lan")
    assert request_refusal({"Host": "review.lan", "Origin": "https://review.lan"}, env) is None
    assert request_refusal({"Host": "other.lan", "Origin": "https://review.lan"}, env) is not None
    assert request_refusal({"Host": "127.0.0.1:8501"}, {}) is None  # plain `streamlit run`: not enforced


def test_the_server_command_pins_hosts_origins_and_cors():
    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "::1"]
    assert allowed_hosts("10.1.2.3") == ["10.1.2.3"]
    assert allowed_hosts("0.0.0.0", ["Box"]) == ["localhost", "127.0.0.1", "::1", "box"]
    cmd = streamlit_command(Path("/r"), "127.0.0.1", 8600)
    pairs = list(zip(cmd, cmd[1:]))
    assert [v for k, v in pairs if k == "--server.allowedHosts"] == ["127.0.0.1", "localhost", "::1"]
    assert [v for k, v in pairs if k == "--server.corsAllowedOrigins"] == [
        "http://127.0.0.1:8600", "http://localhost:8600", "http://[::1]:8600"]
    assert ("--server.enableCORS", "true") in pairs and ("--server.enableXsrfProtection", "true") in pairs


# -- a real server started from inside a prepared run directory -------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def planted_server(digits_run, tmp_path):
    src, _ = digits_run
    run = tmp_path / "received-run"
    run.mkdir()
    for name in ARTIFACTS:
        shutil.copy2(src / name, run / name)
    marker = tmp_path / "module-ran"
    (run / ".streamlit").mkdir()
    (run / ".streamlit" / "config.toml").write_text(
        '[server]\nbaseUrlPath = "planted"\nenableCORS = false\nenableXsrfProtection = false\n')
    (run / ".streamlit" / "secrets.toml").write_text('planted = "yes"\n')
    for module in ("streamlit.py", "pandas.py", "app.py"):
        (run / module).write_text(f"open({str(marker)!r}, 'a').write({module!r})\n")
    port = _free_port()
    env = dict(os.environ, AUDIT_REVIEWER="tester")
    env.pop("AUDIT_RUN_DIR", None)
    log = open(tmp_path / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "audit", "app", ".", "--port", str(port)], cwd=run,
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the app did not answer within 90 s"
            time.sleep(0.2)  # polling a socket: there is no event to wait on
        yield run, port, marker
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def _session(port: int, host: str, origin: str | None, seconds: float = 60.0) -> str:
    """Open the app's WebSocket as ``host`` from ``origin``, ask for a script run, and return every message
    the server sends until the run finishes (as protobuf text), or the refusal as ``REFUSED <status>``."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    headers = {"Origin": origin} if origin else {}
    try:
        async with connect(f"ws://{host}/_stcore/stream", host="127.0.0.1", port=port, subprotocols=["streamlit"],
                           additional_headers=headers, max_size=None, open_timeout=30) as ws:
            msg = BackMsg()
            msg.rerun_script.query_string = ""
            await ws.send(msg.SerializeToString())
            texts, end = [], time.monotonic() + seconds
            while time.monotonic() < end:
                fwd = ForwardMsg()
                fwd.ParseFromString(await asyncio.wait_for(ws.recv(), timeout=end - time.monotonic()))
                texts.append(str(fwd))
                if fwd.WhichOneof("type") == "script_finished":
                    break
            return "\n".join(texts)
    except InvalidStatus as e:
        return f"REFUSED {e.response.status_code}"


def test_the_server_answers_only_its_own_host_and_origin_and_ignores_the_working_directory(planted_server):
    run, port, marker = planted_server
    # the planted config (another URL path, CORS off) was not read: the server is at / with CORS on
    with urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/_stcore/health", headers={"Origin": "http://evil.test"})) as r:
        assert r.read() == b"ok" and r.headers.get("Access-Control-Allow-Origin") is None
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/planted/_stcore/health")

    assert asyncio.run(_session(port, f"evil.test:{port}", f"http://evil.test:{port}")) == "REFUSED 403"
    foreign = asyncio.run(_session(port, f"127.0.0.1:{port}", "http://localhost:9999"))
    assert "refused: a page from" in foreign and "script_finished" in foreign
    for secret in (run.name, "Review queue", "flagged", 'label: "Reviewer"'):
        assert secret not in foreign  # nothing of the run reached the foreign page
    own = asyncio.run(_session(port, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"))
    assert "refused:" not in own and 'label: "Reviewer"' in own and "Review queue" in own
    assert not marker.exists()  # no module from the working directory was imported


CHROMIUM = next((p for p in (os.environ.get("AUDIT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (`apt-get install chromium`; .ci/run does this)")
def test_a_page_under_a_rebound_name_gets_no_data_in_a_real_browser(planted_server):
    """DNS rebinding as a browser lives it: ``evil.test`` resolves to 127.0.0.1, the page loads from the
    server, and its WebSocket is refused: no image, no reviewer box, no decision control."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    run, port, _ = planted_server
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP evil.test 127.0.0.1"])
        try:
            page = b.new_page()
            page.set_default_timeout(60_000)
            closed: list[str] = []
            page.on("websocket", lambda ws: ws.on("close", lambda _: closed.append(ws.url)))
            page.goto(f"http://evil.test:{port}/")
            page.wait_for_function("() => document.querySelector('[data-testid=\"stApp\"]') !== null")
            page.wait_for_timeout(5000)
            assert closed and all("evil.test" in u for u in closed)  # its WebSocket was opened and refused
            assert page.locator('[data-testid="stImage"]').count() == 0
            assert page.get_by_label("Reviewer").count() == 0 and run.name not in page.content()
            own = b.new_page()
            own.set_default_timeout(90_000)
            own.goto(f"http://127.0.0.1:{port}/")
            own.get_by_role("textbox", name="Reviewer").wait_for()  # the server's own origin still works
        finally:
            b.close()
