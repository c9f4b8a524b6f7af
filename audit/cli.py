"""The ``audit`` command. Each sub-command lives in ``audit/commands/<name>.py`` with
``add_parser(subparsers)`` and ``main(args) -> int``.

Exit codes: 0 success; 2 bad input or usage (one line naming the file, row or option); 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from audit import __version__
from audit.errors import AuditError, AuditInputError

COMMANDS = ("run", "validate", "export", "app", "batch", "report", "reproduce", "verify")
# One example per subcommand, at the end of its --help.
EXAMPLES = {
    "run": "audit run --dataset folder:photos --out runs/photos",
    "validate": "audit validate --dataset csv:labels.csv",
    "export": "audit export runs/photos --out labels.csv",
    "app": "audit app runs/photos",
    "batch": "audit batch examples/batch.toml --out runs/grid",
    "report": "audit report runs/photos",
    "reproduce": "audit reproduce toy-mnist --quick --out runs/toy",
    "verify": "audit verify runs/photos",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 2
        self.exit(2, f"audit: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="audit", description="Audit image-classification datasets for mislabelled and atypical examples.")
    parser.add_argument("--version", action="version", version=f"benign-audit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"audit.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"audit.commands.{name}":
                continue
            raise
        mod.add_parser(sub)
        if name in sub.choices and name in EXAMPLES:
            sub.choices[name].epilog = f"example: {EXAMPLES[name]}"
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AuditInputError as e:
        print(f"audit: error: {e}", file=sys.stderr)
        return e.exit_code
    except AuditError as e:
        print(f"audit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("audit: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
