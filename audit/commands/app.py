"""``audit app RUN [--port P] [--host H] [--reviewer NAME]``: the Streamlit review app, bound to
127.0.0.1 by default (this machine only).

The app loads nothing from the internet: Streamlit's usage statistics are off, its fonts and icons come
from the package itself, and the page icon is a file the app serves (``app/static/icon.png``); a port
that is taken is reported (exit 2) before anything is printed or started."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

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
    p.add_argument("--reviewer", default=None, help="default reviewer name (else $AUDIT_REVIEWER or the login name)")
    p.set_defaults(func=main)


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


def streamlit_command(run: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(app_path()),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
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
    env = dict(os.environ, AUDIT_RUN_DIR=str(run))
    if args.reviewer:
        env["AUDIT_REVIEWER"] = args.reviewer
    check_address(args.host, args.port)
    if not _is_loopback(args.host):
        print(f"audit: warning: --host {args.host} lets anyone who can reach it read this run and write decisions",
              file=sys.stderr)
    print(f"review app on http://{args.host}:{args.port}  (Ctrl-C to stop)", flush=True)
    cmd = streamlit_command(run, args.host, args.port)
    if os.name == "posix":  # become the server: a signal to this process reaches it, no orphan is left
        sys.stdout.flush()
        os.execve(cmd[0], cmd, env)
    try:  # pragma: no cover - Windows
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:  # pragma: no cover
        return 0
