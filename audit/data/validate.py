"""What ``audit validate`` reports about a loaded dataset, without training anything.

:func:`summarize` returns a JSON-ready dict; :func:`format_summary` renders it for a terminal. Loading
itself already refuses bad input (exit 2); the summary adds what is legal but worth knowing: counts per
class and split, exact duplicate images (by content hash, within and across splits, and those whose
copies disagree on the label), and classes too small to audit.
"""

from __future__ import annotations

import hashlib

import numpy as np

from audit.data.base import TEST, TRAIN, AuditDataset

DEFAULT_MIN_TRAIN_PER_CLASS = 8  # 2 × the default 4 cross-validation folds: a stratified fold needs ≥ 1 per class


def content_hashes(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(N,) 16-byte BLAKE2b digests of each image's bytes (dtype ``S16``); reads a memmap chunk by chunk."""
    n = len(images)
    out = np.empty(n, dtype="S16")
    for start in range(0, n, chunk):
        block = np.ascontiguousarray(images[start:start + chunk]).reshape(min(chunk, n - start), -1)
        for j, row in enumerate(block):
            out[start + j] = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
    return out


def duplicate_groups(ds: AuditDataset) -> list[np.ndarray]:
    """Row indices of every group of ≥ 2 byte-identical images, largest groups first, then by first row."""
    digests = content_hashes(ds.images)
    _, inverse, counts = np.unique(digests, return_inverse=True, return_counts=True)
    dup = np.flatnonzero(counts > 1)
    if not len(dup):
        return []
    order = np.argsort(inverse, kind="stable")
    bounds = np.r_[0, np.cumsum(counts)]
    groups = [order[bounds[g]:bounds[g + 1]] for g in dup]
    groups.sort(key=lambda g: (-len(g), g[0]))
    return groups


def summarize(ds: AuditDataset, *, min_train_per_class: int = DEFAULT_MIN_TRAIN_PER_CLASS,
              max_listed: int = 10) -> dict:
    """Counts, shapes, duplicates and small classes of ``ds`` as a JSON-ready dict.

    ``too_small`` lists classes with fewer than ``min_train_per_class`` training examples or no test
    example; ``duplicates.examples`` lists up to ``max_listed`` groups as example ids.
    """
    k = ds.num_classes
    tr, te = ds.split == TRAIN, ds.split == TEST
    n_train = np.bincount(ds.labels[tr], minlength=k)
    n_test = np.bincount(ds.labels[te], minlength=k)
    classes = [{"label": c, "name": ds.class_names[c], "train": int(n_train[c]), "test": int(n_test[c])}
               for c in range(k)]
    groups = duplicate_groups(ds)
    kinds = {"within_train": 0, "within_test": 0, "across_splits": 0}
    conflicting, listed = 0, []
    for g in groups:
        splits = set(ds.split[g].tolist())
        kinds["across_splits" if len(splits) == 2 else f"within_{splits.pop()}"] += 1
        labels = sorted(set(ds.labels[g].tolist()))
        conflicting += len(labels) > 1
        if len(listed) < max_listed:
            listed.append({"ids": ds.example_ids[g].tolist(), "splits": ds.split[g].tolist(),
                           "labels": [ds.class_names[y] for y in ds.labels[g]]})
    too_small = [dict(c, reason=("no test example" if c["train"] >= min_train_per_class else
                                 f"fewer than {min_train_per_class} training examples"))
                 for c in classes if c["train"] < min_train_per_class or c["test"] == 0]
    c_, h, w = ds.shape
    extra = ds.extra or {}
    return {
        "spec": ds.spec,
        "name": ds.name,
        "num_examples": int(len(ds.labels)),
        "num_classes": k,
        "image_shape": [int(c_), int(h), int(w)],
        "dtype": str(ds.images.dtype),
        "storage": "memmap" if isinstance(ds.images, np.memmap) else "memory",
        "cache_file": extra.get("cache_file"),
        "fingerprint": ds.fingerprint(),
        "splits": {TRAIN: int(tr.sum()), TEST: int(te.sum())},
        "classes": classes,
        "duplicates": {"groups": len(groups), "images": int(sum(len(g) for g in groups)), **kinds,
                       "conflicting_labels": int(conflicting), "examples": listed},
        "min_train_per_class": min_train_per_class,
        "too_small": too_small,
        "normalisation": {key: extra[key] for key in ("source_modes", "source_sizes", "converted", "resized", "mode")
                          if key in extra},
        "skipped_files": list(extra.get("skipped_files", [])),
    }


def format_summary(s: dict) -> str:
    """Render :func:`summarize`'s dict as plain text for a terminal."""
    c, h, w = s["image_shape"]
    lines = [f"{s['spec']}: {s['num_examples']:,} images, {s['num_classes']} classes, "
             f"{c}×{h}×{w} {s['dtype']} ({'grey' if c == 1 else 'RGB'})",
             f"  splits: {s['splits']['train']:,} train, {s['splits']['test']:,} test; fingerprint {s['fingerprint']}"]
    if s["storage"] == "memmap":
        lines.append(f"  streamed from disk: {s['cache_file']}")
    norm = s["normalisation"]
    if norm:
        modes = ", ".join(f"{m} {n}" for m, n in norm.get("source_modes", {}).items())
        sizes = ", ".join(f"{sz} {n}" for sz, n in norm.get("source_sizes", {}).items())
        lines.append(f"  source files: modes {modes}; sizes {sizes}")
        lines.append(f"  normalised to {norm.get('mode', '?')} {h}×{w}: {norm.get('converted', 0)} converted, "
                     f"{norm.get('resized', 0)} resized")
    if s["skipped_files"]:
        sk = s["skipped_files"]
        lines.append(f"  skipped {len(sk)} file{'s' if len(sk) != 1 else ''} outside class folders or not images: "
                     f"{', '.join(sk[:5])}{', ...' if len(sk) > 5 else ''}")
    width = max([len(str(cl["name"])) for cl in s["classes"]] + [5])
    lines.append("")
    lines.append(f"  {'label':>5}  {'class':<{width}}  {'train':>7}  {'test':>7}")
    for cl in s["classes"]:
        lines.append(f"  {cl['label']:>5}  {cl['name']:<{width}}  {cl['train']:>7,}  {cl['test']:>7,}")
    lines.append("")
    d = s["duplicates"]
    if d["groups"]:
        lines.append(f"  exact duplicates: {d['groups']} group{'s' if d['groups'] != 1 else ''} ({d['images']} images): {d['within_train']} within "
                     f"train, {d['within_test']} within test, {d['across_splits']} across splits; "
                     f"{d['conflicting_labels']} with conflicting labels")
        for g in d["examples"]:
            members = ", ".join(f"{i} [{sp}, {lab}]" for i, sp, lab in zip(g["ids"], g["splits"], g["labels"]))
            lines.append(f"    {members}")
        if d["groups"] > len(d["examples"]):
            lines.append(f"    ... and {d['groups'] - len(d['examples'])} more groups")
    else:
        lines.append("  exact duplicates: none")
    if s["too_small"]:
        lines.append(f"  too small to audit ({len(s['too_small'])} classes):")
        for cl in s["too_small"]:
            lines.append(f"    {cl['name']!r}: {cl['train']} train, {cl['test']} test ({cl['reason']})")
    else:
        lines.append(f"  every class has ≥ {s['min_train_per_class']} training examples and a test example")
    return "\n".join(lines)
