"""``audit app RUN [--port P] [--host H] [--reviewer NAME]``: the Streamlit review app, bound to
127.0.0.1 by default (this machine only).

The app loads nothing from the internet: Streamlit's usage statistics are off, its fonts and icons come
from the package itself, and the page icon is a file the app serves (``app/static/icon.png``); a port
that is taken is reported (exit 2) before anything is printed or started.

The server answers only its own names (DESIGN.md, "Trust boundaries"):
- **Host**: Streamlit's ``server.allowedHosts`` is set to the names of the bound address (127.0.0.1 →
  ``127.0.0.1``, ``localhost``; others: that address, plus ``--allow-host`` names), so a page served under
  a name that resolves to this machine (DNS rebinding) cannot open the app's WebSocket.
- **Origin**: Streamlit accepts a WebSocket from any ``localhost`` origin on any port; the app script
  itself (:func:`request_refusal`, first thing on every run) refuses a session whose ``Origin`` is not
  exactly ``http://NAME:PORT`` of this server, before it reads the run or records a decision.
- **No configuration or code from the working directory**: the server starts in an empty private
  directory, so a ``.streamlit/config.toml`` or a ``streamlit.py`` inside a run directory someone sent you
  (``cd RUN && audit app .``) is neither read nor imported."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from audit.errors import AuditInputError


def app_path() -> Path:
    import app

    return Path(app.__file__).with_name("streamlit_app.py")


def add_parser(sub) -> None:
    p = sub.add_parser("app", help="review a run in the browser (Streamlit)",
                       description="Keep, relabel or remove flagged examples; decisions go to RUN/decisions.sqlite.")
    p.add_argument("run", help="run directory")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; anyone who can reach another "
                        "address can read the run and write decisions)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another host name the browser may use to reach the server (behind a proxy, or a machine "
                        "name with --host 0.0.0.0); repeatable. Requests under any other name are refused")
    p.add_argument("--reviewer", default=None, help="default reviewer name (else $AUDIT_REVIEWER or the login name)")
    p.set_defaults(func=main)


HOSTS_ENV = "AUDIT_APP_HOSTS"  # the names the browser may use (comma-separated), set by ``audit app``
PORT_ENV = "AUDIT_APP_PORT"
EXTRA_HOSTS_ENV = "AUDIT_APP_EXTRA_HOSTS"  # --allow-host names: any port or scheme (a proxy)
WILDCARD = {"0.0.0.0", "::", ""}


def allowed_hosts(host: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Host names a request may carry: the bound address and its loopback aliases, plus ``extra``."""
    names = [host]
    if _is_loopback(host) or host in WILDCARD:
        names += ["localhost", "127.0.0.1", "::1"]
    if host in WILDCARD:
        names = [n for n in names if n not in WILDCARD]
    names += [e.strip() for e in extra if e.strip()]  # (--allow-host names)
    return list(dict.fromkeys(n.lower().strip("[]") for n in names))


def _origin(name: str, port: int) -> str:
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def _split(netloc: str) -> tuple[str | None, int | None]:
    """(host name, port) of ``netloc``, lower-case; (None, None) when it does not parse."""
    try:
        u = urlsplit(f"//{netloc.strip()}")
        return (u.hostname or "").lower().rstrip(".") or None, u.port
    except ValueError:
        return None, None


def request_refusal(headers: Mapping[str, str], env: Mapping[str, str] | None = None) -> str | None:
    """Why the app must not answer this session, or None. ``headers`` are the WebSocket request's
    (``st.context.headers``). Enforced under ``audit app``, which sets $AUDIT_APP_HOSTS: ``Host`` must be
    one of this server's names at its port, and ``Origin`` (a browser always sends one) exactly
    ``http://NAME:PORT``. Names given with ``--allow-host`` (a proxy in front) may carry any port and scheme."""
    env = os.environ if env is None else env
    own = [n for n in env.get(HOSTS_ENV, "").split(",") if n]
    if not own:
        return None
    extra = {n for n in env.get(EXTRA_HOSTS_ENV, "").split(",") if n}
    port = int(env.get(PORT_ENV, "0") or 0)
    get = {k.lower(): v for k, v in headers.items()}.get

    def ours(name: str | None, p: int | None, default_port: int) -> bool:
        return name in extra or (name in own and (p or default_port) == port)

    host = get("host") or ""
    if not ours(*_split(host), 80):
        return f"refused: this review server answers only {', '.join(own)} on port {port}, not Host {host!r}"
    origin = get("origin")
    if origin is not None:
        u = urlsplit(origin.strip())
        name, p = _split(u.netloc)
        if not ((u.scheme == "http" or name in extra) and ours(name, p, 443 if u.scheme == "https" else 80)):
            return f"refused: a page from {origin!r} may not use this review server"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind_problem(host: str, port: int) -> OSError | None:
    """The error binding ``host:port`` gives now (as the server will: SO_REUSEADDR), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return e
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        if os.name == "posix":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return e
    return None


def _free_port(host: str, start: int) -> int | None:
    """The first port after ``start`` that ``host`` can bind (a suggestion), or None."""
    return next((p for p in range(start + 1, min(start + 100, 65536)) if _bind_problem(host, p) is None), None)


def check_address(host: str, port: int) -> None:
    """Refuse a port that is taken or an address this machine cannot bind, naming the option."""
    e = _bind_problem(host, port)
    if e is None:
        return
    if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
        raise AuditInputError(f"--host {host}: not an address of this machine ({e.strerror or e})")
    if e.errno == errno.EADDRINUSE:
        free = _free_port(host, port)
        hint = f"choose another with --port {free}" if free else "choose another with --port"
        raise AuditInputError(f"--port {port}: {host}:{port} is already in use (another app?); {hint}")
    raise AuditInputError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e})")


def streamlit_command(run: Path, host: str, port: int, extra_hosts: list[str] | tuple[str, ...] = ()) -> list[str]:
    names = allowed_hosts(host, extra_hosts)
    return [sys.executable, "-m", "streamlit", "run", str(app_path()),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            *[a for n in names for a in ("--server.allowedHosts", n)], "--server.enableCORS", "true",
            *[a for n in names for a in ("--server.corsAllowedOrigins", _origin(n, port))],
            "--server.enableStaticServing", "false",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--server.runOnSave", "false", "--server.enableXsrfProtection", "true",
            "--client.toolbarMode", "viewer", "--global.developmentMode", "false",
            "--", str(run)]


def main(args) -> int:
    run = Path(args.run)
    if not (run / "examples.parquet").is_file():
        raise AuditInputError(f"{run}: no examples.parquet (run `audit run --out {run}` first)")
    if not (run / "manifest.json").is_file():
        raise AuditInputError(f"{run}: no manifest.json (an unfinished run? rerun `audit run --out {run}`)")
    if not 0 < args.port < 65536:
        raise AuditInputError(f"--port {args.port}: must be 1-65535")
    if not os.access(run, os.W_OK):
        raise AuditInputError(f"{run}: not writable; the app stores decisions in {run / 'decisions.sqlite'}")
    run = run.resolve()
    extra = [e.strip().lower().strip("[]") for e in args.allow_host if e.strip()]
    env = dict(os.environ, AUDIT_RUN_DIR=str(run))
    env.update({HOSTS_ENV: ",".join(allowed_hosts(args.host)), PORT_ENV: str(args.port),
                EXTRA_HOSTS_ENV: ",".join(extra)})
    if args.reviewer:
        env["AUDIT_REVIEWER"] = args.reviewer
    check_address(args.host, args.port)
    if not _is_loopback(args.host):
        print(f"audit: warning: --host {args.host} lets anyone who can reach it read this run and write decisions",
              file=sys.stderr)
    print(f"review app on http://{args.host}:{args.port}  (Ctrl-C to stop)", flush=True)
    cmd = streamlit_command(run, args.host, args.port, args.allow_host)
    # An empty private working directory: Streamlit reads ./.streamlit/*.toml and `python -m` imports from
    # the working directory first, so a run directory (or any folder) the app is started from is neither.
    os.chdir(tempfile.mkdtemp(prefix="audit-app-"))
    if os.name == "posix":  # become the server: a signal to this process reaches it, no orphan is left
        sys.stdout.flush()
        os.execve(cmd[0], cmd, env)
    try:  # pragma: no cover - Windows
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:  # pragma: no cover
        return 0
