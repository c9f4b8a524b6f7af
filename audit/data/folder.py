"""``folder:PATH``: one sub-folder per class, as torchvision's ``ImageFolder`` reads it.

Layout: ``PATH/<class>/**/<image>``; classes are the sorted sub-folder names (label = position, as in
``ImageFolder``). When ``PATH`` holds exactly the sub-folders ``train`` and ``test`` (or ``train`` and
``val``, read as the test split), each is such a class folder tree and gives the split; otherwise a
deterministic stratified split is made. Files are found recursively (symlinks followed); hidden files and
folders are ignored, and files whose suffix no Pillow plugin opens are skipped and reported in
``extra["skipped_files"]``. ``index`` is the position in the sorted list of relative paths,
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
from audit.data.sources import LoadOptions, register
from audit.errors import AuditInputError

SPLIT_FOLDERS = ({"train", "test"}, {"train", "val"})


def _visible_dirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _walk_images(root: str, class_dir: str, exts: frozenset[str]) -> tuple[list[str], list[str]]:
    """Paths relative to ``root`` (posix) of the image files under ``class_dir`` (recursively) and of the
    files skipped for their suffix. Strings, not ``Path`` objects: folders can hold millions of files."""
    images, skipped = [], []
    cut = len(root) + 1
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = dirpath[cut:].replace(os.sep, "/")
        for f in filenames:
            if f.startswith("."):
                continue
            (images if os.path.splitext(f)[1].lower() in exts else skipped).append(f"{rel_dir}/{f}")
    return images, skipped


@register("folder")
def load_folder(arg: str, *, spec: str, opts: LoadOptions) -> AuditDataset:
    """Load an image folder tree (see the module docstring for the layout and the rules)."""
    root = Path(arg)
    if not root.exists():
        raise AuditInputError(f"{spec}: no such folder {root}")
    if not root.is_dir():
        raise AuditInputError(f"{spec}: {root} is not a folder (folder: wants one sub-folder per class)")
    top = _visible_dirs(root)
    split_dirs = [d for d in top if set(top) in SPLIT_FOLDERS]
    trees = [(root / d, TRAIN if d == TRAIN else TEST) for d in split_dirs] or [(root, None)]
    class_names = sorted({c for tree, _ in trees for c in _visible_dirs(tree)})
    loose = [(tree / e.name).relative_to(root).as_posix() for tree, _ in trees for e in os.scandir(tree)
             if e.is_file() and not e.name.startswith(".")]
    if not class_names:
        raise AuditInputError(f"{spec}: {root} has no class sub-folders (expected {root}/<class>/<image files>)")
    problems = Problems(spec)
    exts = readable_extensions()
    base = os.path.abspath(root)
    files: list[tuple[str, int, str | None]] = []  # (relative path, label, split)
    skipped: list[str] = []
    per_class = np.zeros(len(class_names), np.int64)
    for tree, split in trees:
        for label, name in enumerate(class_names):
            if not (tree / name).is_dir():
                continue
            images, skip = _walk_images(base, os.path.join(base, os.path.relpath(tree / name, root)), exts)
            per_class[label] += len(images)
            files += [(rel, label, split) for rel in images]
            skipped += skip
    for label in np.flatnonzero(per_class == 0):
        where = " or ".join(f"{t.relative_to(root).as_posix() + '/' if t != root else ''}{class_names[label]}/"
                            for t, _ in trees)
        problems.add(f"class {class_names[label]!r}: no image files in {where}")
    files.sort(key=lambda f: f[0])
    refs = [ImageRef(name=rel, path=os.path.join(base, rel)) for rel, _, _ in files]
    images, info = decode_images(refs, problems, slug=f"folder-{root.resolve().name}",
                                 memory_budget_mb=opts.memory_budget_mb, cache_dir=opts.cache_dir,
                                 workers=opts.decode_workers)
    if len(class_names) < 2:
        check_classes(np.zeros(0, np.int64), class_names, problems)
    problems.raise_if_any()
    assert images is not None
    labels = np.array([f[1] for f in files], dtype=np.int64)
    if split_dirs:
        split = np.array([f[2] for f in files]).astype(str)
    else:
        split = stratified_split(labels)
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
