"""Errors with the exit codes of the contract: 2 for bad input or usage, 1 for anything else."""

from __future__ import annotations


class AuditError(Exception):
    """Base class; exit code 1."""

    exit_code = 1


class AuditInputError(AuditError):
    """Bad input or usage: a one-line message naming the file, row, value or option; exit code 2.

    ``problems`` optionally carries every problem found (a dataset check collects them all rather
    than stopping at the first); ``str()`` gives the first 20 and a count.
    """

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(message)

    def __str__(self) -> str:  # pragma: no cover - formatting only
        base = super().__str__()
        if not self.problems:
            return base
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        lines = [base] + [f"  - {p}" for p in shown]
        if more > 0:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)


def describe_error(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters) for a one-line problem."""
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
