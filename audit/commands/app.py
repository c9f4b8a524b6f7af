"""``audit app RUN [--port P]``: the Streamlit review app, bound to 127.0.0.1 by default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from audit.errors import AuditInputError


def app_path() -> Path:
    import app

    return Path(app.__file__).with_name("streamlit_app.py")


def add_parser(sub) -> None:
    p = sub.add_parser("app", help="review a run in the browser (Streamlit)")
    p.add_argument("run", help="run directory")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.set_defaults(func=main)


def main(args) -> int:
    run = Path(args.run)
    if not (run / "examples.parquet").exists():
        raise AuditInputError(f"{run}: no examples.parquet (run `audit run --out {run}` first)")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path()), "--server.address", args.host,
           "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--", str(run.resolve())]
    print(f"review app on http://{args.host}:{args.port}  (Ctrl-C to stop)")
    return subprocess.call(cmd)
