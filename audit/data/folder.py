"""``folder:PATH``: one sub-folder per class, as torchvision's ``ImageFolder`` reads it.

Layout: ``PATH/<class>/**/<image>``; classes are the sorted sub-folder names (label = position, as in
``ImageFolder``). When ``PATH`` holds exactly the sub-folders ``train`` and ``test`` (or ``train`` and
``val``, read as the test split), each is such a class folder tree and gives the split; otherwise a
deterministic stratified split is made. Files are found recursively; hidden files and folders are
ignored, and files whose suffix no Pillow plugin opens are skipped and reported in
``extra["skipped_files"]``. Symbolic links to folders are never followed (a link such as ``a/up -> ..``
would repeat the tree under wrong labels, or loop); they are reported in ``skipped_files`` with a
trailing ``/``. A symbolic link to a file is read only when its target (every link resolved) lies inside
``PATH``; one that leaves it is refused, naming the file. Names that are not valid UTF-8 are refused;
more than ``MAX_CLASSES`` class folders are refused. ``index`` is the position in the sorted list of relative paths,
``example_ids`` are those relative paths (``cat/0001.png``), ``paths`` the absolute file paths. Images are
normalised by the rule in :mod:`audit.data.images`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from audit.data.base import TEST, TRAIN, AuditDataset, stratified_split
from audit.data.checks import Problems, check_classes
from audit.data.images import ImageRef, decode_images, readable_extensions
from audit.data.limits import MAX_CLASSES
from audit.data.registry import LoadOptions, register
from audit.errors import AuditInputError

SPLIT_FOLDERS = ({"train", "test"}, {"train", "val"})


def _visible_dirs(path: Path) -> list[str]:
    """Sub-folder names of ``path``, sorted, without hidden ones and without links to folders."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


class _Walk:
    """Image files under class folders, relative to ``root`` (posix strings: folders can hold millions),
    the files skipped (not images, or links to folders), and problems (links leaving the root, names that
    are not UTF-8)."""

    def __init__(self, root: str, exts: frozenset[str], problems: Problems):
        self.root, self.real_root = root, os.path.realpath(root)
        self.exts, self.problems = exts, problems
        self.skipped: list[str] = []

    def _name_ok(self, rel: str) -> bool:
        try:
            rel.encode("utf-8")
            return True
        except UnicodeEncodeError:
            self.problems.add(f"{rel.encode('utf-8', 'surrogateescape')!r}: the name is not valid UTF-8")
            return False

    def _link(self, entry: os.DirEntry, rel: str) -> str | None:
        """What a symbolic link is: ``dir`` (never followed), ``file`` (inside the root) or None (refused)."""
        real = os.path.realpath(entry.path)
        if os.path.isdir(real):
            return "dir"
        if not _inside(real, self.real_root):
            self.problems.add(f"{rel}: a link to {real}, outside the dataset folder {self.real_root} (refused)")
            return None
        return "file"

    def images(self, class_dir: str) -> list[str]:
        found, stack, cut = [], [class_dir], len(self.root) + 1
        while stack:
            with os.scandir(stack.pop()) as it:
                entries = sorted(it, key=lambda e: e.name)
            for e in entries:
                rel = e.path[cut:].replace(os.sep, "/")
                if e.name.startswith(".") or not self._name_ok(rel):
                    continue
                kind = self._link(e, rel) if e.is_symlink() else ("dir" if e.is_dir() else "file")
                if kind == "dir" and not e.is_symlink():
                    stack.append(e.path)
                elif kind == "dir":
                    self.skipped.append(rel + "/")
                elif kind == "file":
                    (found if os.path.splitext(e.name)[1].lower() in self.exts else self.skipped).append(rel)
        return found


def _layout(root: Path, spec: str) -> tuple[list[tuple[Path, str | None]], list[str], list[str]]:
    """The class trees with their split (``None``: no split folders), the class names, and the loose
    entries (files, links to folders) beside the class folders, which are skipped."""
    top = _visible_dirs(root)
    split_dirs = [d for d in top if set(top) in SPLIT_FOLDERS]
    trees = [(root / d, TRAIN if d == TRAIN else TEST) for d in split_dirs] or [(root, None)]
    class_names = sorted({c for tree, _ in trees for c in _visible_dirs(tree)})
    loose = [(tree / e.name).relative_to(root).as_posix() + ("/" if e.is_dir() else "")
             for tree, _ in trees for e in os.scandir(tree)
             if not e.name.startswith(".") and (e.is_symlink() or e.is_file())]
    if not class_names:
        raise AuditInputError(f"{spec}: {root} has no class sub-folders (expected {root}/<class>/<image files>)")
    if len(class_names) > MAX_CLASSES:
        raise AuditInputError(f"{spec}: {len(class_names):,} class folders, more than the maximum of {MAX_CLASSES:,}")
    return trees, class_names, loose


def _find_files(root: Path, trees, class_names: list[str], problems: Problems) -> tuple[list[tuple], list[str]]:
    """(relative path, label, split) of every image file, sorted by path, and the files skipped."""
    base = os.path.abspath(root)
    walk = _Walk(base, readable_extensions(), problems)
    files: list[tuple[str, int, str | None]] = []
    per_class = np.zeros(len(class_names), np.int64)
    for tree, split in trees:
        for label, name in enumerate(class_names):
            class_dir = os.path.join(base, os.path.relpath(tree / name, root))
            if not os.path.isdir(class_dir) or os.path.islink(class_dir):
                continue
            images = walk.images(class_dir)
            per_class[label] += len(images)
            files += [(rel, label, split) for rel in images]
    for label in np.flatnonzero(per_class == 0):
        where = " or ".join(f"{t.relative_to(root).as_posix() + '/' if t != root else ''}{class_names[label]}/"
                            for t, _ in trees)
        problems.add(f"class {class_names[label]!r}: no image files in {where}")
    files.sort(key=lambda f: f[0])
    return files, walk.skipped


@register("folder")
def load_folder(arg: str, *, spec: str, opts: LoadOptions) -> AuditDataset:
    """Load an image folder tree (see the module docstring for the layout and the rules)."""
    root = Path(arg)
    if not root.exists():
        raise AuditInputError(f"{spec}: no such folder {root}")
    if not root.is_dir():
        raise AuditInputError(f"{spec}: {root} is not a folder (folder: wants one sub-folder per class)")
    trees, class_names, loose = _layout(root, spec)
    problems = Problems(spec)
    files, skipped = _find_files(root, trees, class_names, problems)
    base = os.path.abspath(root)
    refs = [ImageRef(name=rel, path=os.path.join(base, rel)) for rel, _, _ in files]
    images, info = decode_images(refs, problems, slug=f"folder-{root.resolve().name}",
                                 memory_budget_mb=opts.memory_budget_mb, cache_dir=opts.cache_dir,
                                 workers=opts.decode_workers, max_pixels=opts.max_image_pixels)
    if len(class_names) < 2:
        check_classes(np.zeros(0, np.int64), class_names, problems)
    problems.raise_if_any()
    assert images is not None
    labels = np.array([f[1] for f in files], dtype=np.int64)
    split = np.array([f[2] for f in files]).astype(str) if trees[0][1] is not None else stratified_split(labels)
    n = len(files)
    info["skipped_files"] = sorted(skipped + loose)  # not images, or images outside any class folder
    return AuditDataset(
        images=images,
        labels=labels,
        split=split,
        example_ids=np.array([f[0] for f in files]).astype(str),
        index=np.arange(n, dtype=np.int64),
        class_names=tuple(class_names),
        name=root.resolve().name,
        spec=spec,
        paths=np.array([os.path.join(base, f[0]) for f in files]).astype(str),
        extra=info,
    )
