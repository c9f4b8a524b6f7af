"""Collecting every problem of a dataset before refusing it.

A loader records each problem it finds (``problems.add("train/cat/3.png: cannot decode ...")``) and keeps
going, so a user fixes a whole dataset in one pass instead of one error per run; ``raise_if_any`` then
raises one :class:`DatasetError` (exit code 2) listing them all (``str()`` shows the first 20 and a count).
"""

from __future__ import annotations

import os

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

    KEEP = 10_000  # messages kept; beyond, only counted (a hostile file may have millions of bad rows)

    def __init__(self, what: str):
        self.what = what
        self.items: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.items) < self.KEEP:
            self.items.append(message)

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return bool(self.count)

    def raise_if_any(self) -> None:
        """Raise one :class:`DatasetError` naming every problem found so far; do nothing when none."""
        if not self.count:
            return
        if self.count == 1:
            raise DatasetError(f"{self.what}: {self.items[0]}", self.items)
        items = self.items + ([f"... {self.count - len(self.items)} more problems"] if self.count > len(self.items) else [])
        raise DatasetError(f"{self.what}: {self.count} problems", items)


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


def check_class_list(names, where: str, problems: Problems) -> list[str] | None:
    """A class list read from a file (``where`` names it) as a list of strings, or ``None`` after recording
    why it is not one: not a list of strings or integers, longer than ``MAX_CLASSES``, a name listed twice.
    Bytes are decoded as UTF-8."""
    from audit.data.limits import MAX_CLASSES

    if isinstance(names, (str, bytes)) or not hasattr(names, "__len__") or getattr(names, "ndim", 1) != 1:
        problems.add(f"{where}: must be a list of class names, found {type(names).__name__}"
                     + (f" of shape {names.shape}" if hasattr(names, "shape") else ""))
        return None
    if len(names) > MAX_CLASSES:
        problems.add(f"{where}: {len(names):,} classes, more than the maximum of {MAX_CLASSES:,}")
        return None
    out = []
    for i, nm in enumerate(names):
        if isinstance(nm, bytes):
            try:
                nm = nm.decode("utf-8")
            except UnicodeDecodeError:
                problems.add(f"{where}: class name {i} ({nm[:40]!r}) is not UTF-8")
                return None
        if isinstance(nm, (np.integer, int)) and not isinstance(nm, bool):
            nm = str(int(nm))
        if not isinstance(nm, (str, np.str_)):
            problems.add(f"{where}: class name {i} is a {type(nm).__name__}, not text")
            return None
        out.append(str(nm))
    check_unique_names(out, where, problems)
    return out


def check_unique_names(names: list[str], where: str, problems: Problems) -> None:
    """Record every class name listed more than once (by its first two positions)."""
    seen: dict[str, int] = {}
    for i, nm in enumerate(names):
        if nm in seen and seen[nm] >= 0:
            problems.add(f"{where}: class {nm!r} listed twice (entries {seen[nm]} and {i})")
            seen[nm] = -1  # report each name once
        seen.setdefault(nm, i)


# How many N × K float32 tables of class scores an audit holds at once (the folds' out-of-sample
# probabilities, each model's train and test probabilities and logits, cleanlab's copies), measured loosely.
CLASS_SCORE_COPIES = 12


def class_score_bytes(n: int, k: int) -> int:
    """Memory the class scores of ``n`` images and ``k`` classes take: the per-example tables (float32, all
    copies) and two class × class tables (cleanlab's confident joint and noise matrix, float64)."""
    return int(n) * int(k) * 4 * CLASS_SCORE_COPIES + int(k) * int(k) * 8 * 2


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_loaded(ds) -> None:
    """Refuse a loaded :class:`AuditDataset` that no audit can use, naming what is wrong: no examples,
    zero-size images, no training or no test rows, more than ``MAX_CLASSES`` classes, duplicate class names."""
    from audit.data.base import TEST, TRAIN
    from audit.data.limits import MAX_CLASSES

    problems = Problems(ds.spec)
    n = len(ds.labels)
    if n == 0:
        problems.add("no examples (0 rows)")
    _, h, w = ds.shape
    if h == 0 or w == 0:
        problems.add(f"images are {h}×{w} pixels: zero-size images cannot be audited")
    if ds.num_classes > MAX_CLASSES:
        problems.add(f"{ds.num_classes:,} classes, more than the maximum of {MAX_CLASSES:,}")
    need, have = class_score_bytes(n, ds.num_classes), physical_memory()
    if have and need > have / 2:
        problems.add(f"{ds.num_classes:,} classes × {n:,} images: the class scores alone need about "
                     f"{need / 2**30:.1f} GiB, more than half of this machine's {have / 2**30:.0f} GiB (merge classes "
                     "or audit a subset)")
    check_unique_names(list(ds.class_names), "class names", problems)
    if n:
        for which in (TRAIN, TEST):
            if not (ds.split == which).any():
                other = TEST if which == TRAIN else TRAIN
                problems.add(f"no {which!r} rows: all {n} examples are in the {other!r} split")
    problems.raise_if_any()
