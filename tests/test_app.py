"""The review app renders a real run without an exception (streamlit.testing AppTest)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from audit.commands.app import app_path


def test_app_renders_flagged_grid(digits_run):
    out, man = digits_run
    at = AppTest.from_file(str(app_path()), default_timeout=60)
    at.run()  # no run directory given: a clear message, no exception
    at = AppTest.from_file(str(app_path()), default_timeout=60)
    import sys

    old = sys.argv
    sys.argv = ["streamlit_app.py", str(out)]
    try:
        at.run()
    finally:
        sys.argv = old
    assert not at.exception
    assert at.title[0].value == "benign-audit"
    flagged = man["metrics"]["num_flagged_train"]
    assert any(str(flagged) in c.value for c in at.caption)
    assert len(at.get("image")) == min(30, flagged)
