import os
import sys
from pathlib import Path

# `python -m audit` puts the working directory first on the import path. Unless that is this source tree,
# drop it: a run directory someone sent you (`cd RUN && python -m audit app .`) must not supply modules
# (an `app.py`, a `pandas.py`) to the tool or to the server it starts.
if sys.path and sys.path[0] in ("", os.getcwd()) and Path.cwd().resolve() != Path(__file__).resolve().parents[1]:
    sys.path.pop(0)

from audit.cli import main  # noqa: E402

sys.exit(main())
