"""Collecting every problem of a dataset before refusing it.

A loader records each problem it finds (``problems.add("train/cat/3.png: cannot decode ...")``) and keeps
going, so a user fixes a whole dataset in one pass instead of one error per run; ``raise_if_any`` then
raises one :class:`DatasetError` (exit code 2) listing them all (``str()`` shows the first 20 and a count).
"""

from __future__ import annotations

import numpy as np

from audit.errors import AuditInputError


class DatasetError(AuditInputError):
    """Bad dataset input (exit code 2). With a single problem, the message is that problem, on one line."""

    def __str__(self) -> str:
        if len(self.problems) <= 1:
            return self.args[0] if self.args else ""
        return super().__str__()


class Problems:
    """An ordered list of problem messages found in one dataset (``what``: its spec or file)."""

    def __init__(self, what: str):
        self.what = what
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        """Raise one :class:`DatasetError` naming every problem found so far; do nothing when none."""
        if not self.items:
            return
        if len(self.items) == 1:
            raise DatasetError(f"{self.what}: {self.items[0]}", self.items)
        raise DatasetError(f"{self.what}: {len(self.items)} problems", self.items)


def check_classes(labels: np.ndarray, class_names: tuple[str, ...] | list[str], problems: Problems,
                  *, where: str = "") -> None:
    """Record classes without any example and datasets with fewer than two classes.

    labels: (N,) int labels already known to lie in ``[0, len(class_names))``.
    """
    k = len(class_names)
    if k < 2:
        problems.add(f"{where}found {k} class{'es' if k != 1 else ''}"
                     f"{' (' + ', '.join(map(repr, class_names)) + ')' if k else ''}; an audit needs at least 2")
        return
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=k) if len(labels) else np.zeros(k, int)
    for c in np.flatnonzero(counts == 0):
        problems.add(f"{where}class {class_names[c]!r} (label {c}) has no examples")


def check_split_values(split: np.ndarray, problems: Problems, *, row_name=lambda i: f"row {i}",
                       limit: int = 1000) -> np.ndarray:
    """Normalise split strings (case, surrounding spaces) to ``train``/``test`` and record the others.

    Returns the normalised (N,) string array; bad rows keep their value and are recorded as problems
    (at most ``limit`` of them, then a count).
    """
    from audit.data.base import TEST, TRAIN

    norm = np.char.lower(np.char.strip(np.asarray(split).astype(str)))
    bad = np.flatnonzero(~np.isin(norm, [TRAIN, TEST]))
    for i in bad[:limit]:
        problems.add(f"{row_name(i)}: split {str(split[i])!r} is not 'train' or 'test'")
    if len(bad) > limit:
        problems.add(f"... {len(bad) - limit} more rows with a split other than 'train' or 'test'")
    return norm
